"""The units of work every executor runs: claim, compute and store one cell, or one cell's audit.

A Dask worker runs exactly these functions, so they take plain arguments (a CellConfig, a results
directory, plugin file paths) and do their own loading, locking and writing.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import locks, store
from .cell import CellConfig, ResolvedCell, resolve, run_cell
from .errors import BenchmarkError
from .plugins import load_plugins


@dataclass
class CellResult:
    """What happened to one cell in one process."""

    cell_id: str  # the id of the file the task wrote: the cell id, or an audit's audit id
    dataset: str
    entry: str
    seed: int
    status: str  # "computed" | "skipped" (already valid) | "locked" (another process holds it)
    seconds: float = 0.0
    path: str = ""
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    lock_owner: str = ""


@dataclass
class PlannedCell:
    """One task of a matrix: a cell to compute, or (with ``audit_id``) a cell to audit."""

    config: CellConfig
    cell: ResolvedCell
    problem: str | None  # why an existing file is unusable; None when there is none
    audit_id: str | None = None  # set for an audit task: the id of the audit file it writes

    @property
    def cell_id(self) -> str:
        return self.cell.cell_id

    @property
    def key(self) -> str:
        """The id of the file this task writes (and locks): the audit id of an audit, else the cell id."""
        return self.audit_id or self.cell.cell_id

    @property
    def dataset(self) -> str:
        return self.cell.bundle.name


def run_and_store_cell(config: CellConfig, results_dir: str | os.PathLike, *, expected_key: str | None = None,
                       plugins: Sequence[str] = (), progress: bool = False, bundle: Any = None,
                       threads: int | None = None) -> CellResult:
    """Claim, run and store one cell; the task of every executor (a Dask worker runs exactly this).

    ``threads``: torch's CPU thread count while the cell runs (restored afterwards); ``None``
    keeps the process's. Returns status ``"locked"`` without doing anything when another live
    process holds the cell, and ``"skipped"`` when the cell turns out to be finished once its
    lock is held.
    """
    with _torch_threads(threads):
        start = time.perf_counter()
        load_plugins(plugins)
        cell = resolve(config, bundle=bundle)
        if expected_key is not None and cell.cell_id != expected_key:
            raise BenchmarkError(
                f"cell {cell.entry} seed {config.seed} on {cell.bundle.name} resolves to config hash "
                f"{cell.cell_id[:12]} here but {expected_key[:12]} where the matrix was built: the "
                "code or plugin files differ between the machines")
        path = store.cell_path(results_dir, cell.bundle.name, cell.cell_id)

        def compute() -> None:
            try:
                output = run_cell(config, results_dir, progress=progress, bundle=cell.bundle)
            except (BenchmarkError, KeyboardInterrupt):
                raise
            except Exception as exc:
                plugins_used = plugin_names(cell)
                if not plugins_used:
                    raise
                # Third-party code failing mid-run: one line naming it, not a traceback.
                raise BenchmarkError(f"{plugins_used} failed while cell {cell.entry} seed {config.seed} on "
                                     f"{cell.bundle.name} ran: {type(exc).__name__}: {exc}; cells finished before it "
                                     "are kept") from exc
            store.write_cell(results_dir, output.rows, output.telemetry, queries=output.queries)

        return _claim_and_store(results_dir, cell, cell.cell_id, path, compute, start)


def _claim_and_store(results_dir: str | os.PathLike, cell: ResolvedCell, key: str, path: Path,
                     compute: Callable[[], None], start: float) -> CellResult:
    """The one claim-and-store routine of every task: take the lock of ``key`` (a cell id or an audit
    id), skip when ``path`` became valid meanwhile, else ``compute()`` (which stores it)."""
    dataset = cell.bundle.name
    base = dict(cell_id=key, dataset=dataset, entry=cell.entry, seed=cell.config.seed, path=str(path))
    lock = locks.CellLock.acquire(results_dir, dataset, key)
    if lock is None:
        owner = locks.read_lock(store.lock_path(results_dir, dataset, key))
        return CellResult(**base, status="locked", lock_owner=owner.describe() if owner else "")
    with lock:
        # Another process may have finished it between our check and our lock.
        if store.check_cell_file(results_dir, path).valid:
            return CellResult(**base, status="skipped", seconds=time.perf_counter() - start)
        compute()
    return CellResult(**base, status="computed", seconds=time.perf_counter() - start)


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU thread count set to ``threads`` for the task (``None``: the process's), then restored."""
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def plugin_names(cell: ResolvedCell) -> str:
    """``plugin defense 'x'`` / ``plugin attack 'y'``: the third-party code a cell runs ('' for none)."""
    from .registry import ATTACKS

    names = [f"plugin defense {cell.defense_name!r}"] if cell.plugin_source else []
    names += [f"plugin attack {a!r}" for a in cell.attack_names if ATTACKS.get(a).is_plugin]
    return " or ".join(names)


def run_and_store_audit(config: CellConfig, results_dir: str | os.PathLike, *, spec: Any,
                        expected_key: str | None = None, plugins: Sequence[str] = (), progress: bool = False,
                        bundle: Any = None, threads: int | None = None) -> CellResult:
    """Claim, audit and store one finished cell (:mod:`benchmark.cell_audit`): the audit task of every executor.

    ``expected_key`` is the audit id planned by the matrix. Same statuses as
    :func:`run_and_store_cell`.
    """
    from .cell_audit import audit_cell, plan_audit

    with _torch_threads(threads):
        start = time.perf_counter()
        load_plugins(plugins)
        cell, _, audit_id = plan_audit(config, spec, bundle=bundle)
        if expected_key is not None and audit_id != expected_key:
            raise BenchmarkError(f"audit of {cell.entry} seed {config.seed} resolves to {audit_id[:12]} here but "
                                 f"{expected_key[:12]} where the matrix was built: the code differs")
        path = store.audit_path(results_dir, cell.bundle.name, audit_id)

        def compute() -> None:
            store.write_audit(results_dir, audit_cell(config, results_dir, spec, progress=progress, bundle=cell.bundle))

        return _claim_and_store(results_dir, cell, audit_id, path, compute, start)
