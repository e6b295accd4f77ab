"""The matrix runner (SPEC §9): datasets × defenses × seeds as independent cells, and their executors.

``run_matrix`` builds one :class:`~benchmark.cell.CellConfig` per cell, skips the cells whose
results file is already valid, and hands the rest to an executor. Every executor calls the same
function, :func:`run_and_store_cell`: claim the cell's lock, run it, write its file, release.

* ``executor="local"`` runs the cells one after another in this process, with an overall
  progress bar over cells and the cell's own bars (training, attacks) inside it.
* ``executor="dask"`` sends the cells to a ``dask.distributed`` cluster. Without a scheduler
  address it starts a ``LocalCluster`` (``workers`` processes, one thread each); with one it
  connects to that scheduler. Workers write their cell files to the shared results directory
  themselves, load the ``plugins`` files themselves, and run torch with one thread each (or
  ``threads``) so that several workers on one machine do not oversubscribe its cores.

Thread count and reproducibility. On CPU a cell's numbers depend on torch's thread count: the
convolutions and matrix products split their sums across threads, so another count adds in
another order and training drifts apart in the last bits, then further (a digits smoke cell
trained with 1 and with 2 threads differs in R@1). Every seed is fixed, so a cell is
reproduced exactly by running it with the same thread count on the same hardware, whatever the
executor: pass the same ``threads`` (``rrb run --threads``) to compare runs bit for bit. The
count is part of a CPU cell's id (``CellConfig.threads``; ``cpu_threads`` in its training
payload), so a run with another count makes new cells instead of reusing numbers it would not
reproduce; it is also recorded in the ``device_name`` column of every row.

On an HPC cluster, start the workers through dask-jobqueue (``pip install dask-jobqueue``) and
pass the scheduler's address; the results directory (and ``data_root``) must be on a file
system every node sees, under the same path::

    from dask_jobqueue import SLURMCluster
    from benchmark.matrix import run_matrix

    cluster = SLURMCluster(cores=4, processes=1, memory="16GB", walltime="04:00:00",
                           job_extra_directives=["--gres=gpu:1"])
    cluster.scale(jobs=8)  # eight SLURM jobs, one worker each
    run_matrix(["cub"], ["nt", "act", "colo-tride"], [0, 1, 2], preset="paper",
               executor="dask", scheduler=cluster.scheduler_address,
               results_dir="/shared/rrb-results", data_root="/shared/data")

(or ``rrb run ... --executor dask --scheduler tcp://host:8786`` against a scheduler started by
hand or by ``SLURMCluster``). Workers started that way get Dask's default
``MALLOC_TRIM_THRESHOLD_=65536``, which slows CPU training (see ``_start_local_cluster``); set
``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_`` to ``null`` in their Dask config.

Resume and concurrency. A cell is done when its rows file is valid (see :mod:`benchmark.store`),
so re-running an interrupted command computes only the missing cells; a corrupt file is reported
on one line and its cell recomputed. Two processes on one results directory share the work through
per-cell lock files: a process skips a cell another live process is computing and, after its own
cells, *waits* for those locked cells: each ends either finished by the other process (counted as
``by_other``) or, when the other process died (its lock is stale or gone), computed here. A lock
held by a process on another host that died cannot be told from a slow one: delete its
``cells/<dataset>/<cell_id>.lock`` by hand (the waiting message names it).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from . import locks, store
from .cell import CellConfig, resolve
from .errors import BenchmarkError
from .executors import EXECUTORS, DaskExecutor, LocalExecutor
from .plugins import load_builtins, load_plugins
from .registry import DEFENSES
from .tasks import CellResult, PlannedCell, run_and_store_audit, run_and_store_cell

MAX_SEED = 2**32 - 1  # what every seeded generator (numpy's included) accepts as it is
LOCK_POLL_S = 2.0  # how often a process waiting for cells locked by another process looks again

# The default matrix: every built-in defense of SPEC §6, baselines first, then the seed paper's
# method, the released-code variant, GA and the seed paper's ablations (Table 3: COLO with one
# phase, and the naive variants without COLO). ``hm-noics`` (HM without its ICS term) is
# registered for reproducing the reference runs but is not a leaderboard entry.
DEFAULT_DEFENSE_ORDER = ("nt", "est", "act", "hm", "colo-tride", "ca-tride", "ga",
                         "naive-tride", "colo-cap", "colo-anp", "naive-cap", "naive-anp", "naive-at")
NOT_IN_DEFAULT_MATRIX = ("hm-noics",)


def builtin_defense_names() -> list[str]:
    """Every built-in defense of the default matrix, canonical names, in leaderboard order.

    Built-ins not named in DEFAULT_DEFENSE_ORDER (a defense added later) follow in registry order,
    so a new built-in joins the default matrix without an edit here.
    """
    load_builtins()
    builtin = [e.name for e in DEFENSES.entries() if not e.is_plugin and e.name not in NOT_IN_DEFAULT_MATRIX]
    ordered = [name for name in DEFAULT_DEFENSE_ORDER if name in builtin]
    return ordered + [name for name in builtin if name not in ordered]


# ---------------------------------------------------------------------------------------------
# Records


@dataclass
class MatrixSummary:
    """Counts of one ``run_matrix`` call; ``total == skipped + computed + by_other``."""

    total: int
    skipped: int  # valid before this run started
    computed: int  # run here (includes recomputed_corrupt)
    recomputed_corrupt: int  # of computed: the file existed but was corrupt
    by_other: int  # finished meanwhile by another process sharing the results directory
    wall_seconds: float
    results_dir: str
    executor: str
    cells: list[CellResult] = field(default_factory=list)
    cell_ids: list[str] = field(default_factory=list)  # every cell of the matrix, done before or now
    audits: int = 0  # with --audit: audits of the matrix's cells, already done and computed now
    audits_skipped: int = 0
    audits_computed: int = 0
    audit_seconds: float = 0.0

    def describe(self) -> str:
        parts = [f"{self.skipped} already done", f"{self.computed} computed"]
        if self.recomputed_corrupt:
            parts[-1] += f" ({self.recomputed_corrupt} of them replacing a corrupt file)"
        if self.by_other:
            parts.append(f"{self.by_other} finished by another process")
        audits = (f"; {self.audits} audits: {self.audits_skipped} already done, {self.audits_computed} computed "
                  f"in {self.audit_seconds:.1f} s") if self.audits else ""
        return (f"{self.total} cells: " + ", ".join(parts) + audits
                + f"; {self.wall_seconds:.1f} s ({self.executor}); results in {self.results_dir}")


@dataclass(frozen=True)
class MatrixOptions:
    """Everything about a matrix run besides its datasets, defenses and seeds: one object that
    :func:`run_matrix` hands down to planning, the executors and the audits, that the CLI builds
    from its options and that a plugin run sends to its child process (:meth:`to_json`).

    A new option is one field here with its default; ``rrb`` passes it on from the command line
    where it adds it (``cli._matrix_options``), and the child process of a plugin run gets it with
    the others.
    """

    preset: str = "quick"
    profile: str = "auto"
    results_dir: str | os.PathLike = "results"
    executor: str = "local"
    scheduler: str | None = None  # Dask scheduler address; None: a LocalCluster (executor "dask")
    workers: int | None = None  # LocalCluster worker processes
    data_root: str | None = None
    device: str | None = None
    # {defense: {parameter: value}}, e.g. {"ga": {"gamma": 0.05}}
    defense_params: Mapping[str, Mapping[str, Any]] | None = None
    plugins: Sequence[str | os.PathLike] = ()  # plugin files the cells need (loaded by every worker)
    progress: bool = True
    attacks: Sequence[str] | None = None  # None: the whole built-in suite
    threads: int | None = None  # torch CPU threads per cell (see the module docstring)
    audit: Any = None  # an attacks.audit.AuditSpec: audit every cell of the matrix afterwards
    precision: str = "float32"  # benchmark.precision: the forward pass of every cell (part of its id)
    strong: bool = True  # the strong evaluation (benchmark.strong_eval) in every cell (part of its id)

    def to_json(self) -> dict[str, Any]:
        """The options as JSON-ready values (the audit spec as a dict)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(results_dir=str(self.results_dir), plugins=[str(p) for p in self.plugins],
                   attacks=list(self.attacks) if self.attacks is not None else None,
                   defense_params={k: dict(v) for k, v in (self.defense_params or {}).items()},
                   audit=None if self.audit is None else asdict(self.audit))
        return out

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> MatrixOptions:
        """Inverse of :meth:`to_json`."""
        values = dict(values)
        values["plugins"] = tuple(values.get("plugins", ()))
        if values.get("attacks") is not None:
            values["attacks"] = tuple(values["attacks"])
        if values.get("audit") is not None:
            from attacks.audit import AuditSpec

            values["audit"] = AuditSpec(**values["audit"])
        return cls(**values)


# ---------------------------------------------------------------------------------------------
# Building the matrix


def _seed_list(seeds: Iterable[int]) -> list[int]:
    out = []
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise BenchmarkError(f"seeds must be non-negative integers, 0 to {MAX_SEED}, got {seed!r}")
        if seed not in out:
            out.append(seed)
    if not out:
        raise BenchmarkError("the matrix needs at least one seed")
    return out


def _params_by_defense(defenses: Sequence[str],
                       defense_params: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    canonical = [DEFENSES.canonical(d) for d in defenses]
    out: dict[str, dict[str, Any]] = {}
    for name, params in (defense_params or {}).items():
        key = DEFENSES.canonical(name)
        if key not in canonical:
            raise BenchmarkError(f"defense parameters given for {name!r}, which is not in the matrix "
                                 f"(defenses: {', '.join(canonical)})")
        out[key] = dict(params)
    return out


def build_matrix(datasets: Sequence[str], defenses: Sequence[str] | None, seeds: Iterable[int], *,
                 preset: str = "quick", profile: str = "auto", data_root: str | None = None,
                 device: str | None = None,
                 defense_params: Mapping[str, Mapping[str, Any]] | None = None,
                 attacks: Sequence[str] | None = None) -> list[CellConfig]:
    """One CellConfig per (dataset, seed, defense), in that nesting order.

    Seeds are the middle loop so an interrupted run already holds every defense at the first seed.
    ``defense_params`` maps a defense name to its parameter overrides (e.g.
    ``{"ga": {"gamma": 0.05}}``); ``defenses=None`` means :func:`builtin_defense_names`.
    """
    load_builtins()
    if not datasets:
        raise BenchmarkError("the matrix needs at least one dataset")
    defenses = list(defenses) if defenses else builtin_defense_names()
    params = _params_by_defense(defenses, defense_params)
    seed_list = _seed_list(seeds)
    root = str(Path(data_root).expanduser().resolve()) if data_root else None
    configs = []
    for dataset in datasets:
        for seed in seed_list:
            for defense in defenses:
                config = CellConfig(dataset=dataset, defense=defense, seed=seed, preset=preset, profile=profile,
                                    attacks=tuple(attacks) if attacks else None, data_root=root, device=device)
                chosen = params.get(DEFENSES.canonical(defense))
                configs.append(config.with_params(chosen) if chosen else config)
    return configs


def plan_cells(configs: Sequence[CellConfig], results_dir: Path) -> list[PlannedCell]:
    """Resolve every config (validating every name before any work) and check its existing file.

    Each dataset is loaded once; cells that resolve to the same cell_id (a name and its alias)
    are kept once.
    """
    bundles: dict[tuple[str, str | None], Any] = {}
    manifest = store.read_manifest(results_dir)
    planned: list[PlannedCell] = []
    seen: set[str] = set()
    for config in configs:
        key = (config.dataset, config.data_root)
        cell = resolve(config, bundle=bundles.get(key))
        bundles[key] = cell.bundle
        if cell.cell_id in seen:
            continue
        seen.add(cell.cell_id)
        path = store.cell_path(results_dir, cell.bundle.name, cell.cell_id)
        problem = store.check_cell_file(results_dir, path, manifest).problem if path.exists() else "missing"
        planned.append(PlannedCell(config, cell, problem))
    return planned


def run_audits(planned: Sequence[PlannedCell], results: Path, options: MatrixOptions) -> tuple[int, int, int, float]:
    """Audit (``options.audit``) every cell of the matrix that has no audit yet: natural training
    first (the other audits' transfer surrogate). Returns (audits, already done, computed, seconds)."""
    from .cell_audit import plan_audit
    from .registry import ATTACKS
    from .robustness_scores import ERS_KEYS

    spec = options.audit
    start = time.perf_counter()

    def whole_suite(p: PlannedCell) -> bool:
        return set(ERS_KEYS) <= {m for a in p.cell.attack_names for m in ATTACKS.create(a).metrics}

    partial = [p for p in planned if not whole_suite(p)]
    if partial:
        _say(f"rrb: the audit needs the whole ERS suite; {len(partial)} cell(s) run with fewer attacks are not "
             "audited", None)
    manifest = store.read_manifest(results)
    ordered = sorted((p for p in planned if whole_suite(p)),
                     key=lambda p: (p.dataset, p.config.seed, p.cell.defense_name != "nt"))
    todo = []
    for p in ordered:
        _, _, audit_id = plan_audit(p.config, spec, bundle=p.cell.bundle)
        if not store.check_cell_file(results, store.audit_path(results, p.dataset, audit_id), manifest).valid:
            todo.append(PlannedCell(p.config, p.cell, "missing", audit_id=audit_id))
    task = functools.partial(run_and_store_audit, spec=spec)
    runner: LocalExecutor | DaskExecutor | None = None
    computed = 0
    try:
        if todo:
            runner = _executor(task, results, options)
            for result in runner.run(todo):
                computed += result.status == "computed"
                if result.status == "locked":
                    _say(f"rrb: audit of {result.entry} seed {result.seed} is being computed by {result.lock_owner}; "
                         "skipped here", None)
    finally:
        if runner is not None:
            runner.close()
    return len(ordered), len(ordered) - len(todo), computed, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# The matrix


def _say(message: str, progress_bar: Any) -> None:
    if progress_bar is not None:
        progress_bar.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr)


def run_matrix(datasets: Sequence[str], defenses: Sequence[str] | None, seeds: Iterable[int],
               options: MatrixOptions | None = None, **settings: Any) -> MatrixSummary:
    """Run every missing cell of datasets × defenses × seeds and store each cell's rows.

    ``options`` (:class:`MatrixOptions`; its defaults when ``None``), with any of its fields
    overridden by keyword (``run_matrix(["digits"], ["nt"], [0], preset="smoke")``). With
    ``audit`` (an :class:`attacks.audit.AuditSpec`), every cell of the matrix is then audited
    (strong evaluation and sanity checks, :mod:`benchmark.cell_audit`), each audit stored once and
    resumable like a cell.

    Checks the results directory, loads the plugins and resolves every cell before any work, so a
    bad name or path fails at once with a BenchmarkError. ``threads`` is torch's CPU thread count
    for each cell (default: this process's for ``local``, 1 for ``dask``); see the module
    docstring for why it matters, and for resume, locking and the Dask executor.
    """
    try:
        options = replace(options or MatrixOptions(), **settings)
    except TypeError as exc:
        raise TypeError(f"run_matrix: {exc} (options are the fields of MatrixOptions)") from None
    start = time.perf_counter()
    if options.executor not in EXECUTORS:
        raise BenchmarkError(f"unknown executor {options.executor!r}; accepted: {', '.join(EXECUTORS)}")
    threads = options.threads
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise BenchmarkError(f"threads must be a positive integer, got {threads!r}")
    options = replace(options, plugins=tuple(str(Path(p).expanduser().resolve()) for p in options.plugins))
    load_plugins(options.plugins)
    configs = build_matrix(datasets, defenses, seeds, preset=options.preset, profile=options.profile,
                           data_root=options.data_root, device=options.device,
                           defense_params=options.defense_params, attacks=options.attacks)
    # The thread count each cell runs with is part of a CPU cell's id (benchmark.cell): plan with it.
    import torch

    cell_threads = threads if threads is not None else (1 if options.executor == "dask" else torch.get_num_threads())
    configs = [replace(c, threads=cell_threads, precision=options.precision, strong=options.strong) for c in configs]
    # Every plugin defense and attack of the matrix is validated (one training step, a tiny attack)
    # before any work, as rrb submit does.
    from .validation import check_plugins_in_use

    check_plugins_in_use([c.defense for c in configs], [a for c in configs for a in (c.attacks or ())],
                         seed=configs[0].seed if configs else 0)
    # Names are checked before the results directory is created: a typo leaves no empty folder behind.
    results = store.check_results_dir(options.results_dir).resolve()
    planned = plan_cells(configs, results)
    todo = [p for p in planned if p.problem is not None]
    corrupt = {p.cell_id for p in todo if p.problem != "missing"}

    from tqdm.auto import tqdm

    bar = tqdm(total=len(planned), desc="matrix", unit="cell", disable=not options.progress, position=0,
               dynamic_ncols=True) if options.progress else None
    summary = MatrixSummary(total=len(planned), skipped=len(planned) - len(todo), computed=0,
                            recomputed_corrupt=0, by_other=0, wall_seconds=0.0, results_dir=str(results),
                            executor=options.executor, cell_ids=[p.cell_id for p in planned])
    for p in todo:
        if p.cell_id in corrupt:
            kind = "tampered" if p.problem.startswith(("tampered", "its telemetry")) else "corrupt"
            _say(f"rrb: {kind} cell file {store.cell_path(results, p.dataset, p.cell_id)} ({p.problem}); "
                 f"recomputing {p.cell.entry} seed {p.config.seed} on {p.dataset}", bar)
    if bar is not None:
        bar.update(summary.skipped)

    runner: LocalExecutor | DaskExecutor | None = None
    by_id = {p.cell_id: p for p in planned}
    waiting: dict[str, CellResult] = {}

    def account(result: CellResult) -> None:
        if result.status == "locked":
            waiting[result.cell_id] = result
            return
        waiting.pop(result.cell_id, None)
        summary.cells.append(result)
        if result.status == "computed":
            summary.computed += 1
            summary.recomputed_corrupt += result.cell_id in corrupt
        else:  # finished by another process after this run's plan was made
            summary.by_other += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(computed=summary.computed, waiting=len(waiting), refresh=False)

    try:
        if not todo:  # all done: no cluster to start
            return _finish(summary, start, planned, results, options)
        runner = _executor(run_and_store_cell, results, options)
        for result in runner.run(todo):
            account(result)
        if waiting:
            holders = "; ".join(f"{r.entry} seed {r.seed} ({r.lock_owner}, "
                                f"{store.lock_path(results, r.dataset, r.cell_id)})" for r in waiting.values())
            _say(f"rrb: waiting for {len(waiting)} cell(s) another process is computing: {holders}", bar)
        while waiting:
            time.sleep(LOCK_POLL_S)
            retry = []
            for cell_id, result in list(waiting.items()):
                path = store.cell_path(results, result.dataset, cell_id)
                if store.check_cell_file(results, path).valid:
                    account(replace(result, status="skipped", seconds=0.0))
                elif _lock_released(results, result):
                    retry.append(by_id[cell_id])
            for result in runner.run(retry):
                account(result)
    finally:
        if runner is not None:
            runner.close()
        if bar is not None:
            bar.close()
    return _finish(summary, start, planned, results, options)


def _executor(task: Any, results: Path, options: MatrixOptions) -> LocalExecutor | DaskExecutor:
    """The executor ``options`` asks for, running ``task`` (a cell or an audit) on ``results``."""
    if options.executor == "dask":
        return DaskExecutor(task, results, options.plugins, options.scheduler, options.workers, options.threads)
    return LocalExecutor(task, results, options.plugins, options.progress, options.threads)


def _finish(summary: MatrixSummary, start: float, planned: Sequence[PlannedCell], results: Path,
            options: MatrixOptions) -> MatrixSummary:
    if options.audit is not None:
        audits = run_audits(planned, results, options)
        summary.audits, summary.audits_skipped, summary.audits_computed, summary.audit_seconds = audits
    summary.wall_seconds = time.perf_counter() - start
    return summary


def _lock_released(results: Path, result: CellResult) -> bool:
    """True when the lock is gone, or stale as far as this host can tell (the task breaks it)."""
    path = store.lock_path(results, result.dataset, result.cell_id)
    owner = locks.read_lock(path)
    return owner is None or locks.lock_is_stale(path, owner)
