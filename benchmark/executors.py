"""Executors: how the cells of a matrix get run. An executor runs the task it is given for each
planned cell, :func:`benchmark.tasks.run_and_store_cell` (a cell) or
:func:`benchmark.tasks.run_and_store_audit` (its audit), and yields each result as it finishes.

* :class:`LocalExecutor` runs the cells one after another in this process.
* :class:`DaskExecutor` sends them to a ``dask.distributed`` cluster: a ``LocalCluster`` started
  here, or the scheduler at an address (e.g. one started by dask-jobqueue's ``SLURMCluster``).
  Workers write their cell files to the shared results directory themselves.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BenchmarkError

if TYPE_CHECKING:
    from .tasks import CellResult, PlannedCell

EXECUTORS = ("local", "dask")
# The task an executor runs: benchmark.tasks.run_and_store_cell or run_and_store_audit (passed in by
# the matrix, so that this module needs nothing of tasks but its types). Dask pickles it by reference.
Task = Callable[..., "CellResult"]


class LocalExecutor:
    """Cells one after another in this process."""

    name = "local"

    def __init__(self, task: Task, results_dir: Path, plugins: Sequence[str], progress: bool,
                 threads: int | None = None) -> None:
        self.task = task
        self.results_dir, self.plugins, self.progress, self.threads = results_dir, plugins, progress, threads

    def run(self, cells: Sequence[PlannedCell]) -> Iterator[CellResult]:
        for planned in cells:
            yield self.task(planned.config, self.results_dir, expected_key=planned.key,
                                     plugins=self.plugins, progress=self.progress, bundle=planned.cell.bundle,
                                     threads=self.threads)

    def close(self) -> None:
        pass


class DaskExecutor:
    """Cells as tasks on a dask.distributed cluster; workers write their own cell files."""

    name = "dask"

    def __init__(self, task: Task, results_dir: Path, plugins: Sequence[str], scheduler: str | None,
                 workers: int | None,
                 threads: int | None = None) -> None:
        try:
            from distributed import Client
        except ImportError:
            raise BenchmarkError("executor 'dask' needs dask.distributed: pip install 'dask[distributed]'") from None
        self.task = task
        self.results_dir, self.plugins = results_dir, plugins
        # One torch thread per task unless told otherwise: several workers on one machine must not
        # oversubscribe its cores.
        self.threads = threads or 1
        self.cluster = None
        if scheduler:
            try:
                self.client = Client(scheduler, timeout=30)
            except OSError as exc:
                raise BenchmarkError(f"cannot reach the Dask scheduler at {scheduler!r}: {exc}; "
                                     "give its address as tcp://HOST:PORT") from None
        else:
            if workers is not None and workers < 1:
                raise BenchmarkError(f"workers must be at least 1, got {workers}")
            self.cluster = _start_local_cluster(workers or 2, self.threads)
            self.client = Client(self.cluster)
        self._submitted = 0

    def run(self, cells: Sequence[PlannedCell]) -> Iterator[CellResult]:
        from distributed import as_completed

        futures = []
        for planned in cells:
            self._submitted += 1
            futures.append(self.client.submit(
                self.task, planned.config, str(self.results_dir), expected_key=planned.key,
                plugins=self.plugins, progress=False, threads=self.threads, pure=False,
                key=f"rrb-cell-{planned.key[:16]}-{self._submitted}"))
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                if not future.done():
                    future.cancel()

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            with _environ_kept():
                self.cluster.close()


def _start_local_cluster(workers: int, threads: int) -> Any:
    """A LocalCluster whose workers run torch at full speed, leaving this process's environment alone.

    Dask's nannies export ``MALLOC_TRIM_THRESHOLD_=65536`` to their workers so that freed memory
    goes back to the system at once. Training allocates and frees large tensors every step, so
    with it every step pays page faults and trims again: a smoke cell ran 1.7x slower, most of it
    system time. The workers here drop it and set the OpenMP/BLAS thread counts to ``threads``.
    The nannies live in this process and write those variables into ``os.environ`` before
    spawning; they are put back, so processes this one starts later do not inherit them.
    """
    import dask
    from distributed import LocalCluster

    environ = {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
               "OPENBLAS_NUM_THREADS": threads}
    with _environ_kept(), dask.config.set({f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in environ.items()}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)


class _environ_kept:
    """Restore ``os.environ`` on exit to what it was on entry (only the keys that changed)."""

    def __enter__(self) -> None:
        self.saved = dict(os.environ)

    def __exit__(self, *exc: object) -> None:
        for key in set(os.environ) - set(self.saved):
            del os.environ[key]
        for key, value in self.saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value

