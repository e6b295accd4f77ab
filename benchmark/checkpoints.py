"""Checkpoints of trained models: weights plus training history, saved atomically and read back
with ``weights_only=True``.

A checkpoint carries the training id it was written for (the cell's ``train_id``, the hash of
what decides the weights); one written for another configuration, or a truncated file, is
ignored (the cell retrains) rather than trusted. This module takes plain values (the id, the
training payload, a model factory) and knows nothing of cells.

The evaluated model is the stored model: a cell's rows carry the sha256 of the weights it attacked
(:func:`weights_sha256`, row ``attack = "training"``, ``metric = "weights_sha256"``: the full
digest in ``meaning``, its first 52 bits, exact in a float, as the value). An audit, study or
re-evaluation that had to retrain a missing checkpoint compares the retrained weights with them
(:func:`check_weights`) and says so in one line when they differ.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write
from .trainer import TrainHistory, TrainingState

CHECKPOINT_FORMAT = 1
TRAINING_STATE_FORMAT = 1
WEIGHTS_METRIC = "weights_sha256"


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over the model's state dict: every entry's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def weights_value(digest: str) -> float:
    """The first 52 bits of a hex digest as a float (exact): the value column of the weights row."""
    return float(int(digest[:13], 16))


def stored_weights(rows: Any) -> str | None:
    """The weights digest a cell's rows record (``None`` for cells stored before it was recorded)."""
    found = rows[(rows["attack"] == "training") & (rows["metric"] == WEIGHTS_METRIC)]
    return str(found["meaning"].iloc[0]) if len(found) else None


def check_weights(trained: TrainedModel, rows: Any, what: str) -> bool:
    """Whether ``trained`` is the model the stored ``rows`` evaluated; when it was retrained (its
    checkpoint was missing) and its weights differ, one line on stderr says so. True when the
    rows record no digest (nothing to compare)."""
    stored = stored_weights(rows)
    if stored is None:
        return True
    same = weights_sha256(trained.model) == stored
    if not same:
        how = "loaded from its checkpoint" if trained.loaded else "retrained (its checkpoint was missing)"
        print(f"rrb: {what}: the model {how} is not the one its stored rows evaluated (weights sha256 "
              f"{weights_sha256(trained.model)[:12]} vs stored {stored[:12]}); its numbers describe another "
              "model", file=sys.stderr)
    return same


@dataclass
class TrainedModel:
    model: torch.nn.Module
    history: TrainHistory
    loaded: bool  # True when read from an existing checkpoint


def save_checkpoint(path: Path, model: torch.nn.Module, history: TrainHistory, *, train_id: str,
                    train_payload: dict[str, Any]) -> None:
    """Write ``model`` and its ``history`` to ``path``, keyed by ``train_id`` (``train_payload``, what
    decides the weights, is stored beside it for a reader)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "train_id": train_id,
        "config": json.dumps(train_payload, sort_keys=True, default=str),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "telemetry": history.telemetry,
        "epoch_seconds": history.epoch_seconds,
        "train_seconds": history.train_seconds,
        "pgd_steps": history.pgd_steps,
        "steps": history.steps,
        WEIGHTS_METRIC: weights_sha256(model),
    }
    atomic_torch_save(payload, path)


def training_state_path(checkpoint: Path) -> Path:
    """Where the per-epoch snapshot of a checkpoint's unfinished training lives (beside it)."""
    return checkpoint.with_name(checkpoint.stem + ".partial.pt")


def save_training_state(path: Path, state: TrainingState, *, train_id: str) -> None:
    """Write an unfinished training's :class:`TrainingState` to ``path`` atomically, keyed by ``train_id``."""
    atomic_torch_save({"format": TRAINING_STATE_FORMAT, "train_id": train_id, **state.to_dict()}, path)


def load_training_state(path: Path, train_id: str) -> TrainingState | None:
    """The snapshot at ``path`` (``weights_only=True``); ``None`` when there is none, it is corrupt or it
    was written for another training id."""
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != TRAINING_STATE_FORMAT or payload.get("train_id") != train_id:
            return None
        return TrainingState(**{name: payload[name] for name in TrainingState.__dataclass_fields__})
    except Exception:  # a truncated or foreign file: start the training again
        return None


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: Path, train_id: str, new_model: Callable[[], torch.nn.Module],
                    device: torch.device | str = "cpu") -> TrainedModel | None:
    """Load a checkpoint into a model from ``new_model()``, on ``device`` in eval mode; ``None`` when
    it is corrupt or was written for another training id."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != CHECKPOINT_FORMAT or payload.get("train_id") != train_id:
            return None
        model = new_model()
        model.load_state_dict(payload["state_dict"])
    except Exception:  # a truncated or foreign file: retrain rather than fail
        return None
    model.to(device).eval()
    history = TrainHistory(telemetry=list(payload["telemetry"]), epoch_seconds=list(payload["epoch_seconds"]),
                           train_seconds=float(payload["train_seconds"]), pgd_steps=int(payload["pgd_steps"]),
                           steps=int(payload["steps"]))
    return TrainedModel(model, history, loaded=True)
