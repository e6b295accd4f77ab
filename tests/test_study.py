"""The convergence study (benchmark.study), the weights digest stored with a cell's rows, and the
thread count in a CPU cell's identity."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from benchmark import store
from benchmark.cell import CellConfig, cell_runtime, resolve, train_or_load
from benchmark.checkpoints import WEIGHTS_METRIC, TrainedModel, check_weights, stored_weights, weights_sha256
from benchmark.errors import BenchmarkError
from benchmark.locks import CellLock
from benchmark.study import StudySpec, run_study, study_curves, study_dir, study_id
from benchmark.tasks import run_and_store_cell

THREADS = 2
CONFIG = CellConfig(dataset="digits", defense="nt", preset="smoke", threads=THREADS)
# 32: the smoke profile's steps, the standard run. The APGD runs are covered in tests/test_attack_loop.py.
SPEC = StudySpec(budgets=(4, 32), restarts=1, restart_budget=32, apgd_budgets=())
pytestmark = pytest.mark.slow  # a smoke cell trained and studied: about a minute on an idle 2-core machine


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    results = tmp_path_factory.mktemp("study") / "results"
    run_and_store_cell(CONFIG, results, threads=THREADS)
    rows = run_study(CONFIG, results, SPEC, progress=False)
    return results, rows


def _cell_rows(results):
    cell = resolve(CONFIG)
    return cell, store.read_cell_file(store.cell_path(results, cell.bundle.name, cell.cell_id)).rows


def test_last_iterate_at_the_protocols_steps_is_the_standard_run(studied):
    results, rows = studied
    _, cell_rows = _cell_rows(results)
    curves = study_curves(rows)
    at32 = curves[(curves["run"] == "fixed") & (curves["budget"] == 32)].set_index("iterate")
    stored = cell_rows[cell_rows["attack"] == "score"].set_index("metric")["value"]
    # The first 32 steps of the long fixed-step run ARE the board's 32-step run.
    assert at32.loc["last", "ERS"] == pytest.approx(stored["ERS"], abs=1e-6)
    assert at32.loc["last", "ERS:RobRank"] == pytest.approx(stored["ERS:RobRank"], abs=1e-6)
    assert at32.loc["best", "ERS"] <= at32.loc["last", "ERS"] + 1e-9


def test_study_rows_cover_every_run_budget_query_and_value(studied):
    _, rows = studied
    assert set(rows["run"]) == {"fixed", "restart:1"}
    assert set(rows.loc[rows["run"] == "fixed", "budget"]) == {4, 32}
    assert rows["query"].nunique() == 16 and {"TMA-centred", "ES:D-rel", "GTT"} <= set(rows["metric"])
    robust_high = rows["direction"] == "higher"
    assert (rows.loc[robust_high, "best"] <= rows.loc[robust_high, "last"] + 1e-12).all()
    assert (rows.loc[~robust_high, "best"] >= rows.loc[~robust_high, "last"] - 1e-12).all()
    curves = study_curves(rows)
    fixed = curves[(curves["run"] == "fixed") & (curves["iterate"] == "best")].set_index("budget")["ERS"]
    assert fixed[32] <= fixed[4] + 1e-9  # the best iterate of a longer run never loses to a shorter one
    with_restart = curves[curves["run"] == "restarts:1"].set_index("budget")["ERS"]
    assert with_restart[32] <= fixed[32] + 1e-9


def test_study_resumes_at_the_missing_attack_and_respects_the_lock(studied, monkeypatch):
    results, rows = studied
    from attacks import runner

    cell, _ = _cell_rows(results)
    cell_rows = _cell_rows(results)[1]
    # keyed by the standard id and the studied model's weights
    directory = study_dir(results, "digits", study_id(cell.standard_id, SPEC, stored_weights(cell_rows)))
    calls = []
    original = runner.attack_queries

    def counting(*args, **kwargs):
        calls.append(args[3].name)
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "attack_queries", counting)
    again = run_study(CONFIG, results, SPEC, progress=False)
    assert calls == [] and again.equals(rows)
    (directory / "gtt.parquet").unlink()
    lock = CellLock.acquire_path(directory.with_suffix(".lock"))
    try:
        with pytest.raises(BenchmarkError, match="another process"):
            run_study(CONFIG, results, SPEC, progress=False)
    finally:
        lock.release()
    resumed = run_study(CONFIG, results, SPEC, progress=False)
    assert calls == ["gtt"]
    key = ["attack", "run", "budget", "query", "metric"]
    pd.testing.assert_frame_equal(resumed.sort_values(key).reset_index(drop=True),
                                  rows.sort_values(key).reset_index(drop=True))


def test_study_spec_rejects_bad_budgets():
    for budgets in ((), (64, 32), (0, 8), (8, 8)):
        with pytest.raises(BenchmarkError, match="increasing positive"):
            StudySpec(budgets=budgets)
    with pytest.raises(BenchmarkError, match="restarts"):
        StudySpec(restarts=-1)
    with pytest.raises(BenchmarkError, match="restart budget must be a step count from 1 to 64"):
        StudySpec(budgets=(32, 64), restart_budget=128)
    with pytest.raises(BenchmarkError, match="apgd budgets must be increasing positive"):
        StudySpec(apgd_budgets=(256, 64))
    # The default's cost: 256 fixed + one 32-step restart + APGD at 64, 128 and 256 steps per query batch.
    assert StudySpec().steps == 256 + 32 + 64 + 128 + 256
    assert StudySpec(restart_budget=None, restarts=2, apgd_budgets=()).steps == 3 * 256


def test_rows_store_the_weights_and_a_different_model_is_named(studied, capsys):
    results, _ = studied
    cell, cell_rows = _cell_rows(results)
    trained = train_or_load(cell, results, progress=False)
    assert stored_weights(cell_rows) == weights_sha256(trained.model)
    stored = cell_rows[(cell_rows["attack"] == "training") & (cell_rows["metric"] == WEIGHTS_METRIC)]
    assert stored["value"].iloc[0] == float(int(stored["meaning"].iloc[0][:13], 16))
    # A missing checkpoint is retrained with the cell's thread count: the same weights, no message.
    cell.checkpoint_path(results).unlink()
    retrained = train_or_load(cell, results, progress=False)
    assert not retrained.loaded and check_weights(retrained, cell_rows, "test")
    assert capsys.readouterr().err == ""
    with torch.no_grad():
        next(retrained.model.parameters()).add_(1e-3)  # stands for a model retrained differently
    assert not check_weights(TrainedModel(retrained.model, retrained.history, loaded=False), cell_rows, "audit of nt")
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "audit of nt" in err and "retrained" in err and "another model" in err


def test_a_study_is_keyed_by_its_models_weights_and_legacy_studies_are_attributed(studied, tmp_path, monkeypatch):
    """One cell id can name models with other weights (CPUs of two vendors): each is its own study,
    the rows say which model they attacked, and tools/backfill_study_weights.py gives a study stored
    before that (no weights column, the key without weights) the digest of the stored cell whose
    standard run it reproduces."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from benchmark.study import LEGACY_COLUMNS, load_studies

    results, rows = studied
    cell, cell_rows = _cell_rows(results)
    digest = stored_weights(cell_rows)
    assert set(rows["weights"]) == {digest}
    assert study_id(cell.standard_id, SPEC, digest) != study_id(cell.standard_id, SPEC, "0" * 64)
    assert rows["study_id"].iloc[0] == study_id(cell.standard_id, SPEC, digest)

    # A study stored the old way, in a copy of the store.
    copy = tmp_path / "results"
    shutil.copytree(results, copy, ignore=shutil.ignore_patterns("*.lock"))
    new_dir = study_dir(copy, "digits", study_id(cell.standard_id, SPEC, digest))
    legacy_dir = study_dir(copy, "digits", study_id(cell.standard_id, SPEC))
    legacy_dir.mkdir(parents=True)
    for path in new_dir.glob("*.parquet"):
        frame = pd.read_parquet(path)
        frame.assign(study_id=legacy_dir.name)[LEGACY_COLUMNS].to_parquet(legacy_dir / path.name)
    shutil.rmtree(new_dir)
    legacy = load_studies(copy, "digits")
    assert len(legacy) == len(rows) and legacy["weights"].isna().all()  # still read, weights unknown
    tool = Path(__file__).resolve().parents[1] / "tools" / "backfill_study_weights.py"
    done = subprocess.run([sys.executable, str(tool), "--results", str(copy)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"weights {digest[:12]}" in done.stdout
    assert not legacy_dir.exists() and new_dir.is_dir()
    backfilled = load_studies(copy, "digits")
    key = ["attack", "run", "budget", "query", "metric"]
    pd.testing.assert_frame_equal(backfilled.sort_values(key).reset_index(drop=True),
                                  rows.sort_values(key).reset_index(drop=True))
    # The study resumes from the attributed rows: nothing is recomputed.
    from attacks import runner

    calls = []
    original = runner.attack_queries
    monkeypatch.setattr(runner, "attack_queries", lambda *a, **k: calls.append(a[3].name) or original(*a, **k))
    again = run_study(CONFIG, copy, SPEC, progress=False)
    assert calls == [] and len(again) == len(rows)


def test_cpu_thread_count_is_part_of_the_identity_and_is_used(monkeypatch):
    one, two = resolve(CellConfig("digits", "nt", preset="smoke", threads=1)), resolve(CONFIG)
    assert one.cell_id != two.cell_id and one.train_id != two.train_id
    assert resolve(CellConfig("digits", "nt", preset="smoke", threads=1)).cell_id == one.cell_id
    with pytest.raises(BenchmarkError, match="threads must be a positive integer"):
        resolve(CellConfig("digits", "nt", preset="smoke", threads=0))
    previous = torch.get_num_threads()
    seen = []
    with cell_runtime(one):
        seen.append(torch.get_num_threads())
    assert seen == [1] and torch.get_num_threads() == previous
