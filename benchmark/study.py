"""The convergence study of one stored cell: ERS as a function of the attack budget.

For every attack of the cell's suite, on the cell's queries with the cell's selections (the one
attack loop, :func:`attacks.runner.attack_queries`), it records per query the value of

* ``fixed``: one fixed-step PGD run (the profile's ε and α, zero start) of the largest budget;
  with a fixed step the first k steps of a long run ARE the k-step run, so one run gives the
  whole curve at every budget of ``budgets``;
* ``restart:1`` … ``restart:R``: the same from a uniform random start in the ε-ball (one long
  run each, recorded the same way);
* ``apgd:K``: the APGD schedule (:func:`benchmark.pgd.apgd`) with budget K, one run per budget
  (its step-halving checkpoints are fractions of the budget, so its first k steps are not the
  k-step run).

At each budget two values per query are kept: ``last``, the iterate of that step (what the
RobRank protocol reads at 32 steps), and ``best``, the best iterate: the value most favourable to
the attacker over every point the run visited, the start included. Rows are stored per attack in
``studies/<dataset>/<study_id>/<attack>.parquet`` beside the cells (``study_id``: a hash of the
cell id and the study spec), so an interrupted study resumes at the attack it stopped at; a study
is claimed with a lock file like a cell. :func:`study_curves` turns the rows into ERS per run and
budget (best and last iterate, and the worst case over the fixed run and its first r restarts).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from . import locks, store
from .atomic import atomic_write
from .cell import CellConfig, cell_runtime, resolve, train_or_load
from .checkpoints import check_weights, stored_weights, weights_sha256
from .errors import BenchmarkError
from .presets import AttackProfile
from .registry import ATTACKS
from .robustness_scores import ers, ers_robrank

STUDIES_DIR = "studies"
COLUMNS = ["dataset", "cell_id", "study_id", "entry", "seed", "attack", "run", "method", "budget", "query",
           "metric", "direction", "best", "last", "weights"]
# Studies stored before the studied model's weights digest was recorded (``weights`` then reads as
# missing; ``tools/backfill_study_weights.py`` attributes them to the stored cell they reproduce).
LEGACY_COLUMNS = COLUMNS[:-1]


@dataclass(frozen=True)
class StudySpec:
    """What a study runs (part of its id).

    ``budgets``: the step counts the fixed-step run records (its longest is the run's length).
    ``restarts`` runs from a uniform random start, each ``restart_budget`` steps long (None: the
    longest budget) and recorded at the budgets up to it: restarts only need more than one where
    the first moves anything. ``apgd_budgets``: one APGD-schedule run per budget (its step-halving
    checkpoints are fractions of the budget, so each budget is its own run); empty: none.
    The default (version 4) is sized so that both reference boards' seed-0 cells are studied within
    about 8 hours on 2 CPU cores: 23× the standard suite's PGD steps per cell (256 fixed, one
    32-step restart, 64 + 128 + 256 APGD). Version 3 had no 128-step APGD run; on the seven digits
    entries it studied, APGD 64 left gaps up to 1.5 ERS points and APGD 256 (9× the standard run)
    was the cheapest qualifying member, so the budget between them is measured. Where an entry's
    fixed-step ERS still moves by more than 0.5 from 128 to 256 steps, study it again with
    ``budgets`` up to 512.
    """

    budgets: tuple[int, ...] = (32, 64, 128, 256)
    restarts: int = 1
    restart_budget: int | None = 32
    apgd_budgets: tuple[int, ...] = (64, 128, 256)
    version: int = 4

    def __post_init__(self) -> None:
        for name in ("budgets", "apgd_budgets"):
            values = tuple(getattr(self, name))
            if (not values and name == "budgets") or any(isinstance(b, bool) or not isinstance(b, int) or b < 1
                                                         for b in values) or list(values) != sorted(set(values)):
                raise BenchmarkError(f"study {name.replace('_', ' ')} must be increasing positive step counts, "
                                     f"got {getattr(self, name)!r}")
            object.__setattr__(self, name, values)
        if isinstance(self.restarts, bool) or not isinstance(self.restarts, int) or self.restarts < 0:
            raise BenchmarkError(f"study restarts must be an integer ≥ 0, got {self.restarts!r}")
        budget = self.restart_budget
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)
                                   or not 1 <= budget <= self.budgets[-1]):
            raise BenchmarkError(f"study restart budget must be a step count from 1 to {self.budgets[-1]} "
                                 f"(the longest budget), got {budget!r}")

    @property
    def restart_steps(self) -> int:
        return self.budgets[-1] if self.restart_budget is None else self.restart_budget

    @property
    def steps(self) -> int:
        """PGD steps per attack and query batch: the cost, in standard-run steps times 32."""
        return self.budgets[-1] + self.restarts * self.restart_steps + sum(self.apgd_budgets)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "budgets": list(self.budgets), "apgd_budgets": list(self.apgd_budgets)}


def study_id(cell_id: str, spec: StudySpec, weights: str | None = None) -> str:
    """The study's key: ``cell_id`` is the cell's standard id (``ResolvedCell.standard_id``: training,
    profile and suite, not the strong evaluation's version, which does not change what a study measures)
    and ``weights`` the studied model's weights digest: one cell id can name models with other weights
    (trained on CPUs of another vendor, README: The results store), and each is its own study.
    ``None`` (a cell stored without a digest) gives the key studies had before digests were recorded."""
    payload = {"cell_id": cell_id, "study": spec.to_dict()}
    return weighted_study_id(hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest(), weights)


def weighted_study_id(legacy_id: str, weights: str | None) -> str:
    """The key of the study ``legacy_id`` (the key without weights) of the model ``weights``."""
    return legacy_id if weights is None else hashlib.sha256(f"{legacy_id}|{weights}".encode()).hexdigest()


def study_dir(results_dir: str | os.PathLike, dataset: str, identity: str) -> Path:
    return Path(results_dir) / STUDIES_DIR / dataset / identity


def study_runs(profile: AttackProfile, spec: StudySpec) -> tuple:
    """The runs of one study at ``profile``'s ε and α, in the order each batch makes them."""
    from attacks.runner import Run

    longest = profile.pgd_config(steps=spec.budgets[-1])
    runs = [Run("fixed", longest, record=spec.budgets)]
    restart = replace(profile.pgd_config(steps=spec.restart_steps), random_start=True)
    runs += [Run(f"restart:{i + 1}", restart, stream="study-restarts",
                 record=tuple(k for k in spec.budgets if k <= spec.restart_steps) or (spec.restart_steps,))
             for i in range(spec.restarts)]
    runs += [Run(f"apgd:{k}", profile.pgd_config(steps=k), method="apgd", record=(k,)) for k in spec.apgd_budgets]
    return tuple(runs)


def _attack_file(directory: Path, attack: str) -> Path:
    safe = "".join(c if c.isalnum() else f"_{ord(c):x}" for c in attack)
    return directory / f"{safe}.parquet"


def _read(path: Path) -> pd.DataFrame | None:
    try:
        frame = pd.read_parquet(path)
    except Exception:  # missing or truncated: the attack is recomputed
        return None
    if list(frame.columns) == LEGACY_COLUMNS:
        frame = frame.assign(weights=pd.Series(pd.NA, index=frame.index, dtype="string"))
    return frame if list(frame.columns) == COLUMNS and len(frame) else None


def run_study(config: CellConfig, results_dir: str | os.PathLike, spec: StudySpec, *, progress: bool = True,
              bundle: Any = None) -> pd.DataFrame:
    """Study one stored cell (see the module docstring); returns all its rows, computing only the
    attacks not stored yet. Raises when another live process holds the study's lock."""
    from attacks.runner import attack_queries

    results_dir = Path(results_dir)
    cell = resolve(config, bundle=bundle)
    # The stored cell of this model: with the strong evaluation, or one stored without it.
    for cell_id in dict.fromkeys((cell.cell_id, cell.standard_id)):
        standard = store.read_cell_file(store.cell_path(results_dir, cell.bundle.name, cell_id))
        if standard.valid:
            break
    else:
        raise BenchmarkError(f"cannot study {cell.entry} seed {cell.config.seed} on {cell.bundle.name}: its cell is "
                             f"not in {results_dir} ({standard.problem}); run it first with `rrb run`")
    attack_objs = [ATTACKS.create(name) for name in cell.attack_names if not ATTACKS.get(name).is_plugin]
    weights = stored_weights(standard.rows)  # the model the stored cell evaluated

    def stored(digest: str | None) -> tuple[str, Path, dict, list]:
        identity = study_id(cell.standard_id, spec, digest)
        directory = study_dir(results_dir, cell.bundle.name, identity)
        frames = {a.name: _read(_attack_file(directory, a.name)) for a in attack_objs}
        return identity, directory, frames, [a for a in attack_objs if frames[a.name] is None]

    identity, directory, frames, todo = stored(weights)
    if todo:
        trained = train_or_load(cell, results_dir, progress=progress)
        if not check_weights(trained, standard.rows, f"study of {cell.entry} seed {cell.config.seed} on "
                                                     f"{cell.bundle.name}"):
            weights = weights_sha256(trained.model)  # another model: studied as what it is, under its own key
            identity, directory, frames, todo = stored(weights)
        elif weights is None:
            weights = weights_sha256(trained.model)
    if todo:
        lock = locks.CellLock.acquire_path(directory.with_suffix(".lock"))
        if lock is None:
            raise BenchmarkError(f"the study of {cell.entry} seed {cell.config.seed} on {cell.bundle.name} is being "
                                 f"computed by another process (lock {directory.with_suffix('.lock')})")
        with lock:
            with cell_runtime(cell):
                model = trained.model.to(cell.device).eval()
                gallery = cell.clean_gallery(model)
                query_index = cell.query_index()
                runs = study_runs(cell.profile, spec)
                for attack in todo:
                    start = time.perf_counter()
                    outcome = attack_queries(model, lambda idx: cell.bundle.test.batch(idx), gallery, attack, runs,
                                             query_index=query_index, batch_size=cell.preset.attack_batch,
                                             seed=cell.config.seed, device=cell.device, progress=progress,
                                             desc=f"study {attack.name}")
                    frame = _rows(cell, identity, attack, outcome, query_index, weights)
                    frame.attrs["seconds"] = time.perf_counter() - start
                    atomic_write(_attack_file(directory, attack.name), lambda tmp, f=frame: f.to_parquet(tmp))
                    frames[attack.name] = frame
    return pd.concat([frames[a.name] for a in attack_objs], ignore_index=True)


def _rows(cell, identity: str, attack, outcome, query_index, weights: str | None) -> pd.DataFrame:
    queries = query_index.tolist()
    parts = []
    for run, steps in outcome.recorded.items():
        method = "apgd" if run.startswith("apgd:") else "pgd"
        for budget, recorded in steps.items():
            for key in attack.metrics:
                parts.append(pd.DataFrame({
                    "run": run, "method": method, "budget": budget, "query": queries, "metric": key,
                    "direction": attack.spec(key).direction,
                    "best": recorded.best[key].double().cpu().numpy(), "last": recorded.last[key].double().cpu().numpy()}))
    frame = pd.concat(parts, ignore_index=True)
    for column, value in (("dataset", cell.bundle.name), ("cell_id", cell.standard_id), ("study_id", identity),
                          ("entry", cell.entry), ("seed", cell.config.seed), ("attack", attack.name),
                          ("weights", weights)):
        frame[column] = value
    return frame[COLUMNS].astype({"budget": "int64", "query": "int64", "seed": "int64", "weights": "string"})


def load_studies(results_dir: str | os.PathLike, dataset: str | None = None) -> pd.DataFrame:
    """Every stored study's rows (COLUMNS) under ``results_dir`` (one dataset's, or all). A study still
    running has the rows of the attacks it finished (its ERS is NaN until every ERS attack is there);
    an unreadable attack file leaves its study out."""
    root = Path(results_dir) / STUDIES_DIR
    frames = []
    for directory in sorted(root.glob(f"{dataset}/*" if dataset else "*/*")):
        if not directory.is_dir():
            continue
        parts = [_read(path) for path in sorted(directory.glob("*.parquet")) if not path.name.startswith(".")]
        if parts and all(part is not None for part in parts):
            frames.append(pd.concat(parts, ignore_index=True))
    if not frames:
        return pd.DataFrame({c: pd.Series([], dtype="object") for c in COLUMNS})
    return pd.concat(frames, ignore_index=True)


def _attacker_best(values: pd.DataFrame) -> pd.Series:
    """Per (metric, query), the value most favourable to the attacker over ``values``' runs."""
    lower = values["direction"] == "higher"  # higher means robust: the attacker wants it low
    low = values[lower].groupby(["metric", "query"])["value"].min()
    high = values[~lower & (values["direction"] == "lower")].groupby(["metric", "query"])["value"].max()
    return pd.concat([low, high])


def study_curves(rows: pd.DataFrame) -> pd.DataFrame:
    """ERS (ranked, :func:`benchmark.robustness_scores.ers`) and ERS (RobRank, :func:`~benchmark.robustness_scores.ers_robrank`)
    per run and budget from a study's rows, for the best and the last iterate; plus ``restarts:r``,
    the per-query worst case over the fixed run and its first r restarts (best iterate)."""
    out = []

    def score(means: dict[str, float]) -> dict[str, float]:
        return {"ERS": ers(means), "ERS:RobRank": ers_robrank(means)}

    for (run, budget), group in rows.groupby(["run", "budget"], sort=False):
        for iterate in ("best", "last"):
            means = group.groupby("metric")[iterate].mean().to_dict()
            out.append({"run": run, "budget": int(budget), "iterate": iterate, **score(means)})
    restarts = sorted({int(r.split(":")[1]) for r in rows["run"].unique() if r.startswith("restart:")})
    for r in [0, *restarts]:
        chosen = rows[rows["run"].isin(["fixed", *[f"restart:{i}" for i in range(1, r + 1)]])]
        for budget, group in chosen.groupby("budget"):
            worst = _attacker_best(group.rename(columns={"best": "value"}))
            means = worst.groupby(level="metric").mean().to_dict()
            out.append({"run": f"restarts:{r}", "budget": int(budget), "iterate": "best", **score(means)})
    return pd.DataFrame(out)
