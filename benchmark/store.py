"""The results store (SPEC §7): one Parquet file per matrix cell; the store is their union.

Layout under a results directory::

    MANIFEST.sha256                         sha256 of every cell, telemetry and audit file
    cells/<dataset>/<cell_id>.parquet       the cell's tidy rows (schema.ALL_COLUMNS)
    cells/<dataset>/<cell_id>.lock          present while some process computes the cell
    cells/<dataset>/<audit_id>.lock         present while some process audits the cell
    telemetry/<dataset>/<cell_id>.parquet   the cell's per-step training telemetry
    queries/<dataset>/<cell_id>.parquet     per-query attack values of a cell's strong evaluation
    audits/<dataset>/<audit_id>.parquet     a cell's attack-strength audit (benchmark.cell_audit)
    studies/<dataset>/<study_id>/...        convergence studies (benchmark.study; not in the manifest)
    checkpoints/...                         trained weights (written by cell.train_or_load)

A cell is *done* exactly when its rows file is valid: readable Parquet, every schema column
present, non-empty, and carrying a completeness marker in its Parquet key-value metadata
(``rrb.cell``: format, cell_id, row count) that matches the file name and the rows read back.
Both files are written to a temp file in the same folder and moved into place with
``os.replace``; the telemetry goes first, so a finished rows file always has its telemetry
beside it. A file name is the config hash, so a changed setting is a new file, never an
overwrite, and the union can never hold a cell twice.

Several processes (or Dask workers on several hosts) may share one results directory through
per-cell lock files (:mod:`benchmark.locks`); ``rrb results`` formats the store with
:mod:`benchmark.results_listing`.

Tamper evidence. ``MANIFEST.sha256`` at the top of the results directory holds the sha256 of every
cell, telemetry and audit file, one ``<hex>  <relative path>`` line each (the format of
``sha256sum``, so ``sha256sum -c MANIFEST.sha256`` checks it too), sorted. :func:`write_cell`
records a file's hash as it writes it: under the manifest's own lock file (``.manifest.lock``),
which it holds across writing the files and updating the manifest, so a reader that takes the lock
never sees a new file beside an old hash; the manifest itself is replaced atomically. Loading
checks every file against it: a file whose bytes differ ("tampered") is left out like a corrupt
one, and ``rrb run`` recomputes its cell; a file with no entry ("unrecorded", e.g. a store written
before manifests existed) is used and reported by ``rrb verify``, whose ``--record`` adopts it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_write, temp_prefix
from .errors import BenchmarkError
from .locks import lock_path, wait_for_lock  # noqa: F401 (lock_path: part of the store's layout)
from .schema import ALL_COLUMNS, COLUMN_DEFAULTS, QUERY_COLUMNS, TELEMETRY_COLUMNS, coerce_types

log = logging.getLogger(__name__)

# 2: rows carry preset_version and faithful, and a cell id hashes the implementation versions.
# 3: rows describe their metric (label, direction, decimals, meaning, attack hyper-parameters).
STORE_FORMAT = 3
MARKER_KEY = b"rrb.cell"
CELLS_DIR = "cells"
TELEMETRY_DIR = "telemetry"
AUDITS_DIR = "audits"  # attack-strength audits of cells (benchmark.cell_audit), keyed by audit id
QUERIES_DIR = "queries"  # per-query values of a cell's strong evaluation (schema.QUERY_COLUMNS)


MANIFEST_NAME = "MANIFEST.sha256"
MANIFEST_LOCK = ".manifest.lock"
STORE_FOLDERS = (CELLS_DIR, TELEMETRY_DIR, AUDITS_DIR, QUERIES_DIR)  # what the manifest covers (not checkpoints)


class CorruptCellWarning(UserWarning):
    """A cell file in the store could not be used; the cell is left out (and recomputed by ``rrb run``)."""


# ---------------------------------------------------------------------------------------------
# Paths and the results directory


def cell_path(results_dir: str | os.PathLike, dataset: str, cell_id: str) -> Path:
    return Path(results_dir) / CELLS_DIR / dataset / f"{cell_id}.parquet"


def audit_path(results_dir: str | os.PathLike, dataset: str, audit_id: str) -> Path:
    return Path(results_dir) / AUDITS_DIR / dataset / f"{audit_id}.parquet"


def telemetry_path(results_dir: str | os.PathLike, dataset: str, cell_id: str) -> Path:
    return Path(results_dir) / TELEMETRY_DIR / dataset / f"{cell_id}.parquet"


def queries_path(results_dir: str | os.PathLike, dataset: str, cell_id: str) -> Path:
    return Path(results_dir) / QUERIES_DIR / dataset / f"{cell_id}.parquet"




def check_results_dir(results_dir: str | os.PathLike, *, create: bool = True) -> Path:
    """Make sure results can be written there, before any work starts.

    Checks the permission bits (``os.access``) and then actually creates and removes a file,
    because the bits say nothing about a read-only mount or, for root, about anything.
    """
    path = Path(results_dir)
    if path.exists() and not path.is_dir():
        raise BenchmarkError(f"results path {str(path)!r} exists but is not a directory; "
                             "pass a directory (it is created when missing)")
    if not path.exists():
        if not create:
            raise BenchmarkError(f"results directory {str(path)!r} does not exist")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BenchmarkError(f"cannot create results directory {str(path)!r}: {exc.strerror or exc}; "
                                 "pass a writable directory with --results") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise BenchmarkError(f"results directory {str(path)!r} is not writable; "
                             "pass a writable directory with --results")
    try:
        fd, probe = tempfile.mkstemp(prefix=".rrb-write-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BenchmarkError(f"results directory {str(path)!r} is not writable ({exc.strerror or exc}); "
                             "pass a writable directory with --results") from None
    return path


def readable_results_dir(results_dir: str | os.PathLike) -> Path:
    """An existing results directory to read from (``rrb results``, ``rrb leaderboard``).

    Unlike :func:`check_results_dir` it asks for no write access: a published or read-only
    store can still be listed and rendered.
    """
    path = Path(results_dir)
    if not path.exists():
        raise BenchmarkError(f"results directory {str(path)!r} does not exist; pass the directory "
                             "`rrb run --results` wrote to")
    if not path.is_dir():
        raise BenchmarkError(f"results path {str(path)!r} is not a directory; pass the directory "
                             "`rrb run --results` wrote to")
    if not os.access(path, os.R_OK | os.X_OK):
        raise BenchmarkError(f"results directory {str(path)!r} is not readable")
    return path


# ---------------------------------------------------------------------------------------------
# Types


def empty_results() -> pd.DataFrame:
    return coerce_types(pd.DataFrame({c: pd.Series([], dtype="object") for c in ALL_COLUMNS}))


def _telemetry_types(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for column in frame.columns:
        if column in ("cell_id", "dataset", "defense", "entry", "preset"):
            frame[column] = frame[column].astype("string")
        elif column in ("seed", "step", "epoch"):
            frame[column] = frame[column].astype("int64")
        elif pd.api.types.is_numeric_dtype(frame[column]) and not pd.api.types.is_bool_dtype(frame[column]):
            frame[column] = frame[column].astype("float64")
    return frame


# ---------------------------------------------------------------------------------------------
# Writing


def _atomic_write_table(table: pa.Table, path: Path) -> None:
    """Write the Parquet file to a temp file beside ``path``, flush it to disk, then ``os.replace``."""
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def _remove_leftover_temps(path: Path) -> None:
    """Temp files of this cell left by a killed writer (only the lock holder calls this)."""
    for leftover in path.parent.glob(f"{temp_prefix(path)}*.tmp"):
        try:
            leftover.unlink()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# The manifest


def manifest_path(results_dir: str | os.PathLike) -> Path:
    return Path(results_dir) / MANIFEST_NAME


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _relative(results_dir: str | os.PathLike, path: str | os.PathLike) -> str:
    return Path(os.path.relpath(Path(path), Path(results_dir))).as_posix()


def read_manifest(results_dir: str | os.PathLike) -> dict[str, str]:
    """Relative path → sha256 hex, from ``MANIFEST.sha256`` (empty when there is none)."""
    path = manifest_path(results_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchmarkError(f"store manifest {path} cannot be read ({exc}); restore it (e.g. from git) or "
                             "rebuild it with `rrb verify --record`") from None
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not line.strip():
            continue
        if (not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not name
                or name.startswith("/") or ".." in Path(name).parts or Path(name).parts[0] not in STORE_FOLDERS):
            raise BenchmarkError(f"store manifest {path} line {number} is not '<sha256>  <cells|telemetry|audits/"
                                 f"...>': {line[:80]!r}; restore it (e.g. from git) or rebuild it with "
                                 "`rrb verify --record`")
        entries[name] = digest
    return entries


def _write_manifest(results_dir: str | os.PathLike, entries: dict[str, str]) -> None:
    text = "".join(f"{entries[name]}  {name}\n" for name in sorted(entries))

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(manifest_path(results_dir), write)


class manifest_lock:
    """Hold the manifest's lock file (short critical sections: writing files and their entries)."""

    def __init__(self, results_dir: str | os.PathLike) -> None:
        self.path = Path(results_dir) / MANIFEST_LOCK

    def __enter__(self) -> manifest_lock:
        self.lock = wait_for_lock(self.path)
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def record_files(results_dir: str | os.PathLike, paths: Iterable[str | os.PathLike] = (),
                 forget: Iterable[str] = ()) -> None:
    """Enter the current sha256 of ``paths`` in the manifest (and drop the relative paths ``forget``).
    The caller holds :class:`manifest_lock`."""
    entries = read_manifest(results_dir)
    for path in paths:
        entries[_relative(results_dir, path)] = sha256_file(path)
    for name in forget:
        entries.pop(name, None)
    _write_manifest(results_dir, entries)


def store_files(results_dir: str | os.PathLike) -> list[Path]:
    """Every file the manifest covers that exists: ``cells|telemetry|audits/<dataset>/*.parquet``."""
    root = Path(results_dir)
    return sorted(p for folder in STORE_FOLDERS for p in (root / folder).glob("*/*.parquet")
                  if not p.name.startswith("."))


def hash_problem(results_dir: str | os.PathLike, path: str | os.PathLike,
                 manifest: dict[str, str] | None = None) -> str | None:
    """Why ``path``'s bytes cannot be trusted ("tampered: ..."), or None when they match the manifest
    or have no entry in it (unrecorded)."""
    manifest = read_manifest(results_dir) if manifest is None else manifest
    expected = manifest.get(_relative(results_dir, path))
    if expected is None:
        return None
    try:
        actual = sha256_file(path)
    except FileNotFoundError:
        return "missing"
    if actual != expected:
        return (f"tampered: its sha256 {actual[:12]}... differs from the {expected[:12]}... recorded in "
                f"{MANIFEST_NAME} when rrb wrote it")
    return None


@dataclass
class StoreCheck:
    """What ``rrb verify`` found: files whose bytes differ from the manifest, entries without a file,
    files without an entry, and files that match."""

    tampered: list[str]
    missing: list[str]
    unrecorded: list[str]
    ok: list[str]

    @property
    def clean(self) -> bool:
        return not self.tampered and not self.missing


def check_store(results_dir: str | os.PathLike) -> StoreCheck:
    """Compare every store file with the manifest. When something differs, look again holding the
    manifest's lock (where the folder is writable), so a cell another process is writing right now
    is not taken for a tampered one."""
    result = _check_store(results_dir)
    if result.clean:
        return result
    try:
        with manifest_lock(results_dir):
            return _check_store(results_dir)
    except (OSError, BenchmarkError):  # a read-only store: the first look stands
        return result


def _check_store(results_dir: str | os.PathLike) -> StoreCheck:
    manifest = read_manifest(results_dir)
    found = {_relative(results_dir, p): p for p in store_files(results_dir)}
    tampered, ok, unrecorded = [], [], []
    for name, path in found.items():
        if name not in manifest:
            unrecorded.append(name)
        elif sha256_file(path) != manifest[name]:
            tampered.append(name)
        else:
            ok.append(name)
    missing = sorted(set(manifest) - set(found))
    return StoreCheck(sorted(tampered), missing, sorted(unrecorded), sorted(ok))


def require_untampered(results_dir: str | os.PathLike) -> None:
    """Refuse (one BenchmarkError) to build boards from a store whose files changed after rrb wrote them."""
    check = check_store(results_dir)
    if check.clean:
        return
    bad = [f"{n} (changed)" for n in check.tampered] + [f"{n} (missing)" for n in check.missing]
    shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    raise BenchmarkError(f"results {str(results_dir)!r} do not match their manifest {MANIFEST_NAME}: {shown}; "
                         f"boards are only rendered from an intact store: `rrb verify --results {results_dir}` "
                         "lists every file, `rrb run` recomputes changed cells")


def write_audit(results_dir: str | os.PathLike, rows: pd.DataFrame) -> Path:
    """Store one finished audit (rows of one cell, ``config_hash`` = the audit id) under ``audits/``."""
    return write_cell(results_dir, rows, None, audit=True)


def write_cell(results_dir: str | os.PathLike, rows: pd.DataFrame, telemetry: pd.DataFrame | None = None, *,
               audit: bool = False, queries: pd.DataFrame | None = None) -> Path:
    """Store one finished cell: its telemetry and per-query values, then its rows (the completion
    point). Returns the rows path.

    ``audit``: the rows are an audit of the cell: filed under ``audits/`` by their ``config_hash``.
    ``queries``: the per-query values of its strong evaluation (schema.QUERY_COLUMNS)."""
    missing = [c for c in ALL_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"cell rows lack schema columns: {missing}")
    if rows.empty:
        raise ValueError("a cell must have at least one row")
    cell_ids = rows["cell_id"].unique()
    datasets = rows["dataset"].unique()
    if len(cell_ids) != 1 or len(datasets) != 1:
        raise ValueError(f"rows of one cell must share cell_id and dataset, got {list(cell_ids)} / {list(datasets)}")
    cell_id, dataset = str(cell_ids[0]), str(datasets[0])
    rows = coerce_types(rows[ALL_COLUMNS].reset_index(drop=True))
    if audit:
        hashes = rows["config_hash"].unique()
        if len(hashes) != 1:
            raise ValueError(f"rows of one audit must share config_hash, got {list(hashes)}")
        cell_id = str(hashes[0])  # the file's key: the audit id
        path = audit_path(results_dir, dataset, cell_id)
    else:
        path = cell_path(results_dir, dataset, cell_id)
    _remove_leftover_temps(path)
    table = pa.Table.from_pandas(rows, preserve_index=False)
    marker = {"format": STORE_FORMAT, "cell_id": cell_id, "dataset": dataset, "rows": len(rows),
              "columns": len(ALL_COLUMNS)}
    metadata = dict(table.schema.metadata or {})
    metadata[MARKER_KEY] = json.dumps(marker, sort_keys=True).encode()
    table = table.replace_schema_metadata(metadata)
    if telemetry is not None:
        telemetry = _telemetry_types(telemetry.reset_index(drop=True))

    written = []
    with manifest_lock(results_dir):  # files and their hashes change together, for every reader
        if telemetry is not None:
            written.append(telemetry_path(results_dir, dataset, cell_id))
            _atomic_write_table(pa.Table.from_pandas(telemetry, preserve_index=False), written[-1])
        if queries is not None:
            if set(queries["cell_id"].unique()) != {cell_id} or list(queries.columns) != QUERY_COLUMNS:
                raise ValueError("per-query values must be one cell's, with schema.QUERY_COLUMNS")
            written.append(queries_path(results_dir, dataset, cell_id))
            _atomic_write_table(pa.Table.from_pandas(queries.reset_index(drop=True), preserve_index=False),
                                written[-1])
        _atomic_write_table(table, path)
        written.append(path)
        record_files(results_dir, written)
    return path


# ---------------------------------------------------------------------------------------------
# Reading and validating


@dataclass
class CellFile:
    """What reading one cell file found: its rows, or why it cannot be used."""

    path: Path
    rows: pd.DataFrame | None
    problem: str | None = None

    @property
    def valid(self) -> bool:
        return self.problem is None


def read_cell_file(path: str | os.PathLike) -> CellFile:
    """Read and verify one cell file; never raises for a damaged file (``problem`` says what is wrong)."""
    path = Path(path)
    cell_id = path.stem
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        return CellFile(path, None, "missing")
    except Exception as exc:  # truncated bytes, foreign file: all the same to the store
        return CellFile(path, None, f"not a readable Parquet file ({type(exc).__name__}: {exc})")
    raw = (table.schema.metadata or {}).get(MARKER_KEY)
    if raw is None:
        return CellFile(path, None, "no completeness marker (not written by the store)")
    try:
        marker = json.loads(raw)
    except ValueError:
        return CellFile(path, None, "unreadable completeness marker")
    if marker.get("format") != STORE_FORMAT:
        return CellFile(path, None, f"store format {marker.get('format')!r}, expected {STORE_FORMAT} "
                                    "(written by another rrb version; its cell is computed afresh)")
    if marker.get("cell_id") != cell_id:
        return CellFile(path, None, f"marker names cell {marker.get('cell_id')!r}, file name says {cell_id!r}")
    missing = [c for c in ALL_COLUMNS if c not in table.column_names and c not in COLUMN_DEFAULTS]
    if missing:
        return CellFile(path, None, f"missing columns {missing}")
    if table.num_rows == 0 or table.num_rows != marker.get("rows"):
        return CellFile(path, None, f"{table.num_rows} rows, marker says {marker.get('rows')}")
    try:
        frame = table.to_pandas()
        for column, default in COLUMN_DEFAULTS.items():  # a cell stored before the column existed
            if column not in frame.columns:
                frame[column] = default
        rows = coerce_types(frame[ALL_COLUMNS])
    except Exception as exc:
        return CellFile(path, None, f"columns of the wrong type ({type(exc).__name__}: {exc})")
    key = "config_hash" if path.parent.parent.name == AUDITS_DIR else "cell_id"
    if set(rows[key].unique()) != {cell_id}:
        return CellFile(path, None, "rows of another cell inside")
    return CellFile(path, rows)


def cell_files(results_dir: str | os.PathLike, dataset: str | None = None, *, folder: str = CELLS_DIR) -> list[Path]:
    root = Path(results_dir) / folder
    pattern = f"{dataset}/*.parquet" if dataset else "*/*.parquet"
    return sorted(p for p in root.glob(pattern) if not p.name.startswith("."))


def check_cell_file(results_dir: str | os.PathLike, path: str | os.PathLike,
                    manifest: dict[str, str] | None = None) -> CellFile:
    """:func:`read_cell_file` plus the manifest: a file (or, for a cell, its telemetry) whose bytes
    differ from the hash recorded when it was written is not valid ("tampered: ...")."""
    manifest = read_manifest(results_dir) if manifest is None else manifest
    cell = read_cell_file(path)
    if not cell.valid:
        return cell
    problem = hash_problem(results_dir, cell.path, manifest)
    if problem is None and cell.path.parent.parent.name == CELLS_DIR:
        telemetry = telemetry_path(results_dir, cell.path.parent.name, cell.path.stem)
        if telemetry.exists() or _relative(results_dir, telemetry) in manifest:
            problem = hash_problem(results_dir, telemetry, manifest)
            problem = problem and f"its telemetry file {telemetry.name} is {problem}"
    return CellFile(cell.path, None, problem) if problem else cell


def _report_corrupt(cell: CellFile) -> None:
    kind = "tampered" if cell.problem and "tampered" in cell.problem else "corrupt"
    message = f"skipping {kind} cell file {cell.path}: {cell.problem}"
    log.debug(message)  # the warning is the one report (a log line as well printed it twice)
    warnings.warn(message, CorruptCellWarning, stacklevel=3)


def load_results(results_dir: str | os.PathLike, dataset: str | None = None) -> pd.DataFrame:
    """The union of every valid cell file (and audit file), typed per schema.COLUMN_TYPES.

    Corrupt or partial files, and files whose bytes differ from the manifest, are left out with a
    CorruptCellWarning; a
    missing results directory is an empty store. Audit rows (``attack == "audit"``) carry the
    audited cell's ``cell_id``; an audit whose cell is not in the store is left out.
    """
    frames = []
    manifest = read_manifest(results_dir)
    for path in cell_files(results_dir, dataset):
        cell = check_cell_file(results_dir, path, manifest)
        if cell.valid:
            frames.append(cell.rows)
        else:
            _report_corrupt(cell)
    cell_ids = {str(f["cell_id"].iloc[0]) for f in frames}
    for path in cell_files(results_dir, dataset, folder=AUDITS_DIR):
        audit = check_cell_file(results_dir, path, manifest)
        if not audit.valid:
            _report_corrupt(audit)
        elif str(audit.rows["cell_id"].iloc[0]) in cell_ids:
            frames.append(audit.rows)
    if not frames:
        return empty_results()
    return coerce_types(pd.concat(frames, ignore_index=True))


def _companion_files(results_dir: str | os.PathLike, folder: str, dataset: str | None,
                     cell_ids: Iterable[str] | None) -> Iterator[Path]:
    """The files of ``folder`` (telemetry, per-query values) that belong to a cell whose rows landed."""
    wanted = set(cell_ids) if cell_ids is not None else None
    pattern = f"{dataset}/*.parquet" if dataset else "*/*.parquet"
    for path in sorted((Path(results_dir) / folder).glob(pattern)):
        if path.name.startswith(".") or (wanted is not None and path.stem not in wanted):
            continue
        if cell_path(results_dir, path.parent.name, path.stem).exists():
            yield path  # a file of a cell whose rows never landed is not part of the store


def _skip(message: str) -> None:
    log.debug(message)
    warnings.warn(message, CorruptCellWarning, stacklevel=3)


def load_telemetry(results_dir: str | os.PathLike, dataset: str | None = None,
                   cell_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """Per-step training telemetry of the finished cells (those with a valid rows file)."""
    frames = []
    for path in _companion_files(results_dir, TELEMETRY_DIR, dataset, cell_ids):
        try:
            frames.append(pq.read_table(path).to_pandas())
        except Exception as exc:
            _skip(f"skipping corrupt telemetry file {path}: {type(exc).__name__}: {exc}")
    if not frames:
        return pd.DataFrame({c: pd.Series([], dtype="object") for c in TELEMETRY_COLUMNS})
    return _telemetry_types(pd.concat(frames, ignore_index=True))


def read_queries(path: str | os.PathLike) -> tuple[pd.DataFrame | None, str | None]:
    """One cell's per-query values file: (frame, None), or (None, why it cannot be used: not
    readable, another layout, another cell's values)."""
    path = Path(path)
    try:
        frame = pq.read_table(path).to_pandas()
    except Exception as exc:
        return None, f"not a readable Parquet file ({type(exc).__name__}: {exc})"
    if list(frame.columns) != QUERY_COLUMNS or set(frame["cell_id"].astype(str).unique()) != {path.stem}:
        return None, "not the per-query values of this cell (schema.QUERY_COLUMNS)"
    return frame, None


def queries_problem(path: str | os.PathLike) -> str | None:
    """Why a per-query values file cannot be used (:func:`read_queries`), or None."""
    return read_queries(path)[1]


def load_queries(results_dir: str | os.PathLike, dataset: str | None = None,
                 cell_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """Per-query values (schema.QUERY_COLUMNS) of the finished cells with a strong evaluation. A
    file whose bytes differ from the manifest, or that cannot be read, is left out with a
    CorruptCellWarning (its cell's rank interval then uses the other seeds)."""
    manifest = read_manifest(results_dir)
    frames = []
    for path in _companion_files(results_dir, QUERIES_DIR, dataset, cell_ids):
        frame, problem = None, hash_problem(results_dir, path, manifest)
        if problem is None:
            frame, problem = read_queries(path)
        if problem is not None:
            _skip(f"skipping per-query values file {path}: {problem}")
        else:
            frames.append(frame)
    if not frames:
        return pd.DataFrame({c: pd.Series([], dtype="object") for c in QUERY_COLUMNS})
    return pd.concat(frames, ignore_index=True)
