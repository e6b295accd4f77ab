"""Auditing a stored cell: the strong evaluation and the sanity checks of :mod:`attacks.audit`.

An audit post-processes a finished cell: it reuses the cell's checkpoint (training it again,
bit for bit, when the checkpoint is not on this machine), embeds the clean gallery once, attacks
the same queries with the same selections as the cell's standard evaluation, and writes its own
file, ``audits/<dataset>/<audit_id>.parquet``, beside the cells. It never touches the standard
rows. Its rows carry the cell's run keys and ``cell_id`` (so the leaderboard puts them on the
cell's row), ``attack = "audit"``, and ``config_hash`` = the audit id: a hash of the cell id, the
audit spec and the surrogate's training id, so a changed budget or a changed surrogate is a new
audit, and an interrupted audit run resumes where it stopped.

The transfer check needs a surrogate: the natural-training (``nt``) model of the same dataset,
seed, preset and profile. It is loaded from its checkpoint, or trained (it is a cheap model).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from attacks.audit import AuditSpec, Surrogate, run_audit, verdicts

from . import store
from .cell import CellConfig, ResolvedCell, cell_runtime, resolve, train_or_load
from .checkpoints import TrainedModel, check_weights
from .errors import BenchmarkError
from .registry import ATTACKS
from .robustness_scores import ARS_KEYS, ERS_KEYS, ars_mean, ers
from .schema import rows_frame

AUDIT_ATTACK = "audit"
SURROGATE_DEFENSE = "nt"


def audit_id(cell: ResolvedCell, spec: AuditSpec, surrogate_train_id: str | None) -> str:
    payload = {"cell_id": cell.cell_id, "audit": spec.to_dict(), "surrogate": surrogate_train_id}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def surrogate_config(config: CellConfig) -> CellConfig:
    """The natural-training cell of the same dataset, seed, preset and profile, on the dataset's
    default model (a cell on another model is audited against the standard one)."""
    return replace(config, defense=SURROGATE_DEFENSE, defense_params=(), model=None)


def plan_audit(config: CellConfig, spec: AuditSpec, *, bundle: Any = None) -> tuple[ResolvedCell, ResolvedCell, str]:
    """Resolve the cell and its surrogate; return them with the audit's id."""
    cell = resolve(config, bundle=bundle)
    surrogate = resolve(surrogate_config(config), bundle=cell.bundle)
    same = surrogate.train_id == cell.train_id
    return cell, surrogate, audit_id(cell, spec, None if same else surrogate.train_id)


def audit_cell(config: CellConfig, results_dir: str | Path, spec: AuditSpec, *, progress: bool = True,
               bundle: Any = None) -> pd.DataFrame:
    """Audit one stored cell and return the audit's rows (writing them is :func:`store.write_audit`'s job)."""

    results_dir = Path(results_dir)
    cell, surrogate_cell, identity = plan_audit(config, spec, bundle=bundle)
    standard = store.read_cell_file(store.cell_path(results_dir, cell.bundle.name, cell.cell_id))
    if not standard.valid:
        raise BenchmarkError(f"cannot audit {cell.entry} seed {cell.config.seed} on {cell.bundle.name}: its cell "
                             f"is not in {results_dir} ({standard.problem}); run it first with `rrb run`")
    missing = [k for k in ERS_KEYS if k not in {m for a in cell.attack_names for m in ATTACKS.create(a).metrics}]
    if missing:
        raise BenchmarkError(f"the audit needs the whole ERS suite; this cell lacks {', '.join(missing)}")
    # Audit s is the audit's own cost: loading (or, on a machine without the checkpoint,
    # retraining) the model and its surrogate is timed apart, as model_seconds.
    loading = time.perf_counter()
    trained: TrainedModel = train_or_load(cell, results_dir, progress=progress)
    same_model = check_weights(trained, standard.rows, f"audit of {cell.entry} seed {cell.config.seed} on "
                                                       f"{cell.bundle.name}")
    with cell_runtime(cell):  # the gallery and the attacks with the cell's thread count and kernels
        model = trained.model.to(cell.device).eval()
        gallery = cell.clean_gallery(model)
        surrogate = None
        if surrogate_cell.train_id != cell.train_id:
            source = train_or_load(surrogate_cell, results_dir, progress=progress).model.to(cell.device).eval()
            surrogate = Surrogate(source, cell.clean_gallery(source))
        start = time.perf_counter()
        model_seconds = start - loading
        attack_objs = [ATTACKS.create(name) for name in cell.attack_names if not ATTACKS.get(name).is_plugin]
        query_index = cell.query_index()
        report = run_audit(model, lambda idx: cell.bundle.test.batch(idx), gallery, attack_objs,
                           cell.profile.pgd_config(), spec,
                           query_index=query_index, batch_size=cell.preset.attack_batch, seed=cell.config.seed,
                           device=cell.device, surrogate=surrogate, progress=progress)
    seconds = time.perf_counter() - start
    numbers = verdicts(report, ers, spec)
    numbers["ARS:strong"] = ars_mean({k: report.before[k] for k in ARS_KEYS}, {k: report.strong[k] for k in ARS_KEYS})
    numbers["audit_seconds"] = seconds
    numbers["model_seconds"] = model_seconds
    numbers["surrogate"] = float(surrogate is not None)
    numbers["same_weights"] = float(same_model)  # 0: the audited model is not the one the cell's rows evaluated
    return _rows(standard.rows, identity, spec, numbers, report)


def _rows(standard: pd.DataFrame, identity: str, spec: AuditSpec, numbers: dict[str, float], report) -> pd.DataFrame:
    from .provenance import provenance
    from .trainer import resolve_device

    base = standard.iloc[0].to_dict()
    fresh = provenance(resolve_device(None))
    base.update({k: v for k, v in fresh.items()})
    base.update(config_hash=identity, attack=AUDIT_ATTACK, attack_plugin=False, attack_seconds=0.0,
                queries_per_second=0.0, attack_params=json.dumps(spec.to_dict(), sort_keys=True),
                attack_plugin_hash="", meaning="", direction="", decimals=1)
    rows = []
    for metric, value in numbers.items():
        rows.append({**base, "metric": metric, "metric_label": metric, "variant": "", "value": float(value)})
    for key, value in report.strong.items():
        label = standard.loc[standard["metric"] == key, "metric_label"]
        rows.append({**base, "metric": f"strong:{key}", "metric_label": label.iloc[0] if len(label) else key,
                     "variant": "strong", "value": float(value)})
    frame = rows_frame(rows)
    return frame
