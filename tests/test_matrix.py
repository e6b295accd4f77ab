"""The matrix runner end to end on digits (smoke preset): rows, resume, kill, corruption, Dask, CLI.

Training is the expensive part of a cell, and a cell's checkpoint is keyed by what decides the
weights only (not the attack suite), so most tests copy the shared matrix's ``checkpoints``
folder into their own results directory and pay for evaluation alone.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import benchmark
from benchmark import executors, locks, matrix, store
from benchmark.cell import default_attack_names
from benchmark.cli import main
from benchmark.errors import BenchmarkError
from benchmark.matrix import MatrixOptions, MatrixSummary, run_matrix
from benchmark.plugins import load_builtins as import_builtins
from benchmark.registry import ATTACKS
from benchmark.robustness_scores import ARS_KEYS, ERS_KEYS, ROBRANK_ERS_KEYS, ers, ers_robrank
from benchmark.schema import ALL_COLUMNS, BENIGN_METRICS, COLUMN_TYPES, PROVENANCE_COLUMNS, TELEMETRY_COLUMNS

REPO = Path(__file__).resolve().parents[1]
DEFENSES = ("nt", "ga")
SEEDS = (0, 1)
SMOKE_ATTACKS = ("ca+", "qa+")
# On CPU a cell's numbers depend on torch's thread count (see benchmark.matrix): every in-process
# run uses one thread, the count a Dask worker uses by default, so all of them can be compared.
THREADS = 1
ROW_KEY = ["cell_id", "attack", "metric", "variant"]
WORKER_ENVIRON = ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

# Parquet types a cell file must hold for each schema dtype (the file itself is typed, not just the loader).
ARROW_TYPES = {"string": (pa.string(), pa.large_string()), "int64": (pa.int64(),), "float64": (pa.float64(),),
               "bool": (pa.bool_(),), "datetime64[ns, UTC]": (pa.timestamp("ns", tz="UTC"),)}


# ---------------------------------------------------------------------------------------------
# Helpers


TRAINING_METRICS = {"steps", "min_separability", "tail_separability", "max_collapseness",
                    "positive_collapseness_share"}


def without_training(df: pd.DataFrame) -> pd.DataFrame:
    """The rows :func:`expected_rows_per_cell` counts (the ``training`` rows are checked on their own)."""
    return df[df["attack"] != "training"]


def expected_rows_per_cell(attacks: tuple[str, ...], *, strong: bool = True) -> int:
    """Rows one cell must have besides its ``training`` rows, from the rules of cell.evaluate_cell
    (not from its output).

    Every benign metric once; each metric of each attack twice (adversarial and clean), three times
    with the strong evaluation (strong); WHM always; ERS (and, with the strong evaluation, Strong
    ERS) only when every ERS key was measured, likewise ERS (RobRank); per-attack ARS plus averaged
    ARS only when every ARS key was.
    """
    import_builtins()
    keys = [key for name in attacks for key in ATTACKS.create(name).metrics]
    per_score = 2 if strong else 1
    scores = 1  # WHM
    if set(ERS_KEYS) <= set(keys):
        scores += per_score
    if set(ROBRANK_ERS_KEYS) <= set(keys):
        scores += per_score
    if set(ARS_KEYS) <= set(keys):
        scores += len(ARS_KEYS) + 1
    return len(BENIGN_METRICS) + (3 if strong else 2) * len(keys) + scores


def cell_paths(results: Path) -> list[Path]:
    return sorted((results / "cells" / "digits").glob("*.parquet"))


def mtimes(results: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in cell_paths(results)}


def with_checkpoints(source: Path, results: Path) -> Path:
    """A fresh results directory holding only ``source``'s trained weights."""
    shutil.copytree(source / "checkpoints", results / "checkpoints")
    return results


def assert_store_consistent(results: Path, n_cells: int, attacks: tuple[str, ...]) -> pd.DataFrame:
    """Every cell present once: one valid file each, the expected rows, no duplicate row, no lock left."""
    paths = cell_paths(results)
    assert len(paths) == n_cells, [p.name for p in paths]
    assert all(store.read_cell_file(p).valid for p in paths)
    assert not list((results / "cells").rglob("*.lock")), "a lock file was left behind"
    df = store.load_results(results)
    sizes = without_training(df).groupby("cell_id").size()
    assert len(sizes) == n_cells
    assert (sizes == expected_rows_per_cell(attacks)).all(), sizes.to_dict()
    training = df[df["attack"] == "training"].groupby("cell_id")["metric"].apply(set)
    assert len(training) == n_cells and all(TRAINING_METRICS <= metrics for metrics in training)
    assert not df.duplicated(ROW_KEY).any()
    return df


def matrix_command(results: Path, defenses: tuple[str, ...], seeds: tuple[int, ...],
                   attacks: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "benchmark", "run", "--datasets", "digits", "--defenses", ",".join(defenses),
            "--seeds", ",".join(map(str, seeds)), "--preset", "smoke", "--attacks", ",".join(attacks),
            "--results", str(results), "--threads", str(THREADS), "--quiet"]


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    """Poll ``condition`` until it returns something truthy; fail when ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            found = condition()
            if found:
                return found
            out, err = proc.communicate()
            pytest.fail(f"process exited ({proc.returncode}) before {what}:\n{out}\n{err}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@dataclass
class SmokeRun:
    results: Path
    summary: MatrixSummary
    rows: pd.DataFrame
    started: datetime
    caller_threads: int  # torch threads of this process before the run


@pytest.fixture(scope="module")
def _module_cache(tmp_path_factory):
    """The conftest's dataset cache folder, for module-scoped fixtures (its own fixture is per test)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RRB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "rrb-cache"))
        yield


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, _module_cache) -> SmokeRun:
    """nt and ga x seeds 0, 1 on digits (smoke preset, CA+ and QA+), local executor: trained once."""
    results = tmp_path_factory.mktemp("smoke") / "results"
    started = datetime.now(timezone.utc)
    caller_threads = torch.get_num_threads()
    summary = run_matrix(["digits"], DEFENSES, SEEDS, preset="smoke", results_dir=results, progress=False,
                         attacks=SMOKE_ATTACKS, threads=THREADS)
    return SmokeRun(results, summary, store.load_results(results), started, caller_threads)


# ---------------------------------------------------------------------------------------------
# 1. Rows, types, provenance, files, telemetry


@pytest.mark.slow
def test_smoke_matrix_rows_types_provenance_files(smoke_run):
    summary, df, results = smoke_run.summary, smoke_run.rows, smoke_run.results
    assert (summary.total, summary.computed, summary.skipped, summary.by_other) == (4, 4, 0, 0)
    assert summary.recomputed_corrupt == 0 and summary.executor == "local"
    assert sorted(c.status for c in summary.cells) == ["computed"] * 4
    assert torch.get_num_threads() == smoke_run.caller_threads  # the cells' thread count was not left behind

    per_cell = expected_rows_per_cell(SMOKE_ATTACKS)
    assert per_cell == 13 + 2 * 3 + 1  # benign + CA+/QA+ x (adversarial, clean, strong) + WHM (no ERS/ARS: suite incomplete)
    assert len(without_training(df)) == 4 * per_cell
    assert (without_training(df).groupby("cell_id").size() == per_cell).all()
    training = df[df["attack"] == "training"]
    assert all(TRAINING_METRICS <= set(group) for _, group in training.groupby("cell_id")["metric"])
    steps = training[training["metric"] == "steps"]
    assert (steps["value"] > 0).all() and set(training["variant"]) == {""}
    assert set(zip(df["entry"], df["seed"])) == {(d, s) for d in DEFENSES for s in SEEDS}
    assert set(df["preset"]) == {"smoke"} and set(df["profile"]) == {"rob28"} and set(df["model"]) == {"c2f2"}
    assert not df.duplicated(ROW_KEY).any()

    # Row structure: benign/score rows carry no variant; each attack metric is an adversarial/clean/strong triple.
    benign = df[df["attack"] == "benign"]
    assert set(benign["metric"]) == set(BENIGN_METRICS) and set(benign["variant"]) == {""}
    assert benign["value"].between(0, 1).all()
    attacked = df[df["attack"].isin(SMOKE_ATTACKS)]
    pairs = attacked.groupby(["cell_id", "metric"])["variant"].apply(sorted)
    assert len(pairs) == 4 * 2 and all(pair == ["adversarial", "clean", "strong"] for pair in pairs)
    assert set(df.loc[df["attack"] == "score", "metric"]) == {"WHM"}
    assert (attacked["attack_seconds"] > 0).all() and (df["train_seconds"] > 0).all()

    # Every schema column, typed as the schema says, in the loaded frame and in the file itself.
    assert list(df.columns) == ALL_COLUMNS
    for column, dtype in COLUMN_TYPES.items():
        assert str(df[column].dtype) == str(pd.Series([], dtype=dtype).dtype), column
    for path in cell_paths(results):
        schema = pq.read_schema(path)
        for column, dtype in COLUMN_TYPES.items():
            assert schema.field(column).type in ARROW_TYPES[dtype], (path.name, column, schema.field(column).type)

    # Provenance: filled on every row, and true.
    for column in PROVENANCE_COLUMNS:
        assert df[column].notna().all(), column
        if column != "created_at":
            assert (df[column].str.len() > 0).all(), column
    assert set(df["package_version"]) == {benchmark.__version__}
    assert set(df["torch_version"]) == {torch.__version__}
    assert (df["config_hash"] == df["cell_id"]).all()
    assert len(set(df["device_name"])) == 1 and f"{THREADS} threads" in df["device_name"].iloc[0]
    if (REPO / ".git").exists():
        assert all(re.fullmatch(r"[0-9a-f]{12}(\+dirty)?", c) for c in df["git_commit"].unique()), df["git_commit"].unique()
    assert (df["created_at"] >= pd.Timestamp(smoke_run.started)).all()
    assert (df["created_at"] <= pd.Timestamp.now(tz="UTC")).all()

    # One file per cell, named by its cell id, nothing else left in the folder.
    paths = cell_paths(results)
    assert sorted(p.stem for p in paths) == sorted(df["cell_id"].unique())
    assert sorted(p.stem for p in paths) == sorted(c.cell_id for c in summary.cells)
    assert sorted(os.listdir(results / "cells" / "digits")) == sorted(p.name for p in paths)

    # Telemetry beside every cell.
    telemetry = store.load_telemetry(results)
    assert set(TELEMETRY_COLUMNS) <= set(telemetry.columns)
    assert set(telemetry["cell_id"]) == set(df["cell_id"])
    for path in paths:
        assert store.telemetry_path(results, "digits", path.stem).is_file()
    steps = telemetry.groupby("cell_id")["step"].agg(["min", "max", "count"])
    assert (steps["min"] == 0).all() and (steps["count"] == steps["max"] + 1).all() and (steps["count"] > 1).all()
    assert telemetry[["loss", "collapseness", "separability"]].notna().all().all()
    keys = df.groupby("cell_id")[["entry", "seed"]].first()
    tele_keys = telemetry.groupby("cell_id")[["entry", "seed"]].first()
    pd.testing.assert_frame_equal(keys.astype(object), tele_keys.loc[keys.index].astype(object))


@pytest.mark.slow
def test_whole_suite_cell_reuses_checkpoint_and_scores(smoke_run, tmp_path):
    """The default (whole) attack suite: ERS and every ARS row appear; training is reused, not redone."""
    results = with_checkpoints(smoke_run.results, tmp_path / "results")
    summary = run_matrix(["digits"], ["nt"], [0], preset="smoke", results_dir=results, progress=False,
                         threads=THREADS)
    assert summary.computed == 1
    suite = default_attack_names()
    df = assert_store_consistent(results, 1, suite)
    assert len(without_training(df)) == expected_rows_per_cell(suite) == 13 + 3 * 12 + 1 + 4 + len(ARS_KEYS) + 1

    scores = df[df["attack"] == "score"].set_index("metric")["value"]
    assert set(scores.index) == {"ERS", "ERS:RobRank", "ERS:strong", "ERS:RobRank:strong", "ARS", "WHM"} | \
        {f"ARS:{k}" for k in ARS_KEYS}
    assert scores["ERS:strong"] <= scores["ERS"] and scores["ERS:RobRank:strong"] <= scores["ERS:RobRank"]
    adversarial = df[df["variant"] == "adversarial"].set_index("metric")["value"]
    assert scores["ERS"] == pytest.approx(ers(adversarial.to_dict()))
    assert scores["ERS:RobRank"] == pytest.approx(ers_robrank(adversarial.to_dict()))
    assert scores["ARS"] == pytest.approx(sum(scores[f"ARS:{k}"] for k in ARS_KEYS) / len(ARS_KEYS))
    assert set(df["attack"]) == {"benign", "score", "training", *suite}

    # Same trained weights as the shared matrix's nt seed 0 (a different cell: another attack suite).
    before = smoke_run.rows[(smoke_run.rows["entry"] == "nt") & (smoke_run.rows["seed"] == 0)]
    assert df["cell_id"].iloc[0] != before["cell_id"].iloc[0]
    assert df["train_seconds"].iloc[0] == before["train_seconds"].iloc[0]  # read from the checkpoint
    benign_now = df[df["attack"] == "benign"].set_index("metric")["value"]
    benign_then = before[before["attack"] == "benign"].set_index("metric")["value"]
    pd.testing.assert_series_equal(benign_now.sort_index(), benign_then.sort_index())


# ---------------------------------------------------------------------------------------------
# 2. Resume: nothing recomputed; a changed setting is a new cell


@pytest.mark.slow
def test_rerun_computes_nothing_and_changed_setting_is_new_cell(smoke_run, tmp_path, monkeypatch):
    before = mtimes(smoke_run.results)
    summary = run_matrix(["digits"], DEFENSES, SEEDS, preset="smoke", results_dir=smoke_run.results,
                         progress=False, attacks=SMOKE_ATTACKS, threads=THREADS)
    assert summary.skipped == summary.total == 4
    assert (summary.computed, summary.by_other, summary.cells) == (0, 0, [])
    assert sorted(summary.cell_ids) == sorted(smoke_run.rows["cell_id"].unique())
    assert mtimes(smoke_run.results) == before

    # Nothing to do: not even a Dask cluster is started.
    def no_cluster(*args, **kwargs):
        raise AssertionError("a Dask cluster was started for a finished matrix")

    monkeypatch.setattr(matrix, "DaskExecutor", no_cluster)
    summary = run_matrix(["digits"], DEFENSES, SEEDS, preset="smoke", results_dir=smoke_run.results,
                         progress=False, attacks=SMOKE_ATTACKS, executor="dask")
    assert (summary.skipped, summary.computed) == (4, 0) and mtimes(smoke_run.results) == before

    # A changed defense parameter is a new cell beside the old one (in a copy: the shared store stays as is).
    results = tmp_path / "results"
    shutil.copytree(smoke_run.results, results)
    old = mtimes(results)
    summary = run_matrix(["digits"], ["ga"], [0], preset="smoke", results_dir=results, progress=False,
                         attacks=SMOKE_ATTACKS, defense_params={"ga": {"gamma": 0.05}}, threads=THREADS)
    assert (summary.total, summary.computed, summary.skipped) == (1, 1, 0)
    new_id = summary.cells[0].cell_id
    assert new_id not in set(smoke_run.rows["cell_id"])
    now = mtimes(results)
    assert {k: v for k, v in now.items() if k in old} == old  # the old files are untouched
    assert set(now) - set(old) == {f"{new_id}.parquet"}
    new = store.load_results(results).query("cell_id == @new_id")
    assert set(new["entry"]) == {"ga(gamma=0.05)"}
    assert json.loads(new["defense_params"].iloc[0])["gamma"] == 0.05
    old_ga = smoke_run.rows[(smoke_run.rows["entry"] == "ga") & (smoke_run.rows["seed"] == 0)]
    assert json.loads(old_ga["defense_params"].iloc[0])["gamma"] == 0.1
    assert len(list((results / "checkpoints" / "digits").glob("ga-s0-*.pt"))) == 2  # retrained, not reused


# ---------------------------------------------------------------------------------------------
# 3. Killed mid-matrix


@pytest.mark.slow
def test_killed_matrix_resumes_without_recomputing(smoke_run, tmp_path):
    attacks = ("ca+",)
    results = with_checkpoints(smoke_run.results, tmp_path / "results")
    proc = subprocess.Popen(matrix_command(results, DEFENSES, SEEDS, attacks), cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: cell_paths(results), 180, "the first cell file", proc)

        def lock_of_unfinished_cell() -> Path | None:
            for lock in (results / "cells" / "digits").glob("*.lock"):
                owner = locks.read_lock(lock)
                if owner is not None and owner.pid == proc.pid and not lock.with_suffix(".parquet").exists():
                    return lock
            return None

        lock = wait_for(lock_of_unfinished_cell, 120, "the process to claim its next cell", proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()  # reaped: a zombie would still look alive to the stale-lock check
    assert proc.returncode == -signal.SIGKILL

    done_before = mtimes(results)
    assert 1 <= len(done_before) < 4
    assert lock.exists() and locks.read_lock(lock).pid == proc.pid  # the dead process's lock is still there
    summary = run_matrix(["digits"], DEFENSES, SEEDS, preset="smoke", results_dir=results, progress=False,
                         attacks=attacks, threads=THREADS)
    assert summary.skipped == len(done_before)
    assert summary.computed == 4 - len(done_before) and summary.by_other == 0
    assert lock.stem in {c.cell_id for c in summary.cells}  # its stale lock did not block it
    after = mtimes(results)
    assert {k: after[k] for k in done_before} == done_before  # finished cells were not recomputed
    assert_store_consistent(results, 4, attacks)
    assert not list((results / "cells" / "digits").glob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_ends_the_run_cleanly(smoke_run, tmp_path, stop):
    """SIGTERM (a scheduler's or `kill`'s default) and SIGINT stop a run like Ctrl-C: exit 130, the
    message, no lock left behind — even when the shell started the process with SIGINT ignored."""
    results = tmp_path / "results"
    ignore_sigint = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if stop == signal.SIGINT else None
    proc = subprocess.Popen(matrix_command(results, DEFENSES, SEEDS, ("ca+",)), cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=ignore_sigint)
    try:
        wait_for(lambda: list((results / "cells" / "digits").glob("*.lock")), 180, "the first cell's lock", proc)
        proc.send_signal(stop)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted; finished cells are kept" in err
    assert "Traceback" not in err
    assert not list((results / "cells").rglob("*.lock")), "a lock file was left behind"
    assert all(store.read_cell_file(p).valid for p in cell_paths(results))


# ---------------------------------------------------------------------------------------------
# 4. A corrupt cell file


@pytest.mark.slow
def test_corrupt_cell_file_is_reported_and_recomputed(smoke_run, tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(smoke_run.results, results)
    victim = cell_paths(results)[0]
    others = {k: v for k, v in mtimes(results).items() if k != victim.name}
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    assert not store.read_cell_file(victim).valid

    summary = run_matrix(["digits"], DEFENSES, SEEDS, preset="smoke", results_dir=results, progress=False,
                         attacks=SMOKE_ATTACKS, threads=THREADS)
    err = capsys.readouterr().err
    assert (summary.recomputed_corrupt, summary.computed, summary.skipped) == (1, 1, 3)
    assert [c.cell_id for c in summary.cells] == [victim.stem]
    assert "corrupt" in err and victim.name in err
    assert "replacing a corrupt file" in summary.describe()
    assert store.read_cell_file(victim).valid
    assert {k: v for k, v in mtimes(results).items() if k != victim.name} == others
    df = assert_store_consistent(results, 4, SMOKE_ATTACKS)
    # Recomputed from the same checkpoint and seeds: the same numbers as before the damage.
    value = df.set_index(ROW_KEY)["value"].sort_index()
    original = smoke_run.rows.set_index(ROW_KEY)["value"].sort_index()
    pd.testing.assert_series_equal(value, original)


# ---------------------------------------------------------------------------------------------
# 5. Unusable results paths


@pytest.mark.slow
def test_unusable_results_paths_give_clear_errors(smoke_run, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = dict(preset="smoke", progress=False, attacks=SMOKE_ATTACKS)
    for threads in (0, -2, 1.5):
        with pytest.raises(BenchmarkError, match="threads must be a positive integer"):
            run_matrix(["digits"], ["nt"], [0], results_dir=tmp_path / "unused", threads=threads, **args)
    assert not (tmp_path / "unused").exists()
    with pytest.raises(BenchmarkError, match="not a directory"):
        run_matrix(["digits"], ["nt"], [0], results_dir=blocker, **args)
    with pytest.raises(BenchmarkError, match="cannot create results directory"):
        run_matrix(["digits"], ["nt"], [0], results_dir=blocker / "results", **args)

    # A read-only results directory (a published store): `run` refuses it, `results` still reads it.
    readonly = tmp_path / "readonly"
    shutil.copytree(smoke_run.results, readonly)
    readonly.chmod(0o500)
    try:
        if os.access(readonly, os.W_OK):  # root ignores the mode bits: take write access away by hand
            real_access = os.access
            monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(readonly) and mode & os.W_OK
                                else real_access(p, mode))
        with pytest.raises(BenchmarkError, match="not writable"):
            run_matrix(["digits"], ["nt"], [0], results_dir=readonly, **args)
        capsys.readouterr()
        assert main(["results", "--results", str(readonly)]) == 0
        assert len(capsys.readouterr().out.strip().splitlines()) == 1 + 4
    finally:
        readonly.chmod(0o700)

    assert main(["run", "--preset", "smoke", "--defenses", "nt", "--results", str(blocker), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a directory" in err and "Traceback" not in err

    missing = tmp_path / "nonexistent"
    done = subprocess.run([sys.executable, "-m", "benchmark", "results", "--results", str(missing)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and str(missing) in done.stderr and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not missing.exists()


# ---------------------------------------------------------------------------------------------
# 6. Dask: the same rows as the local executor


@pytest.mark.slow
def test_dask_executor_gives_the_same_rows_as_local(smoke_run, tmp_path):
    """Seeded everywhere, and one torch thread per Dask task by default, as in the local run."""
    pytest.importorskip("distributed")
    environ = {k: os.environ.get(k) for k in WORKER_ENVIRON}
    results = tmp_path / "dask-results"  # its own store: the workers train and evaluate everything again
    summary = run_matrix(["digits"], DEFENSES, SEEDS, preset="smoke", results_dir=results, progress=False,
                         attacks=SMOKE_ATTACKS, executor="dask", workers=2)
    assert {k: os.environ.get(k) for k in WORKER_ENVIRON} == environ  # the nannies' exports did not leak here
    assert (summary.executor, summary.total, summary.computed) == ("dask", 4, 4)
    assert all(c.pid != os.getpid() for c in summary.cells)  # computed by the worker processes
    df = assert_store_consistent(results, 4, SMOKE_ATTACKS)
    assert set(df["device_name"]) == set(smoke_run.rows["device_name"])
    dask_values = df.set_index(ROW_KEY)["value"].sort_index()
    local_values = smoke_run.rows.set_index(ROW_KEY)["value"].sort_index()
    assert dask_values.index.equals(local_values.index)
    differ = (dask_values - local_values).abs() > 1e-6
    assert not differ.any(), pd.DataFrame({"dask": dask_values, "local": local_values})[differ]


def test_local_cluster_workers_do_not_trim_memory_every_free():
    """Dask's default MALLOC_TRIM_THRESHOLD_=65536 made every training step fault pages in again."""
    distributed = pytest.importorskip("distributed")
    cluster = executors._start_local_cluster(1, 3)
    try:
        with distributed.Client(cluster) as client:
            seen = client.run(lambda: {k: os.environ.get(k) for k in WORKER_ENVIRON})
    finally:
        cluster.close()
    (worker_environ,) = seen.values()
    assert worker_environ["MALLOC_TRIM_THRESHOLD_"] is None
    assert worker_environ["OMP_NUM_THREADS"] == worker_environ["MKL_NUM_THREADS"] == "3"


# ---------------------------------------------------------------------------------------------
# 7. Two processes on one results directory


@pytest.mark.slow
def test_two_processes_share_one_results_directory(smoke_run, tmp_path):
    attacks = ("qa+",)
    results = with_checkpoints(smoke_run.results, tmp_path / "results")
    command = matrix_command(results, DEFENSES, SEEDS, attacks)
    procs = [subprocess.Popen(command, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=300))
        finally:
            proc.kill()
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err

    computed = 0
    for out, err in outputs:
        out = out + err  # `rrb run` prints the table on stdout and the summary line on stderr
        match = re.search(r"(\d+) cells: (\d+) already done, (\d+) computed(?: \(.*?\))?"
                          r"(?:, (\d+) finished by another process)?;", out)
        assert match, out
        total, skipped, done, by_other = (int(g or 0) for g in match.groups())
        assert total == 4 and skipped + done + by_other == 4, out
        computed += done
    assert computed == 4, outputs  # every cell computed exactly once, by one of the two
    assert_store_consistent(results, 4, attacks)


# ---------------------------------------------------------------------------------------------
# 8. The command line


@pytest.mark.slow
def test_cli_run_results_leaderboard(smoke_run, tmp_path, capsys):
    results = with_checkpoints(smoke_run.results, tmp_path / "results")
    assert main(["run", "--preset", "smoke", "--defenses", "nt", "--attacks", "ca+,ca-", "--results", str(results),
                 "--quiet"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2 and "R@1" in lines[0] and "ERS" in lines[0]
    assert lines[1].split()[:2] == ["digits", "smoke"] and " nt " in lines[1]
    assert "1 cells: 0 already done, 1 computed" in captured.err
    per_cell = expected_rows_per_cell(("ca+", "ca-"))

    assert main(["results", "--results", str(results), "--format", "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(frame.columns) == ALL_COLUMNS and len(without_training(frame)) == per_cell
    assert set(frame["attack"]) == {"benign", "ca+", "ca-", "score", "training"} and set(frame["entry"]) == {"nt"}

    assert main(["results", "--results", str(results), "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert len([r for r in records if r["attack"] != "training"]) == per_cell
    assert set(records[0]) == set(ALL_COLUMNS)

    out = tmp_path / "reports"
    assert main(["leaderboard", "--results", str(results), "--out", str(out)]) == 0
    assert (out / "index.html").is_file() and "index.html" in capsys.readouterr().err

    empty = tmp_path / "never-created"
    assert main(["run", "--preset", "smoke", "--defenses", "nosuch", "--results", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nosuch" in err and "known defenses" in err
    assert all(name in err for name in ("nt", "ga", "colo-tride"))
    assert not empty.exists()  # a bad name is caught before anything is created

    assert main(["run", "--preset", "smoke", "--seeds", "-1", "--results", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seeds" in err and "non-negative" in err


def test_matrix_options_travel_as_one_object():
    """The options of a run are one frozen object; a plugin run's child gets them back equal."""
    from attacks.audit import AuditSpec

    options = MatrixOptions(preset="smoke", defense_params={"ga": {"gamma": 0.05}}, plugins=("/tmp/p.py",),
                            attacks=("ca+", "qa+"), threads=2, audit=AuditSpec(restarts=1))
    assert MatrixOptions.from_json(json.loads(json.dumps(options.to_json()))) == options
    with pytest.raises(TypeError, match="MatrixOptions"):
        run_matrix(["digits"], ["nt"], [0], options, no_such_option=1)
