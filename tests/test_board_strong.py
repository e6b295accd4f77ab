"""Boards ranked by Strong ERS (issue 23): the headline columns, the fallback order, the "RobRank protocol
unreliable" label, rank intervals from a bootstrap over seeds and queries, the convergence section and the
replication verdicts. Synthetic rows, per-query values and study rows built here (fast)."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attacks.audit import AuditSpec
from benchmark.report import build_boards, render_leaderboards
from benchmark.report.convergence import ensemble_name, settled_budget
from benchmark.report.intervals import ers_of_means, rank_intervals
from benchmark.report.ranking import (
    DROP_KEY,
    RANKING_KEY,
    UNRELIABLE_CSS,
    UNRELIABLE_LABEL,
    UNRELIABLE_TOLERANCE,
    score_label,
)
from benchmark.robustness_scores import ERS_KEYS, RANKED_SCORE, ROBRANK_SCORE, STRONG_SCORE, ers
from benchmark.strong_eval import DEFAULT_STRONG, candidate_table, choose_ensemble
from benchmark.study import COLUMNS as STUDY_COLUMNS


def _load_test_report():
    # The synthetic-store builder lives in test_report.py; load it by path so this works in any import mode.
    spec = importlib.util.spec_from_file_location("_rrb_test_report_strong", Path(__file__).with_name("test_report.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


tr = _load_test_report()
EntrySpec = tr.EntrySpec


def labels(board) -> list[str]:
    return [c.label for c in board.columns]


def cells(board, entry: str) -> dict[str, str]:
    row = next(r for r in board.rows if r.entry == entry)
    return {c.label: cell.full_text for c, cell in zip(board.columns, row.cells)}


def strong_specs() -> list[EntrySpec]:
    """Standard ERS order a > b > c; Strong ERS order c > b > a (a's 32-step ERS is far from converged)."""
    return [
        EntrySpec("act", [50.0, 52.0], [0.6, 0.6], strong=[20.0, 22.0]),
        EntrySpec("hm", [40.0, 40.0], [0.7, 0.7], strong=[30.0, 30.0]),
        EntrySpec("nt", [35.0, 35.6], [0.9, 0.9], strong=[34.0, 34.2]),
    ]


# --------------------------------------------------------------------------------------------------
# The ranking key and the headline


def test_the_ranking_key_is_strong_ers():
    assert RANKING_KEY == STRONG_SCORE == "ERS:strong"
    assert UNRELIABLE_TOLERANCE == AuditSpec().tolerance


def test_board_sorts_by_strong_ers_with_the_headline_first(tmp_path):
    results, _ = tr.synthetic_store(strong_specs(), preset="quick")
    (board,) = build_boards(results, None, plots=False)
    assert board.ranked_by == STRONG_SCORE
    assert [r.entry for r in board.rows] == ["nt", "hm", "act"]
    assert labels(board)[:7] == ["Strong ERS", "ERS (RobRank protocol)", "Drop", "ERS", "ARS", "R@1", "R@1 f32 index"]
    act = cells(board, "act")
    assert act["Strong ERS"] == "21.0 ± 1.4"
    assert act["ERS"] == "51.0 ± 1.4"
    assert act["Drop"] == f"30.0 ± 0.0 ({UNRELIABLE_LABEL})"  # ERS − Strong ERS per seed: 30, 30
    assert cells(board, "nt")["Drop"] == "1.2 ± 0.3"
    assert "Sorted by Strong ERS" in board.ranking_note and "fall back" not in board.ranking_note
    assert dict(board.protocol)["Strong evaluation (ranked)"] == tr.STRONG_MEANING
    # The templates, the index and the CSS class read the one declaration.
    files = render_leaderboards(results, None, tmp_path)
    html = next(f for f in files if f.name == f"{board.key.slug}.html").read_text(encoding="utf-8")
    md = next(f for f in files if f.name == f"{board.key.slug}.md").read_text(encoding="utf-8")
    assert 'aria-sort="descending">Strong ERS</th>' in html
    assert html.count(f'class="{board.ranked_css}"') == 3  # the ranked column's cells
    header = tr.md_table_rows(md)[0]
    assert header[:6] == ["Rank", "Entry", "Seeds", "Strong ERS", "ERS (RobRank protocol)", "Drop"]
    index = (tmp_path / "index.md").read_text(encoding="utf-8")
    assert "| nt, by Strong ERS |" in index
    # The ranking table comes before the protocol text on both pages.
    assert html.index('id="leaderboard"') < html.index('id="protocol"')
    assert md.index("## Leaderboard") < md.index("## Protocol")


def test_fallback_orders_without_strong_ers():
    specs = [EntrySpec("nt", [10.0], [0.9]), EntrySpec("act", [40.0], [0.5])]
    results, _ = tr.synthetic_store(specs, preset="quick")
    (board,) = build_boards(results, None, plots=False)
    assert board.ranked_by == RANKED_SCORE
    assert [r.entry for r in board.rows] == ["act", "nt"]
    assert labels(board)[:2] == ["ERS", "ERS (RobRank protocol)"] and "Strong ERS" not in labels(board)
    assert "fall back" in board.ranking_note and "strong evaluation" in board.ranking_note
    assert board.unreliable_findings == ""  # no Drop column, no verdict

    # Neither Strong ERS nor the scale-free ERS: RobRank's ERS orders the rows.
    legacy = results[~((results["attack"] == "score") & (results["metric"] == "ERS"))]
    (board,) = build_boards(legacy, None, plots=False)
    assert board.ranked_by == ROBRANK_SCORE
    assert [r.entry for r in board.rows] == ["act", "nt"]
    assert "fall back to RobRank's own ERS" in board.ranking_note


def test_a_board_with_some_strong_cells_ranks_by_strong_ers_and_shows_the_rest_last():
    specs = [EntrySpec("nt", [60.0], [0.9]), EntrySpec("act", [40.0], [0.5], strong=[30.0])]
    results, _ = tr.synthetic_store(specs, preset="quick")
    (board,) = build_boards(results, None, plots=False)
    assert board.ranked_by == STRONG_SCORE
    assert [r.entry for r in board.rows] == ["act", "nt"]
    assert cells(board, "nt")["Strong ERS"] == "—"


# --------------------------------------------------------------------------------------------------
# RobRank protocol unreliable


@pytest.mark.parametrize("drop, flagged", [(UNRELIABLE_TOLERANCE + 0.5, True), (UNRELIABLE_TOLERANCE - 0.5, False)])
def test_unconverged_label_fires_above_the_tolerance_only(tmp_path, drop, flagged):
    specs = [EntrySpec("act", [40.0, 40.0], [0.5, 0.5], strong=[39.0, 40.0 - drop]),  # one seed decides
             EntrySpec("nt", [20.0, 20.0], [0.9, 0.9], strong=[19.9, 19.9])]
    results, _ = tr.synthetic_store(specs, preset="quick")
    (board,) = build_boards(results, None, plots=False)
    row = next(r for r in board.rows if r.entry == "act")
    assert row.unreliable is flagged
    assert row.css == (UNRELIABLE_CSS if flagged else "")
    drop_cell = row.cells[[c.key for c in board.columns].index(DROP_KEY)]
    assert (drop_cell.badge == UNRELIABLE_LABEL) is flagged and drop_cell.text.count("±") == 1
    assert not next(r for r in board.rows if r.entry == "nt").unreliable
    files = render_leaderboards(results, None, tmp_path)
    html = next(f for f in files if f.name == f"{board.key.slug}.html").read_text(encoding="utf-8")
    md = next(f for f in files if f.name == f"{board.key.slug}.md").read_text(encoding="utf-8")
    assert (f'<tr class="{UNRELIABLE_CSS}">' in html) is flagged
    assert (f'<span class="badge">{UNRELIABLE_LABEL}</span>' in html) is flagged
    act_md = next(row for row in tr.md_table_rows(md) if row[1] == "act")
    assert (f"({UNRELIABLE_LABEL})" in " ".join(act_md)) is flagged
    if flagged:
        assert "act: a seed's Drop exceeds 2 ERS points" in board.unreliable_findings
        assert f"**{UNRELIABLE_LABEL}.** act: " in md
    else:
        assert board.unreliable_findings.startswith("No entry")


# --------------------------------------------------------------------------------------------------
# Rank intervals


def test_bootstrap_reproduces_the_stored_strong_ers_at_the_identity():
    results, _ = tr.synthetic_store(strong_specs(), preset="quick")
    queries = tr.synthetic_queries(results)
    for cell_id, part in queries.groupby("cell_id"):
        means = part.groupby("metric")["strong"].mean()
        stored = results[(results["cell_id"] == cell_id) & (results["metric"] == STRONG_SCORE)]["value"].iloc[0]
        vectorised = ers_of_means(means.reindex(list(ERS_KEYS)).to_numpy()[None, :], ERS_KEYS)[0]
        assert vectorised == pytest.approx(ers(means.to_dict())) == pytest.approx(stored)


def test_rank_intervals_are_reproducible_contain_the_rank_and_reflect_the_gaps():
    # two equal entries on top, one far below
    specs = [EntrySpec("hm", [40.0, 41.0, 42.0], [0.7] * 3, strong=[30.0, 31.0, 32.0]),
             EntrySpec("act", [40.0, 41.0, 42.0], [0.6] * 3, strong=[30.0, 31.0, 32.0]),
             EntrySpec("nt", [15.0, 16.0, 17.0], [0.9] * 3, strong=[5.0, 6.0, 7.0])]
    results, _ = tr.synthetic_store(specs, preset="quick")
    queries = tr.synthetic_queries(results)
    (board,) = build_boards(results, None, plots=False, queries=queries)
    (again,) = build_boards(results, None, plots=False, queries=queries)
    assert [r.rank_text for r in board.rows] == [r.rank_text for r in again.rows]
    by_entry = {r.entry: r for r in board.rows}
    for row in board.rows:
        assert row.interval.low <= row.rank <= row.interval.high
    assert (by_entry["hm"].interval.low, by_entry["hm"].interval.high) == (1, 2)  # equal: wide
    assert (by_entry["act"].interval.low, by_entry["act"].interval.high) == (1, 2)
    assert (by_entry["nt"].interval.low, by_entry["nt"].interval.high) == (3, 3)  # far apart: narrow
    assert by_entry["nt"].rank_text == "3 (3–3)"
    assert board.interval_draws == 1000 and "95 % interval over 1000 bootstrap draws" in board.rank_note


def test_entries_without_query_values_get_no_interval():
    specs = [EntrySpec("hm", [40.0, 41.0], [0.7] * 2, strong=[30.0, 31.0]),
             EntrySpec("nt", [15.0, 16.0], [0.9] * 2, strong=[5.0, 6.0])]
    results, _ = tr.synthetic_store(specs, preset="quick")
    queries = tr.synthetic_queries(results)
    queries = queries[queries["entry"] != "nt"]
    (board,) = build_boards(results, None, plots=False, queries=queries)
    assert [r.rank_text for r in board.rows] == ["1 (1–1)", "2 (—)"]
    (plain,) = build_boards(results, None, plots=False)  # no per-query values at all: bare ranks
    assert [r.rank_text for r in plain.rows] == ["1", "2"] and plain.interval_draws == 0


def test_rank_interval_bootstrap_is_fast_on_a_full_board():
    rng = np.random.default_rng(0)
    keys = ERS_KEYS
    entries = [([rng.normal(0.0, 5.0, (500, len(keys))) + np.array([25, 75, 25, 75, 0.3, 1.0, 40, 40, 40, 40]) + i
                 for _ in range(3)], float("nan")) for i in range(14)]
    start = time.perf_counter()
    intervals = rank_intervals(entries, keys, draws=1000)
    assert time.perf_counter() - start < 10.0  # well under a second on an idle core; generous for shared CI
    assert len(intervals) == 14 and all(i is not None for i in intervals)


# --------------------------------------------------------------------------------------------------
# Convergence section

FIXED_BEST = {32: 30.0, 64: 25.0, 128: 22.0, 256: 21.8, 512: 21.7}  # stops moving at 128
APGD_BEST = {64: 22.3, 128: 21.9, 256: 21.5}
RESTART_BEST = {32: 23.0}


def study_rows(results: pd.DataFrame, queries: pd.DataFrame, entry: str, seed: int, *, cell_id: str | None = None,
               shift: float = 0.0, other_queries: bool = False, weights: str | None = None,
               study_id: str | None = None) -> pd.DataFrame:
    """One study of ``entry``/``seed``: per query and metric, attack values whose ERS terms all equal
    the curve's value (``shift`` added), so ERS of the study is exactly the curve."""
    cell = results[(results["entry"] == entry) & (results["seed"] == seed)]
    mine = queries[queries["cell_id"] == cell["cell_id"].iloc[0]]
    query_index = sorted(mine["query"].unique()) if not other_queries else list(range(1000, 1010))
    directions = mine.groupby("metric")["direction"].first()
    attacks = mine.groupby("metric")["attack"].first()
    parts = []
    runs = [("fixed", "pgd", b, v, v + 2.0) for b, v in FIXED_BEST.items()]
    runs += [(f"apgd:{b}", "apgd", b, v, v + 1.0) for b, v in APGD_BEST.items()]
    runs += [("restart:1", "pgd", b, v, v + 1.0) for b, v in RESTART_BEST.items()]
    for run, method, budget, best, last in runs:
        best_values, last_values = tr.attack_values(best + shift), tr.attack_values(last + shift)
        for metric in directions.index:
            parts.append(pd.DataFrame({
                "dataset": "digits", "cell_id": cell_id or cell["cell_id"].iloc[0],
                "study_id": study_id or f"study-{entry}-{seed}", "weights": weights,
                "entry": entry, "seed": seed, "attack": attacks[metric], "run": run, "method": method,
                "budget": budget, "query": query_index, "metric": metric, "direction": directions[metric],
                "best": best_values[metric], "last": last_values[metric]}))
    return pd.concat(parts, ignore_index=True)[STUDY_COLUMNS].astype({"weights": "string"})


def test_settled_budget():
    assert settled_budget(FIXED_BEST) == 128
    assert settled_budget({32: 30.0, 64: 20.0}) is None
    assert settled_budget({32: 30.0, 64: 29.8, 128: 25.0, 256: 24.9}) == 128  # a later jump resets it
    assert settled_budget({32: 30.0}) is None


def test_convergence_section_present_with_studies_and_absent_without(tmp_path):
    results, _ = tr.synthetic_store(strong_specs(), preset="quick")
    queries = tr.synthetic_queries(results)
    studies = pd.concat([
        study_rows(results, queries, "act", 0),  # the board's own cell id
        study_rows(results, queries, "hm", 0, cell_id="standard-id-of-hm", shift=5.0),  # same queries: linked
        study_rows(results, queries, "nt", 0, cell_id="another-preset", other_queries=True),  # not this board's
    ], ignore_index=True)
    (board,) = build_boards(results, None, plots=False, queries=queries, studies=studies)
    section = board.convergence
    assert section is not None and section.studied == 2
    assert [row[0] for row in section.rows] == ["hm", "act"]  # board order; nt's study is another board's
    assert section.settled == {"act": 128, "hm": 128}
    assert section.curves["act"]["fixed"] == pytest.approx(FIXED_BEST)
    assert section.curves["hm"]["apgd:256"] == pytest.approx({256: 26.5})
    act = dict(zip(section.headers, section.rows[1]))
    assert act["Stops moving at (≤ 0.5 per doubling)"] == "128 steps"
    assert act["Standard (32 steps, last iterate)"] == "32.0"
    assert act["Strongest measured"] == "21.5"
    expected = choose_ensemble(pd.concat([candidate_table(studies[studies["entry"] == e]) for e in ("act", "hm")]))
    assert f"is {expected['ensemble']}: {expected['steps']} PGD steps per query batch" in section.choice
    assert f"{expected['steps'] / 32:.1f}× the standard 32" in section.choice
    assert f"The board's Strong ERS uses {DEFAULT_STRONG.id}" in section.choice
    in_use = f"Strong, in use: {ensemble_name(DEFAULT_STRONG)}"
    assert in_use == "Strong, in use: fixed 128 + restart 32 + apgd 128" and in_use in section.headers
    assert act[in_use] == "21.9"  # the per-query worst case over fixed 128 (22.0), restart 32 (23.0), APGD 128 (21.9)
    assert "within the 1-point limit for every studied cell" in section.choice

    files = render_leaderboards(results, None, tmp_path / "with", queries=queries, studies=studies)
    html = next(f for f in files if f.name == f"{board.key.slug}.html").read_text(encoding="utf-8")
    md = next(f for f in files if f.name == f"{board.key.slug}.md").read_text(encoding="utf-8")
    assert 'id="convergence"' in html and 'id="figure-convergence"' in html and "Ensemble choice." in html
    assert "## Attack convergence" in md and f"]({board.key.slug}-convergence.png)" in md
    png = (tmp_path / "with" / f"{board.key.slug}-convergence.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and html.count('src="data:image/png;base64,') == 4  # 3 plots + this one
    assert "log2" in html and "▲ the APGD schedule" in md
    assert html.index('id="leaderboard"') < html.index('id="convergence"')

    files = render_leaderboards(results, None, tmp_path / "without", queries=queries)
    html = next(f for f in files if f.name == f"{board.key.slug}.html").read_text(encoding="utf-8")
    md = next(f for f in files if f.name == f"{board.key.slug}.md").read_text(encoding="utf-8")
    assert 'id="convergence"' not in html and "Attack convergence" not in md
    (plain,) = build_boards(results, None, plots=False, queries=queries, studies=studies.iloc[0:0])
    assert plain.convergence is None


def with_weights(results: pd.DataFrame, digests: dict[str, str]) -> pd.DataFrame:
    """``results`` plus each named entry's seed-0 weights digest row (as a trained cell stores it)."""
    from benchmark.checkpoints import WEIGHTS_METRIC

    extra = []
    for entry, digest in digests.items():
        row = results[(results["entry"] == entry) & (results["seed"] == 0)].iloc[[0]].copy()
        row["attack"], row["metric"], row["variant"], row["meaning"] = "training", WEIGHTS_METRIC, "", digest
        row["value"] = float(int(digest[:13], 16))
        extra.append(row)
    return pd.concat([results, *extra], ignore_index=True)


def test_a_study_of_other_weights_is_named_and_the_cells_own_study_preferred():
    """One cell id can name models with other weights (CPUs of two vendors): the board takes the study
    of its cell's own model, and says so when only another model of the recipe was studied."""
    results, _ = tr.synthetic_store(strong_specs(), preset="quick")
    results = with_weights(results, {"act": "a" * 64, "hm": "b" * 64})
    queries = tr.synthetic_queries(results)
    studies = pd.concat([
        study_rows(results, queries, "act", 0, weights="f" * 64, study_id="act-other", shift=3.0),
        study_rows(results, queries, "act", 0, weights="a" * 64, study_id="act-own"),
        study_rows(results, queries, "hm", 0, weights="c" * 64, study_id="hm-other"),
    ], ignore_index=True)
    (board,) = build_boards(results, None, plots=False, queries=queries, studies=studies)
    section = board.convergence
    assert section is not None and section.studied == 2
    assert section.curves["act"]["fixed"] == pytest.approx(FIXED_BEST)  # the own study, not the shifted one
    assert "The studies of hm attacked a model of the same recipe and seed other than the board" in section.choice
    assert "act" not in section.choice.split("The studies of")[1].split(" attacked")[0]
    # Without digests on either side nothing is claimed.
    (legacy,) = build_boards(results, None, plots=False, queries=queries,
                             studies=study_rows(results, queries, "hm", 0))
    assert "other than the board" not in legacy.convergence.choice


# --------------------------------------------------------------------------------------------------
# Replication


def test_replication_uses_the_ranking_key_and_says_what_the_protocol_alone_concludes():
    # Strong ERS: colo-tride > hm > act; the standard 32-step run (and RobRank's ERS) says the reverse.
    specs = [EntrySpec("colo-tride", [20.0, 20.4], [0.9, 0.9], strong=[18.0, 18.2]),
             EntrySpec("hm", [30.0, 30.4], [0.9, 0.9], strong=[12.0, 12.2]),
             EntrySpec("act", [40.0, 40.4], [0.9, 0.9], strong=[6.0, 6.2])]
    results, _ = tr.synthetic_store(specs, preset="quick")
    (board,) = build_boards(results, None, plots=False)
    claim = next(c for c in board.replication.claims if c.key == "b")
    assert claim.verdict == "holds"
    assert claim.headers[1] == f"first {score_label(STRONG_SCORE)}"
    assert claim.headers[-1] == f"by {score_label(ROBRANK_SCORE)} alone"
    assert [row[-1] for row in claim.rows] == ["reversed"] * 3
    assert "The RobRank protocol alone (ERS (RobRank protocol), 32 fixed steps) would conclude otherwise" in claim.detail
    assert "overall reversed" in claim.detail
    # Where both agree, nothing is added.
    agree = [EntrySpec(s.defense, s.strong, s.r1, strong=s.strong) for s in specs]
    results, _ = tr.synthetic_store(agree, preset="quick")
    (board,) = build_boards(results, None, plots=False)
    claim = next(c for c in board.replication.claims if c.key == "b")
    assert "would conclude otherwise" not in claim.detail
