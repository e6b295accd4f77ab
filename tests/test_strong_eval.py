"""The strong evaluation every cell gets (benchmark.strong_eval, attacks.runner.strong_runs): never
weaker than the standard run, the standard numbers unchanged, part of the cell id but not of a
study's; its per-query values stored and checked like a cell; the ensemble chosen from study rows."""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

import attacks  # noqa: F401  (registers the suite)
from attacks.base import Gallery
from attacks.runner import FIXED, run_attacks, select_queries, strong_runs
from benchmark import store
from benchmark.cell import CellConfig, resolve
from benchmark.datasets import load_digits
from benchmark.embedding import embed_split
from benchmark.errors import BenchmarkError
from benchmark.models import C2F2
from benchmark.pgd import PGDConfig
from benchmark.presets import PROFILES
from benchmark.registry import ATTACKS
from benchmark.robustness_scores import ERS_KEYS, ERS_TERMS, ers
from benchmark.schema import QUERY_COLUMNS
from benchmark.strong_eval import (
    CHOICE_LIMIT,
    DEFAULT_STRONG,
    GAP_LIMIT,
    StrongSpec,
    candidate_table,
    candidates,
    choose_ensemble,
)

ROB28 = PROFILES["rob28"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup():
    bundle = load_digits()
    test = bundle.test.subset(torch.arange(120))
    torch.manual_seed(0)
    model = C2F2(embedding_dim=32).eval()
    gallery = Gallery(embed_split(model, test), test.labels)
    return test, model, gallery, select_queries(len(test), 8, 0)


def test_strong_evaluation_keeps_the_standard_numbers_and_is_never_weaker(setup):
    test, model, gallery, index = setup
    config = PGDConfig(ROB28.epsilon, ROB28.alpha, 2)
    suite = [ATTACKS.create(name) for name in ("ca+", "qa-", "es")]
    kwargs = dict(query_index=index, batch_size=4, seed=0, device="cpu", progress=False)
    plain = run_attacks(model, lambda i: test.batch(i), gallery, suite, config, **kwargs)
    spec = StrongSpec(fixed_steps=4, restarts=1, restart_steps=2, apgd_budgets=(3,))
    strong = run_attacks(model, lambda i: test.batch(i), gallery, suite, config, strong=spec, **kwargs)
    assert strong.after == plain.after  # the fixed run's step 2 IS the standard run, bit for bit
    assert strong.before == plain.before
    assert not plain.strong and not plain.query_values
    moved = 0
    for attack in suite:
        values = strong.query_values[attack.name]
        for key in attack.metrics:
            higher = attack.spec(key).higher_is_better
            standard, worst = values["standard"][key], values["strong"][key]
            assert len(worst) == len(index)
            # Per query, at least as favourable to the attacker as the standard run.
            assert bool((worst <= standard).all() if higher else (worst >= standard).all()), key
            moved += int((worst != standard).sum())
            assert strong.strong[key] == pytest.approx(float(worst.double().mean()))
    assert moved > 0  # the longer runs found worse cases somewhere
    # One call makes every run: passes = fixed 4 + restart 2 + APGD 3 (+ resets) per batch.
    assert all(p >= (4 + 2 + 3) * 2 for p in strong.passes.values())


def test_strong_runs_cover_the_standard_run():
    config = PGDConfig(ROB28.epsilon, ROB28.alpha, 32)
    runs = strong_runs(config, StrongSpec(fixed_steps=64, restarts=2, restart_steps=16, apgd_budgets=(32, 64)))
    assert [r.name for r in runs] == [FIXED, "restart:1", "restart:2", "apgd:32", "apgd:64"]
    assert runs[0].config.steps == 64 and runs[0].record == (32, 64) and not runs[0].config.random_start
    assert runs[1].config.random_start and runs[1].record == (16,)
    assert all(r.record == (r.config.steps,) for r in runs[3:])
    # A fixed run shorter than the standard one is lengthened to it.
    assert strong_runs(config, StrongSpec(fixed_steps=8, apgd_budgets=()))[0].config.steps == 32


def test_default_ensemble_is_the_choice_of_the_committed_digits_studies():
    """DEFAULT_STRONG is what choose_ensemble picks from the stored digits study v4 (all built-in
    entries, seed 0), and every studied entry is within GAP_LIMIT of its strongest measured."""
    from benchmark.matrix import builtin_defense_names
    from benchmark.report.convergence import ensemble_name
    from benchmark.study import load_studies

    entries = builtin_defense_names()
    current = {resolve(CellConfig("digits", e, seed=0, threads=2, strong=False)).cell_id for e in entries}
    rows = load_studies(REPO / "results", "digits")
    rows = rows[rows["cell_id"].isin(current)]  # the studies of today's models (older ones are kept)
    assert sorted(rows["entry"].unique()) == sorted(entries)
    table = candidate_table(rows)
    chosen = choose_ensemble(table)
    assert chosen["ensemble"] == ensemble_name(DEFAULT_STRONG)
    assert chosen["steps"] == DEFAULT_STRONG.steps(32)
    in_use = table[table["ensemble"] == ensemble_name(DEFAULT_STRONG)]
    assert len(in_use) == len(entries) and in_use["gap"].max() <= CHOICE_LIMIT < GAP_LIMIT


def test_default_ensemble_meets_the_limit_on_every_committed_omniglot_study(omniglot_root):
    """The omniglot-small entries were studied after the choice (each with its seed-0 board cell):
    every built-in's seed-0 model of today has its study stored, under DEFAULT_STRONG each is within
    GAP_LIMIT of its strongest measured, and the default is never weaker than the RobRank protocol."""
    from benchmark.matrix import builtin_defense_names
    from benchmark.report.convergence import ensemble_name
    from benchmark.study import load_studies

    current = {resolve(CellConfig("omniglot", e, seed=0, threads=2, strong=False,
                                  data_root=str(omniglot_root))).cell_id: e for e in builtin_defense_names()}
    rows = load_studies(REPO / "results", "omniglot")
    rows = rows[rows["cell_id"].isin(current)]
    table = candidate_table(rows)
    in_use = table[table["ensemble"] == ensemble_name(DEFAULT_STRONG)].set_index("entry")
    missing = sorted(set(current.values()) - set(in_use.index))
    assert not missing, f"omniglot-small seed-0 studies missing: {missing}"
    assert in_use["gap"].max() <= GAP_LIMIT, in_use["gap"].round(2).to_dict()
    standard = table[table["ensemble"] == "standard (RobRank protocol)"].set_index("entry")
    assert (in_use["ERS"] <= standard["ERS"].reindex(in_use.index) + 1e-9).all()


@pytest.mark.parametrize("kwargs", [dict(fixed_steps=0), dict(restarts=1), dict(apgd_budgets=(64, 32)),
                                    dict(restarts=-1), dict(apgd_budgets=(0,)), dict(fixed_steps=True)])
def test_strong_spec_rejects_bad_values(kwargs):
    with pytest.raises(BenchmarkError, match="strong evaluation"):
        StrongSpec(**kwargs)


def test_strong_evaluation_is_part_of_the_cell_id_not_of_the_study():
    with_strong = resolve(CellConfig("digits", "nt", threads=1))
    without = resolve(CellConfig("digits", "nt", threads=1, strong=False))
    assert with_strong.cell_id != without.cell_id
    assert with_strong.train_id == without.train_id  # same model
    assert with_strong.standard_id == without.standard_id == without.cell_id
    assert with_strong.strong == DEFAULT_STRONG and without.strong is None


# ---- per-query values in the store ------------------------------------------------------------


def _cell_rows(cell_id: str) -> pd.DataFrame:
    from benchmark.schema import ALL_COLUMNS, rows_frame

    row = {c: None for c in ALL_COLUMNS}
    row.update(dataset="digits", model="c2f2", defense="nt", defense_params="{}", seed=0, preset="smoke",
               preset_version=1, profile="rob28", profile_version=1, attack="score", metric="ERS", variant="",
               value=1.0, metric_label="ERS", direction="", decimals=1, meaning="", attack_params="",
               attack_plugin_hash="", cell_id=cell_id, entry="nt", is_plugin=False, plugin_source="",
               plugin_hash="", attack_plugin=False, epsilon=0.3, alpha=0.01, attack_steps=32, train_pgd_steps=0,
               faithful=True, epochs=1, batch_pairs=1, attack_queries=2, attention_lambda=1.0, collapsed=False,
               train_seconds=0.0, seconds_per_epoch=0.0, attack_seconds=0.0, queries_per_second=0.0,
               eval_seconds=0.0, precision="float32", strong_eval="strong-v1", package_version="0",
               git_commit="", torch_version="", faiss_version="", device_name="cpu", config_hash=cell_id,
               created_at=pd.Timestamp("2026-01-01", tz="UTC"))
    return rows_frame([row])


def _queries(cell_id: str) -> pd.DataFrame:
    return pd.DataFrame({"cell_id": cell_id, "dataset": "digits", "entry": "nt", "seed": 0, "attack": "ca+",
                         "metric": "CA+", "direction": "higher", "query": [3, 7], "clean": [40.0, 50.0],
                         "standard": [10.0, 20.0], "strong": [5.0, 20.0]})[QUERY_COLUMNS]


def test_per_query_values_are_stored_with_the_cell_and_checked(tmp_path):
    store.write_cell(tmp_path, _cell_rows("a" * 64), queries=_queries("a" * 64))
    path = store.queries_path(tmp_path, "digits", "a" * 64)
    assert store._relative(tmp_path, path) in store.read_manifest(tmp_path)
    loaded = store.load_queries(tmp_path)
    assert list(loaded.columns) == QUERY_COLUMNS and loaded["strong"].tolist() == [5.0, 20.0]
    assert store.check_store(tmp_path).tampered == []
    with pytest.raises(ValueError, match="QUERY_COLUMNS"):
        store.write_cell(tmp_path, _cell_rows("b" * 64), queries=_queries("a" * 64))
    # Values whose bytes changed are left out with a warning, not used.
    frame = _queries("a" * 64)
    frame["strong"] = [0.0, 0.0]
    frame.to_parquet(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert store.load_queries(tmp_path).empty
    assert any("tampered" in str(w.message) for w in caught)


# ---- choosing the ensemble from a study -------------------------------------------------------

DIRECTIONS = {k: ("lower" if k in ("CA-", "QA-", "TMA-centred", "ES:D-rel") else "higher") for k in ERS_KEYS}


def _study_rows(entry: str, strength: dict[tuple[str, int], float], queries: int = 3) -> pd.DataFrame:
    """Synthetic study rows: every metric moved towards the attacker by ``strength`` (best iterate)."""
    parts = []
    for (run, budget), s in strength.items():
        for key in ERS_KEYS:
            scale = 0.01 if key in ("TMA-centred", "ES:D-rel") else 1.0
            base = 50.0 * scale
            value = base - s * scale if DIRECTIONS[key] == "higher" else base + s * scale
            last = base - 0.5 * s * scale if DIRECTIONS[key] == "higher" else base + 0.5 * s * scale
            parts.append(pd.DataFrame({"dataset": "digits", "entry": entry, "seed": 0, "run": run, "budget": budget,
                                       "query": range(queries), "metric": key, "direction": DIRECTIONS[key],
                                       "best": value, "last": last}))
    return pd.concat(parts, ignore_index=True)


STRENGTH = {("fixed", 32): 0.0, ("fixed", 64): 5.0, ("fixed", 128): 8.0, ("fixed", 256): 9.0,
            ("fixed", 512): 9.2, ("restart:1", 32): 1.0, ("restart:1", 64): 4.0, ("restart:1", 128): 7.0,
            ("apgd:64", 64): 9.1, ("apgd:256", 256): 9.3}


def test_the_chosen_ensemble_is_the_cheapest_within_the_gap_for_every_entry():
    weak_apgd = {**STRENGTH, ("apgd:64", 64): 2.0, ("apgd:256", 256): 3.0}
    rows = pd.concat([_study_rows("a", STRENGTH), _study_rows("b", weak_apgd)], ignore_index=True)
    table = candidate_table(rows)
    standard = table[table["ensemble"] == "standard (RobRank protocol)"].set_index("entry")
    assert set(standard.index) == {"a", "b"}
    assert (standard["gap"] > 0).all()  # the standard run is weaker than the strongest
    chosen = choose_ensemble(table)
    worst = table.groupby("ensemble")["gap"].max()
    steps = table.groupby("ensemble")["steps"].first()
    assert worst[chosen["ensemble"]] <= GAP_LIMIT
    cheaper = [name for name in worst.index if steps[name] < chosen["steps"] and not name.startswith("standard")]
    assert cheaper and all(worst[name] > GAP_LIMIT for name in cheaper)
    # Each candidate's ERS is the ERS of the worst case over its members (strength 9.3 is the strongest).
    a = table[(table["entry"] == "a")].set_index("ensemble")
    means = {k: (50.0 - 9.3 if DIRECTIONS[k] == "higher" else 50.0 + 9.3) * (0.01 if k in ("TMA-centred", "ES:D-rel")
                                                                              else 1.0) for k in ERS_KEYS}
    assert a["strongest"].iloc[0] == pytest.approx(ers(means))
    assert set(ERS_TERMS) >= set(ERS_KEYS)
    # Adding a member never makes an ensemble weaker.
    assert a.loc["fixed 64 + apgd 64", "ERS"] <= a.loc["fixed 64", "ERS"] + 1e-9


def test_no_qualifying_ensemble_is_one_clear_error():
    rows = _study_rows("a", {("fixed", 32): 0.0, ("fixed", 64): 1.0, ("apgd:64", 64): 30.0})
    table = candidate_table(rows)
    assert choose_ensemble(table)["ensemble"] == "fixed 32 + apgd 64"
    with pytest.raises(BenchmarkError, match="no ensemble"):
        choose_ensemble(table, gap_limit=-1.0)
    names = [name for name, _, _ in candidates({("fixed", 32), ("fixed", 64), ("apgd:64", 64)})]
    assert "fixed 32" in names and "fixed 64 + apgd 64" in names
