"""Leaderboard rendering (SPEC §8) from a small synthetic store built in the schema of benchmark/schema.py."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.errors import BenchmarkError
from benchmark.report import (
    BoardKey,
    build_boards,
    format_stat,
    markdown_escape,
    pareto_front,
    render_leaderboards,
    training_curves,
)
from benchmark.robustness_scores import ARS_KEYS, ars, ars_mean, ers, ers_robrank, whm
from benchmark.schema import ALL_COLUMNS, COLUMN_TYPES, TELEMETRY_COLUMNS
from benchmark.strong_eval import DEFAULT_STRONG


def described(attack: str, metric: str) -> dict:
    """The metric description an attack row stores (the built-in attack's declared spec)."""
    from benchmark.plugins import load_builtins as import_builtins
    from benchmark.registry import ATTACKS

    import_builtins()
    spec = ATTACKS.create(attack).spec(metric)
    return {"metric_label": spec.label, "direction": spec.direction, "decimals": spec.decimals,
            "meaning": spec.meaning}

# Built-in attacks and the metric keys each reports.
ATTACK_METRICS = {"ca+": ["CA+"], "ca-": ["CA-"], "qa+": ["QA+"], "qa-": ["QA-"], "tma": ["TMA", "TMA-centred"],
                  "es": ["ES:D", "ES:R", "ES:D-rel"], "ltm": ["LTM"], "gtm": ["GTM"], "gtt": ["GTT"]}
ATTACK_SECONDS = 1.5  # per built-in attack: 9 * 1.5 = 13.5 s a cell, plus 0.5 s for the plugin attack
XSS = "<script>alert(1)</script>"


@dataclass
class EntrySpec:
    """One synthetic entry: its robustness level per seed (= its ERS) and benign R@1 per seed."""

    defense: str
    robustness: list[float]  # ERS of each seed
    r1: list[float]  # benign test R@1 (fraction) of each seed
    params: dict = field(default_factory=dict)
    entry: str | None = None
    is_plugin: bool = False
    plugin_hash: str = ""
    collapsed: list[bool] | None = None
    train_seconds: list[float] | None = None
    collapseness: list[float] | None = None  # constant telemetry value per seed
    drop_gtt_for_seed: int | None = None  # leave GTT (and ERS/ARS) out of one seed's rows
    strong: list[float] | None = None  # Strong ERS of each seed: the cells carry a strong evaluation


def attack_values(robustness: float) -> dict[str, float]:
    """Raw attack values whose ERS terms all equal ``robustness``, so ERS == robustness exactly."""
    r = robustness
    return {"CA+": r / 2, "CA-": 100 - r, "QA+": r / 2, "QA-": 100 - r, "TMA": 1 - r / 100,
            "ES:D": 2 - r / 50, "ES:R": r, "LTM": r, "GTM": r, "GTT": r,
            "TMA-centred": 1 - r / 100, "ES:D-rel": 2 - r / 50}


CLEAN_VALUES = {"CA+": 50.0, "CA-": 1.0, "QA+": 50.0, "QA-": 1.0, "TMA": 0.2, "ES:D": 0.0,
                "ES:R": 90.0, "LTM": 90.0, "GTM": 90.0, "GTT": 100.0, "TMA-centred": 0.0, "ES:D-rel": 0.0}


def synthetic_store(specs: list[EntrySpec], *, dataset: str = "digits", preset: str = "smoke",
                    profile: str = "rob28", plugin_attack: bool = False,
                    start: datetime = datetime(2025, 1, 2, 3, 4, tzinfo=timezone.utc),
                    steps: int = 40) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows in the tidy long schema (and per-step telemetry) for ``specs`` × their seeds."""
    rows, telemetry = [], []
    for spec_index, spec in enumerate(specs):
        for seed, (robustness, r1) in enumerate(zip(spec.robustness, spec.r1)):
            cell_id = f"{dataset}-{spec.defense}-{spec_index}-{seed}"
            entry = spec.entry or spec.defense
            base = {
                "dataset": dataset, "model": "c2f2", "defense": spec.defense,
                "defense_params": json.dumps(spec.params, sort_keys=True), "seed": seed, "preset": preset,
                "preset_version": 1, "faithful": preset != "smoke", "profile": profile, "profile_version": 1, "cell_id": cell_id, "entry": entry,
                "is_plugin": spec.is_plugin, "plugin_source": "my_defense.py" if spec.is_plugin else "",
                "plugin_hash": spec.plugin_hash, "attack_plugin": False,
                "epsilon": 77 / 255, "alpha": 3 / 255, "attack_steps": 32, "train_pgd_steps": 2,
                "epochs": 2, "batch_pairs": 32, "attack_queries": 64, "attention_lambda": 10.0,
                "collapsed": bool(spec.collapsed[seed]) if spec.collapsed else False,
                "train_seconds": spec.train_seconds[seed] if spec.train_seconds else 10.0 * (spec_index + 1),
                "seconds_per_epoch": 5.0, "attack_seconds": 0.0, "queries_per_second": 0.0, "eval_seconds": 20.0,
                "package_version": "0.1.0", "git_commit": "abc123def456", "torch_version": "2.5.0",
                "faiss_version": "1.8.0", "device_name": "cpu (2 threads)", "config_hash": cell_id,
                "created_at": start + timedelta(hours=spec_index, minutes=seed),
                "metric_label": "", "direction": "", "decimals": 4, "meaning": "", "attack_params": "",
                "attack_plugin_hash": "", "strong_eval": DEFAULT_STRONG.id if spec.strong else "",
            }

            def add(attack, metric, value, variant="", base=base, **extra):
                rows.append({**base, "attack": attack, "metric": metric, "variant": variant,
                             "value": float(value), **extra})

            benign = {"R@1": r1, "R@2": r1 + 0.1, "mAP": r1 / 2, "mAP@R": r1 / 3, "mAP@10": r1 / 2.5,
                      "NMI": 0.6, "train:R@1": min(1.0, r1 + 0.2)}
            for metric, value in benign.items():
                add("benign", metric, value)
            after = attack_values(robustness)
            dropped = spec.drop_gtt_for_seed == seed
            for attack, metrics in ATTACK_METRICS.items():
                for metric in metrics:
                    if dropped and metric == "GTT":
                        continue
                    timing = {"attack_seconds": ATTACK_SECONDS, "queries_per_second": 64 / ATTACK_SECONDS}
                    add(attack, metric, after[metric], "adversarial", **timing, **described(attack, metric))
                    add(attack, metric, CLEAN_VALUES[metric], "clean", **timing, **described(attack, metric))
                    if spec.strong:
                        add(attack, metric, attack_values(spec.strong[seed])[metric], "strong", **timing,
                            **described(attack, metric))
            if plugin_attack:
                # A plugin attack: shown as its own column, never part of ERS/ARS.
                mine = {"metric_label": "MY", "decimals": 2, "meaning": "my plugin attack's value",
                        "attack_plugin_hash": "beef" * 16}
                add("my-attack", "MY", 7.0 + seed, "adversarial", attack_plugin=True, attack_seconds=0.5, **mine)
                add("my-attack", "MY", 1.0, "clean", attack_plugin=True, attack_seconds=0.5, **mine)
            if not dropped:
                add("score", "ERS", ers(after))
                add("score", "ERS:RobRank", ers_robrank(after))
                before = {k: CLEAN_VALUES[k] for k in ARS_KEYS}
                for key, value in ars(before, after).items():
                    add("score", f"ARS:{key}", value)
                add("score", "ARS", ars_mean(before, after))
                if spec.strong:
                    strong = attack_values(spec.strong[seed])
                    add("score", "ERS:strong", ers(strong), meaning=STRONG_MEANING)
                    add("score", "ERS:RobRank:strong", ers_robrank(strong))
            add("score", "WHM", whm(benign["train:R@1"], r1))
            level = spec.collapseness[seed] if spec.collapseness else 0.0
            for step in range(steps):
                telemetry.append({"cell_id": cell_id, "dataset": dataset, "defense": spec.defense, "entry": entry,
                                  "seed": seed, "preset": preset, "step": step, "epoch": step * 2 // steps,
                                  "loss": 0.2, "collapseness": level, "hardness": -0.1,
                                  "separability": 0.0 if spec.collapsed and spec.collapsed[seed]
                                  else 0.5 + 0.01 * step, "mean_distance": 1.0,
                                  "embedding_shift": 0.05})
    frame = pd.DataFrame(rows, columns=ALL_COLUMNS)
    frame = frame.astype({k: v for k, v in COLUMN_TYPES.items() if k != "created_at"})
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    return frame, pd.DataFrame(telemetry, columns=TELEMETRY_COLUMNS)


STRONG_MEANING = DEFAULT_STRONG.describe().split("; ")[0]
# Per-query noise of each attack value (zero mean over a cell's queries, so the means stay exact).
QUERY_NOISE = {"CA+": 8.0, "CA-": 8.0, "QA+": 8.0, "QA-": 8.0, "TMA": 0.08, "TMA-centred": 0.08, "ES:D": 0.15,
               "ES:D-rel": 0.15, "ES:R": 8.0, "LTM": 8.0, "GTM": 8.0, "GTT": 8.0}


def synthetic_queries(results: pd.DataFrame, queries: int = 40, scale: float = 1.0) -> pd.DataFrame:
    """Per-query values (schema.QUERY_COLUMNS) of every cell of ``results`` with a strong evaluation:
    the stored mean of each attack value plus zero-mean noise that depends only on the seed (so two
    entries with the same values per seed get identical queries)."""
    from benchmark.schema import QUERY_COLUMNS

    frames = []
    values = results[~results["attack"].isin(["benign", "score", "training", "audit"])]
    for cell_id, cell in values.groupby("cell_id", sort=True):
        if not (cell["variant"] == "strong").any():
            continue
        seed = int(cell["seed"].iloc[0])
        rng = np.random.default_rng(1000 + seed)
        index = np.arange(queries) * 3 + seed
        for (attack, metric), part in cell.groupby(["attack", "metric"], sort=True):
            by_variant = part.set_index("variant")["value"]
            noise = rng.normal(0.0, QUERY_NOISE[metric] * scale, queries)
            noise -= noise.mean()
            frames.append(pd.DataFrame({
                "cell_id": cell_id, "dataset": cell["dataset"].iloc[0], "entry": cell["entry"].iloc[0], "seed": seed,
                "attack": attack, "metric": metric, "direction": part["direction"].iloc[0], "query": index,
                "clean": by_variant["clean"], "standard": by_variant["adversarial"] + noise,
                "strong": by_variant["strong"] + noise}))
    return pd.concat(frames, ignore_index=True)[QUERY_COLUMNS]


def standard_specs() -> list[EntrySpec]:
    """Four entries, two seeds each; ERS order: act > plugin > XSS entry > nt."""
    return [
        EntrySpec("nt", [10.0, 14.0], [0.80, 0.82], train_seconds=[10.0, 12.0], collapseness=[0.1, 0.3]),
        EntrySpec("act", [40.0, 42.0], [0.50, 0.52], collapsed=[False, True], drop_gtt_for_seed=None,
                  train_seconds=[100.0, 110.0], collapseness=[-0.2, -0.4]),
        EntrySpec("my-defense", [30.0, 32.0], [0.60, 0.64], params={"beta": 0.7}, entry="my-defense(beta=0.7)",
                  is_plugin=True, plugin_hash="f00dfeedcafe0123456789"),
        EntrySpec("evil", [20.0, 22.0], [0.70, 0.70], params={"note": XSS + "|x"}, entry=f"evil({XSS}|x)"),
    ]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:
    """The standard store plus a one-seed second dataset, rendered once for the whole module."""
    results, telemetry = synthetic_store(standard_specs(), plugin_attack=True)
    second, second_telemetry = synthetic_store(
        [EntrySpec("nt", [5.0], [0.9]), EntrySpec("hm", [50.0], [0.4], drop_gtt_for_seed=None)],
        dataset="mnist", preset="quick")
    out = tmp_path_factory.mktemp("leaderboards")
    files = render_leaderboards(pd.concat([results, second], ignore_index=True),
                                pd.concat([telemetry, second_telemetry], ignore_index=True), out,
                                split_descriptions={"digits": "stratified 70/30 split of sklearn digits"})
    slug = BoardKey("digits", "smoke", "rob28", 1).slug
    return {"out": out, "files": files, "slug": slug, "results": results, "telemetry": telemetry,
            "html": (out / f"{slug}.html").read_text(encoding="utf-8"),
            "md": (out / f"{slug}.md").read_text(encoding="utf-8")}


def html_table_entries(html: str) -> list[str]:
    return re.findall(r'<td class="entry"[^>]*>(.*?)</td>', html)


def md_table_rows(md: str) -> list[list[str]]:
    """Cells of the leaderboard table's body rows, splitting on unescaped pipes only."""
    section = md.split("## Leaderboard", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]


def test_render_writes_one_page_pair_per_board_plus_index(rendered):
    out, files = rendered["out"], rendered["files"]
    names = {f.name for f in files}
    slugs = [rendered["slug"], BoardKey("mnist", "quick", "rob28", 1).slug]
    for slug in slugs:
        assert {f"{slug}.html", f"{slug}.md", f"{slug}-ers-r1.png", f"{slug}-attacks.png"} <= names
    assert [f.name for f in files[-2:]] == ["index.html", "index.md"]
    assert all(f.is_file() and f.parent == out for f in files)
    index_html, index_md = (out / "index.html").read_text(), (out / "index.md").read_text()
    for slug in slugs:
        assert f'href="{slug}.html"' in index_html
        assert f"({slug}.md)" in index_md
    # The top entry by ERS is named on the index.
    assert "act" in index_md.split(slugs[0])[0].splitlines()[-1]


def test_rows_are_entries_sorted_by_ers_with_mean_std_and_n(rendered):
    html, md = rendered["html"], rendered["md"]
    expected = ["act", "my-defense(beta=0.7)", "evil(&lt;script&gt;alert(1)&lt;/script&gt;|x)", "nt"]
    assert html_table_entries(html) == expected
    rows = md_table_rows(md)
    header, body = rows[0], rows[1:]
    assert [row[1] for row in body] == ["act", "my-defense(beta=0.7)",
                                        r"evil(&lt;script>alert(1)&lt;/script>\|x)", "nt"]
    assert all(len(row) == len(header) for row in body)
    act = dict(zip(header, body[0]))
    # ERS 40, 42 -> mean 41.0, sample std 1.414; R@1 0.50, 0.52 -> 51.0 ± 1.4 percent.
    assert act["Seeds"] == "n=2"
    assert act["ERS"] == "41.0 ± 1.4"
    assert act["R@1"] == "51.0 ± 1.4"
    assert act["CA+ ↑"] == "20.5 ± 0.7"  # raw attack value, not the ERS term
    assert act["TMA ↓"] == "0.590 ± 0.014"
    assert act["Train s"] == "105 ± 7"  # >= 100 s prints without decimals
    assert act["Attack s"] == "14.0 ± 0.0"  # 9 built-in attacks × 1.5 s + the plugin attack's 0.5 s
    assert act["PGD steps"] == "2"  # a setting: no "± 0"
    assert act["Entangled"] == "1/2"  # seed 1's separability sank to 0 (the synthetic telemetry)
    assert act["Shrunk"] == "0/2" and act["Spread % NT"] == "100.00 ± 0.00"
    nt = dict(zip(header, body[3]))
    assert nt["ERS"] == "12.0 ± 2.8" and nt["Kind"] == "built-in"
    assert "41.0 ± 1.4" in html and "n=2" in html and "12.0 ± 2.8" in html


def test_plugin_defense_and_plugin_attack_columns(rendered):
    header, *body = md_table_rows(rendered["md"])
    plugin = dict(zip(header, body[1]))
    assert plugin["Kind"] == "plugin f00dfeed"
    # The plugin attack is an extra column right after the ten built-in ones; ERS leads the row.
    assert header.index("ERS") < header.index("MY") == header.index("GTT ↑") + 1
    assert plugin["MY"] == "7.50 ± 0.71"
    assert plugin["ERS"] == "31.0 ± 1.4"  # the plugin attack did not change ERS
    # The index names the plugin entries of each board (none on the mnist board).
    index_md = (rendered["out"] / "index.md").read_text(encoding="utf-8")
    index_header, _, *index_rows = [[cell.strip() for cell in line.split("|")[1:-1]]
                                    for line in index_md.splitlines() if line.startswith("|")]
    by_dataset = {row[0]: dict(zip(index_header, row)) for row in index_rows}
    assert by_dataset["digits"]["Plugin entries"] == plugin["Entry"]
    assert by_dataset["mnist"]["Plugin entries"] == ""
    assert plugin["Entry"] in (rendered["out"] / "index.html").read_text(encoding="utf-8")


def test_partial_seed_counts_are_marked(tmp_path):
    specs = [EntrySpec("nt", [10.0, 20.0], [0.5, 0.6], drop_gtt_for_seed=1)]
    results, _ = synthetic_store(specs)
    boards = build_boards(results, None, plots=False)
    cells = {c.label: cell.text for c, cell in zip(boards[0].columns, boards[0].rows[0].cells)}
    assert cells["GTT ↑"] == "10.0 (n=1)"
    assert cells["ERS"] == "10.0 (n=1)"
    assert cells["LTM ↑"] == "15.0 ± 7.1"


def test_script_in_names_is_text_not_markup(rendered):
    html, md = rendered["html"], rendered["md"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)" not in html
    # The only script element is our own inline one.
    assert html.count("<script>") == 1
    assert "<script" not in md and "&lt;script>" in md
    # The parameter (tooltip) is escaped inside the attribute too.
    assert "&#34;note&#34;: &#34;&lt;script&gt;" in html or "&quot;note&quot;: &quot;&lt;script&gt;" in html
    index = (rendered["out"] / "index.html").read_text()
    assert "<script>alert" not in index


def test_markdown_escape():
    assert markdown_escape("a|b") == r"a\|b"
    assert markdown_escape("<b>&") == "&lt;b>&"
    # ">" reads as itself (issue 25: boards printed "&gt;" literally); an entity is shown, not decoded.
    assert markdown_escape("COLO-TRIDE > HM") == "COLO-TRIDE > HM"
    assert markdown_escape("&gt; &#62; a&b") == r"&amp;gt; &amp;\#62; a&b"
    assert markdown_escape("> quote") == r"\> quote"
    assert markdown_escape("x_y*z`[q]\nnext") == r"x\_y\*z\`\[q\] next"


def test_protocol_and_provenance_on_every_page(rendered):
    for text in (rendered["html"], rendered["md"]):
        for fact in ("rob28 (version 1)", "77/255 = 0.3020", "3/255 = 0.0118", "32", "smoke",
                     "32 pairs (SPC-2, 64 images)", "stratified 70/30 split of sklearn digits",
                     "abc123def456", "2.5.0", "1.8.0", "cpu (2 threads)",
                     "2025-01-02 03:04 UTC – 2025-01-02 06:05 UTC"):
            assert fact in text, fact
        assert re.search(r"Seeds</dt><dd>0, 1</dd>|\| Seeds \| 0, 1 \|", text)
    mnist = (rendered["out"] / f"{BoardKey('mnist', 'quick', 'rob28', 1).slug}.md").read_text()
    assert "| Seeds | 0 |" in mnist
    assert "MNIST" in mnist  # no mapping given: the dataset registry's description is the split text
    # One seed: a plain mean, no ± part.
    body = md_table_rows(mnist)[1:]
    assert [row[1] for row in body] == ["hm", "nt"]
    assert body[0][2] == "n=1" and "±" not in " ".join(body[0])


def test_plots_are_embedded_and_saved_beside_markdown(rendered):
    out, slug, html, md = rendered["out"], rendered["slug"], rendered["html"], rendered["md"]
    assert html.count('src="data:image/png;base64,') == 4
    for name in ("ers-r1", "ers-cost", "attacks", "curves"):
        png = out / f"{slug}-{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({slug}-{name}.png)" in md
        assert png.stat().st_size < 200_000  # small figures keep pages light
    assert "Pareto front" in md and "ERS term" in md


def test_render_is_deterministic(rendered, tmp_path):
    results, telemetry = rendered["results"], rendered["telemetry"]
    files = render_leaderboards(results, telemetry, tmp_path,
                                split_descriptions={"digits": "stratified 70/30 split of sklearn digits"})
    html = next(f for f in files if f.name == f"{rendered['slug']}.html").read_text(encoding="utf-8")
    assert html == rendered["html"]


def test_pareto_front():
    points = [(1.0, 5.0), (2.0, 4.0), (1.5, 3.0), (3.0, 1.0), (3.0, 0.5)]
    assert pareto_front(points) == [0, 1, 3]


def test_format_stat():
    assert format_stat(41.0, 1.41421, 2, 1) == "41.0 ± 1.4"
    assert format_stat(41.0, float("nan"), 1, 1) == "41.0"
    assert format_stat(41.0, 0.0, 1, 2, n_entry=3) == "41.00 (n=1)"
    assert format_stat(float("nan"), 0.0, 0, 1) == "—"


def test_training_curves_average_seeds(rendered):
    boards = build_boards(rendered["results"], None, plots=False)
    assert boards[0].figures == []
    from benchmark.report import cell_table, leaderboard_columns, summarise

    table, plugin_columns = cell_table(rendered["results"])
    summaries = summarise(table, leaderboard_columns(plugin_columns))
    curves = training_curves(rendered["telemetry"], summaries)
    x, mean, std = curves["nt"]["collapseness"]
    assert np.allclose(mean, 0.2) and np.allclose(std, 0.1)
    assert x[0] == 0.0 and x[-1] == 2.0  # two epochs
    _, separability, _ = curves["act"]["separability"]
    assert separability[-1] > separability[0]


def test_bad_inputs_raise_benchmark_error(tmp_path):
    results, _ = synthetic_store([EntrySpec("nt", [10.0], [0.5])])
    with pytest.raises(BenchmarkError, match="empty"):
        render_leaderboards(results.iloc[0:0], None, tmp_path)
    with pytest.raises(BenchmarkError, match="missing the columns entry"):
        render_leaderboards(results.drop(columns=["entry"]), None, tmp_path)
    # No telemetry: the page still renders and says so.
    files = render_leaderboards(results, None, tmp_path / "no-telemetry")
    md = next(f for f in files if f.suffix == ".md" and f.name != "index.md").read_text()
    assert "No telemetry was found" in md


def test_render_from_store_reads_the_store(tmp_path, monkeypatch):
    import sys
    import types

    results, telemetry = synthetic_store([EntrySpec("nt", [10.0], [0.5])])
    fake = types.ModuleType("benchmark.store")
    fake.load_results = lambda results_dir, dataset=None: results
    fake.load_telemetry = lambda results_dir, dataset=None, cell_ids=None: telemetry
    fake.load_queries = lambda results_dir, dataset=None, cell_ids=None: pd.DataFrame()
    monkeypatch.setitem(sys.modules, "benchmark.store", fake)
    from benchmark.report import render_from_store

    files = render_from_store(tmp_path / "results", tmp_path / "reports")
    assert (tmp_path / "reports" / "index.html") in files
    assert any(Path(f).name.endswith("-curves.png") for f in files)
    fake.load_results = lambda results_dir, dataset=None: results.iloc[0:0]
    with pytest.raises(BenchmarkError, match="no results in .* for dataset 'cub'"):
        render_from_store(tmp_path / "results", tmp_path / "reports", dataset="cub")


def test_protocol_gives_natural_trainings_benign_r1():
    from benchmark.report.protocol import _natural_training_r1

    def row(defense, seed, value, metric="R@1"):
        return {"defense": defense, "attack": "benign", "metric": metric, "value": value, "seed": seed}

    rows = pd.DataFrame([row("nt", 0, 0.50), row("nt", 1, 0.60), row("act", 0, 0.9), row("nt", 0, 0.7, "R@2")])
    assert _natural_training_r1(rows).startswith("55.0 % ± 7.1 (nt, 2 seeds")
    assert _natural_training_r1(rows[rows["defense"] == "act"]) == ""


def test_a_newer_evaluation_of_an_entry_and_seed_supersedes_the_older_one():
    """After a version bump the store holds both evaluations of one model; the board counts it once."""
    old, _ = synthetic_store([EntrySpec("nt", [10.0, 20.0], [0.5, 0.6])])
    new, _ = synthetic_store([EntrySpec("nt", [30.0], [0.7])], start=datetime(2026, 1, 1, tzinfo=timezone.utc))
    new["cell_id"] = new["cell_id"] + "-v2"  # a new cell id for seed 0, created later
    board = build_boards(pd.concat([old, new], ignore_index=True), None, plots=False)[0]
    (row,) = board.rows
    cells = {c.label: cell.text for c, cell in zip(board.columns, row.cells)}
    assert row.seeds == 2 and cells["ERS"] == "25.0 ± 7.1"  # seed 0 from the newer cell (30), seed 1 (20)
    provenance = dict(board.provenance)
    assert provenance["Cells"] == "2" and provenance["Superseded cells"].startswith("1 older evaluation")
