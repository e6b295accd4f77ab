"""A store that notices tampering (issue 25): the manifest, ``rrb verify``, and recomputation.

One real smoke cell (NT on digits, CA+ only) is computed once; a test edits its rows by hand,
keeping the file a valid cell, and checks that ``rrb verify`` reports it, loading leaves it out
with one warning, ``rrb leaderboard`` refuses to render, and the next ``rrb run`` recomputes it
(from its checkpoint: the same numbers as before). Other tests: a store without a manifest is
"unrecorded" and adopted by ``--record``; the committed reference store verifies; concurrent
writers keep every manifest entry.
"""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmark import store
from benchmark.cli import main

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["--preset", "smoke", "--defenses", "nt", "--attacks", "ca+", "--quiet"]


@pytest.fixture(scope="module")
def one_cell(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("integrity") / "results"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RRB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "rrb-cache"))
        assert main(["run", *SMOKE, "--results", str(results)]) == 0
    return results


@pytest.fixture
def results(one_cell, tmp_path) -> Path:
    target = tmp_path / "results"
    shutil.copytree(one_cell, target)
    return target


def _edit_by_hand(path: Path) -> float:
    """Raise the stored benign R@1 by 0.5, keeping the file a valid cell (schema and marker intact)."""
    table = pq.read_table(path)
    frame = table.to_pandas()
    row = (frame["attack"] == "benign") & (frame["metric"] == "R@1")
    original = float(frame.loc[row, "value"].iloc[0])
    frame.loc[row, "value"] = original + 0.5
    edited = pa.Table.from_pandas(frame, schema=table.schema, preserve_index=False)
    pq.write_table(edited.replace_schema_metadata(table.schema.metadata), path)
    assert store.read_cell_file(path).valid  # nothing but the hash can tell
    return original


@pytest.mark.slow
def test_manifest_records_every_file_written(one_cell, capsys):
    entries = store.read_manifest(one_cell)
    names = {str(p.relative_to(one_cell)) for p in store.store_files(one_cell)}
    assert set(entries) == names and len(names) == 3  # the cell, its telemetry and its per-query values
    assert all(store.sha256_file(one_cell / n) == entries[n] for n in names)
    assert main(["verify", "--results", str(one_cell)]) == 0
    assert "3 file(s) match" in capsys.readouterr().err


@pytest.mark.slow
def test_hand_edited_cell_is_reported_refused_and_recomputed(results, tmp_path, capsys):
    cell = store.cell_files(results)[0]
    name = str(cell.relative_to(results))
    original = _edit_by_hand(cell)

    assert main(["verify", "--results", str(results)]) == 1
    out = capsys.readouterr().out
    assert f"TAMPERED    {name}" in out

    assert main(["results", "--results", str(results), "--format", "csv"]) == 0
    err = capsys.readouterr().err
    assert err.count("skipping tampered cell file") == 1 and cell.name in err  # one warning, once

    out_dir = tmp_path / "boards"
    assert main(["leaderboard", "--results", str(results), "--out", str(out_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "do not match their manifest" in err and name in err
    assert not out_dir.exists()

    assert main(["run", *SMOKE, "--results", str(results)]) == 0
    err = capsys.readouterr().err
    assert "tampered cell file" in err and "1 computed (1 of them replacing a corrupt file)" in err
    rows = store.load_results(results)
    benign = rows[(rows["attack"] == "benign") & (rows["metric"] == "R@1")]
    assert float(benign["value"].iloc[0]) == original  # recomputed from the checkpoint
    assert main(["verify", "--results", str(results)]) == 0


@pytest.mark.slow
def test_store_without_manifest_is_unrecorded_then_adopted(results, capsys):
    store.manifest_path(results).unlink()
    assert main(["verify", "--results", str(results)]) == 0  # unrecorded is not tampered
    out = capsys.readouterr().out
    assert out.count("unrecorded  ") == 3 and "TAMPERED" not in out
    assert len(store.load_results(results)) > 0  # an old store is still read

    garbage = results / "cells" / "digits" / "garbage.parquet"
    garbage.write_bytes(b"not parquet")
    assert main(["verify", "--results", str(results), "--record"]) == 0
    out = capsys.readouterr().out
    assert out.count("recorded    ") == 3 and "not recorded cells/digits/garbage.parquet" in out
    assert set(store.read_manifest(results)) == {str(p.relative_to(results)) for p in store.store_files(results)
                                                 if p != garbage}
    garbage.unlink()
    cell = store.cell_files(results)[0]
    cell.unlink()
    assert main(["verify", "--results", str(results)]) == 1
    assert "MISSING     cells/digits/" in capsys.readouterr().out
    assert main(["verify", "--results", str(results), "--record"]) == 0
    assert "forgot      cells/digits/" in capsys.readouterr().out


def test_committed_reference_store_verifies(capsys):
    assert main(["verify", "--results", str(REPO / "results")]) == 0
    out = capsys.readouterr().out
    assert "TAMPERED" not in out and "MISSING" not in out


def _record_many(results: str, worker: int, count: int) -> None:
    folder = Path(results) / "cells" / "digits"
    for i in range(count):
        path = folder / f"w{worker}-{i}.parquet"
        path.write_bytes(f"{worker}/{i}".encode())
        with store.manifest_lock(results):
            store.record_files(results, [path])


def test_concurrent_writers_keep_every_manifest_entry(tmp_path):
    results = tmp_path / "results"
    (results / "cells" / "digits").mkdir(parents=True)
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_record_many, args=(str(results), w, 25)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    entries = store.read_manifest(results)
    assert len(entries) == 100
    assert store.check_store(results).clean and not (results / store.MANIFEST_LOCK).exists()
