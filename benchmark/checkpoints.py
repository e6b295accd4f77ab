"""Checkpoints of trained cell models: the model a cell builds, and its weights plus training
history saved atomically and read back with ``weights_only=True``.

A checkpoint is named by the cell's training id; one written for another configuration, or a
truncated file, is ignored (the cell retrains) rather than trusted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .atomic import atomic_write
from .models import build_model
from .trainer import TrainHistory

if TYPE_CHECKING:
    from .cell import ResolvedCell

CHECKPOINT_FORMAT = 1


def make_model(cell: ResolvedCell) -> torch.nn.Module:
    kwargs: dict[str, Any] = {}
    if cell.model_name == "resnet18" and cell.config.weights:
        kwargs["weights"] = cell.config.weights
    if cell.model_name == "c2f2" and cell.bundle.in_channels != 1:
        kwargs["in_channels"] = cell.bundle.in_channels
    return build_model(cell.model_name, **kwargs)


@dataclass
class TrainedModel:
    model: torch.nn.Module
    history: TrainHistory
    loaded: bool  # True when read from an existing checkpoint


def save_checkpoint(cell: ResolvedCell, model: torch.nn.Module, history: TrainHistory, path: Path) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "train_id": cell.train_id,
        "config": json.dumps(cell.train_payload(), sort_keys=True, default=str),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "telemetry": history.telemetry,
        "epoch_seconds": history.epoch_seconds,
        "train_seconds": history.train_seconds,
        "pgd_steps": history.pgd_steps,
        "steps": history.steps,
    }
    atomic_torch_save(payload, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(cell: ResolvedCell, path: Path) -> TrainedModel | None:
    """Load a checkpoint; ``None`` when it is corrupt or belongs to another config."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != CHECKPOINT_FORMAT or payload.get("train_id") != cell.train_id:
            return None
        model = make_model(cell)
        model.load_state_dict(payload["state_dict"])
    except Exception:  # a truncated or foreign file: retrain rather than fail
        return None
    model.to(cell.device).eval()
    history = TrainHistory(telemetry=list(payload["telemetry"]), epoch_seconds=list(payload["epoch_seconds"]),
                           train_seconds=float(payload["train_seconds"]), pgd_steps=int(payload["pgd_steps"]),
                           steps=int(payload["steps"]))
    return TrainedModel(model, history, loaded=True)
