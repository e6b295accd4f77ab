"""The results store on synthetic rows: atomic cell files, validation, union, locks, formatting."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from datetime import datetime, timezone

import pandas as pd
import pyarrow.parquet as pq
import pytest

from benchmark import locks, results_listing, store
from benchmark.errors import BenchmarkError
from benchmark.schema import ALL_COLUMNS, COLUMN_TYPES, TELEMETRY_COLUMNS


def synthetic_rows(cell_id: str, *, dataset: str = "digits", entry: str = "nt", seed: int = 0,
                   ers: float = 10.0) -> pd.DataFrame:
    base = {c: "" for c in ALL_COLUMNS}
    base.update(dataset=dataset, model="c2f2", defense=entry, defense_params="{}", seed=seed, preset="smoke",
                preset_version=1, faithful=False, profile="rob28", profile_version=1, decimals=1, cell_id=cell_id, entry=entry, is_plugin=False,
                attack_plugin=False, epsilon=0.3, alpha=0.01, attack_steps=32, train_pgd_steps=0, epochs=2,
                batch_pairs=32, attack_queries=64, attention_lambda=0.5, collapsed=False, train_seconds=3.5,
                seconds_per_epoch=1.75, attack_seconds=0.0, queries_per_second=0.0, eval_seconds=1.0,
                config_hash=cell_id, created_at=datetime(2024, 1, 2, tzinfo=timezone.utc))
    rows = [
        {**base, "attack": "benign", "metric": "R@1", "variant": "", "value": 0.9},
        {**base, "attack": "benign", "metric": "train:R@1", "variant": "", "value": 0.95},
        {**base, "attack": "ca+", "metric": "CA+", "variant": "adversarial", "value": 20.0, "attack_seconds": 2.0},
        {**base, "attack": "ca+", "metric": "CA+", "variant": "clean", "value": 50.0, "attack_seconds": 2.0},
        {**base, "attack": "score", "metric": "ERS", "variant": "", "value": ers},
        {**base, "attack": "score", "metric": "ARS", "variant": "", "value": 30.0},
        {**base, "attack": "score", "metric": "WHM", "variant": "", "value": 0.92},
    ]
    return pd.DataFrame(rows, columns=ALL_COLUMNS)


def synthetic_telemetry(cell_id: str, steps: int = 4) -> pd.DataFrame:
    return pd.DataFrame({"cell_id": cell_id, "dataset": "digits", "defense": "nt", "entry": "nt", "seed": 0,
                         "preset": "smoke", "step": range(steps), "epoch": [s // 2 for s in range(steps)],
                         "loss": [0.5] * steps, "collapseness": 0.1, "hardness": 0.2, "separability": 0.3,
                         "mean_distance": 1.0, "embedding_shift": 0.0})


def assert_schema_types(df: pd.DataFrame) -> None:
    assert list(df.columns) == ALL_COLUMNS
    for column, dtype in COLUMN_TYPES.items():
        assert str(df[column].dtype) == str(pd.Series([], dtype=dtype).dtype), column


def test_write_then_load_roundtrip_typed(tmp_path):
    a = synthetic_rows("a" * 64)
    b = synthetic_rows("b" * 64, entry="act", seed=1, ers=40.0)
    path_a = store.write_cell(tmp_path, a, synthetic_telemetry("a" * 64))
    store.write_cell(tmp_path, b)
    assert path_a == tmp_path / "cells" / "digits" / f"{'a' * 64}.parquet"
    assert not list(path_a.parent.glob("*.tmp")) and not list(path_a.parent.glob(".*"))

    df = store.load_results(tmp_path)
    assert len(df) == 14 and set(df["cell_id"]) == {"a" * 64, "b" * 64}
    assert_schema_types(df)
    assert df["created_at"].iloc[0] == pd.Timestamp("2024-01-02", tz="UTC")
    assert len(store.load_results(tmp_path, dataset="digits")) == 14
    assert store.load_results(tmp_path, dataset="omniglot").empty

    marker = json.loads(pq.read_schema(path_a).metadata[store.MARKER_KEY])
    assert marker["cell_id"] == "a" * 64 and marker["rows"] == 7

    tele = store.load_telemetry(tmp_path)
    assert list(tele["step"]) == [0, 1, 2, 3] and set(TELEMETRY_COLUMNS) <= set(tele.columns)
    assert store.load_telemetry(tmp_path, cell_ids=["b" * 64]).empty


def test_empty_store_is_typed_and_empty(tmp_path):
    df = store.load_results(tmp_path / "nowhere")
    assert df.empty
    assert_schema_types(df)
    assert results_listing.format_results(df) == "(no results)\n"


def test_write_rejects_mixed_cells(tmp_path):
    mixed = pd.concat([synthetic_rows("a" * 64), synthetic_rows("b" * 64)])
    with pytest.raises(ValueError, match="share cell_id"):
        store.write_cell(tmp_path, mixed)
    with pytest.raises(ValueError, match="at least one row"):
        store.write_cell(tmp_path, synthetic_rows("a" * 64).iloc[:0])


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no_marker", "renamed", "empty"])
def test_damaged_cell_files_are_detected_and_skipped(tmp_path, damage):
    good = store.write_cell(tmp_path, synthetic_rows("a" * 64))
    bad = store.write_cell(tmp_path, synthetic_rows("b" * 64))
    if damage == "truncate":
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    elif damage == "garbage":
        bad.write_bytes(b"not parquet at all")
    elif damage == "no_marker":
        synthetic_rows("b" * 64).to_parquet(bad)
    elif damage == "renamed":  # a valid file under another cell's name
        bad.unlink()
        good_copy = tmp_path / "cells" / "digits" / f"{'c' * 64}.parquet"
        good_copy.write_bytes(good.read_bytes())
        bad = good_copy
    elif damage == "empty":
        bad.write_bytes(b"")

    checked = store.read_cell_file(bad)
    assert not checked.valid and checked.problem
    assert store.read_cell_file(good).valid
    with pytest.warns(store.CorruptCellWarning, match=bad.name):
        df = store.load_results(tmp_path)
    assert set(df["cell_id"]) == {"a" * 64}


def test_check_results_dir(tmp_path, monkeypatch):
    created = store.check_results_dir(tmp_path / "new" / "results")
    assert created.is_dir()

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BenchmarkError, match="cannot create results directory"):
        store.check_results_dir(blocker / "results")
    with pytest.raises(BenchmarkError, match="not a directory"):
        store.check_results_dir(blocker)

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(created) else real_access(p, mode))
    with pytest.raises(BenchmarkError, match="not writable"):
        store.check_results_dir(created)


def test_lock_is_exclusive_and_released(tmp_path):
    first = locks.CellLock.acquire(tmp_path, "digits", "a" * 64)
    assert first is not None
    assert locks.CellLock.acquire(tmp_path, "digits", "a" * 64) is None  # held by a live process (us)
    owner = locks.read_lock(first.path)
    assert owner.pid == os.getpid() and owner.host == socket.gethostname()
    first.release()
    assert not first.path.exists()
    again = locks.CellLock.acquire(tmp_path, "digits", "a" * 64)
    assert again is not None
    again.release()


def test_stale_lock_of_dead_process_is_broken(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = store.lock_path(tmp_path, "digits", "a" * 64)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "created": 0}))
    lock = locks.CellLock.acquire(tmp_path, "digits", "a" * 64)
    assert lock is not None and locks.read_lock(path).pid == os.getpid()
    assert not path.with_name(path.name + ".break").exists()
    lock.release()

    # Another host's lock cannot be judged from here: it is respected.
    path.write_text(json.dumps({"pid": int(dead.stdout), "host": "elsewhere", "created": 0}))
    assert locks.CellLock.acquire(tmp_path, "digits", "a" * 64) is None


def test_release_leaves_someone_elses_lock(tmp_path):
    lock = locks.CellLock.acquire(tmp_path, "digits", "a" * 64)
    lock.path.write_text(json.dumps({"pid": 1, "host": "other", "created": 0}))
    lock.release()
    assert lock.path.exists()


def test_format_results(tmp_path):
    store.write_cell(tmp_path, synthetic_rows("a" * 64))
    store.write_cell(tmp_path, synthetic_rows("b" * 64, entry="act", seed=1, ers=40.0))
    df = store.load_results(tmp_path)
    table = results_listing.format_results(df, "table")
    lines = table.strip().splitlines()
    assert len(lines) == 3  # header + one line per entry x seed
    assert "ERS" in lines[0] and "train_s" in lines[0]
    assert any("act" in line and "40.0" in line and "0.9000" in line for line in lines[1:])

    summary = results_listing.summary_table(df)
    # rows without an ERS:RobRank score predate the scale-free ERS: their ERS is RobRank's
    assert sorted(summary["ERS_RobRank"]) == [10.0, 40.0] and summary["ERS"].isna().all()

    csv = results_listing.format_results(df, "csv")
    assert csv.splitlines()[0].split(",") == ALL_COLUMNS and len(csv.splitlines()) == 15
    records = json.loads(results_listing.format_results(df, "json"))
    assert len(records) == 14 and records[0]["created_at"].startswith("2024-01-02")
    with pytest.raises(BenchmarkError, match="accepted: table, csv, json"):
        results_listing.format_results(df, "xml")


def test_load_results_never_raises_on_foreign_files(tmp_path):
    store.write_cell(tmp_path, synthetic_rows("a" * 64))
    (tmp_path / "cells" / "digits" / ".a.parquet.x.tmp").write_bytes(b"partial")
    (tmp_path / "cells" / "digits" / "a.lock").write_text("{}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(store.load_results(tmp_path)) == 7
