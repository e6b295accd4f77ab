"""The training loop: owns the optimiser, seeding, timing, progress and telemetry.

A defense only turns a clean SPC-2 batch into the loss (benchmark.defense_api). Everything else —
Adam settings per model, the seeded sampler, the per-step telemetry of SPC-2 §6 and the wall
clock per epoch — lives here, so every defense is trained under the same protocol.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .datasets import DatasetBundle, SPC2Sampler, Split
from .defense_api import Defense, TrainContext, defense_pgd_steps
from .determinism import deterministic_kernels
from .errors import BenchmarkError
from .losses import mine_random
from .models import EmbeddingModel, optimizer_settings
from .presets import AttackProfile, Preset, schedule_factor
from .telemetry import batch_telemetry, is_collapsed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(name: str | None) -> torch.device:
    """``cuda`` when available for ``None``/``auto``; a clear error for unusable choices."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise BenchmarkError(f"unknown device {name!r}; accepted: cpu, cuda, cuda:N, auto")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchmarkError("device 'cuda' requested but no CUDA device is available; use --device cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """The device as recorded in every row. For a CPU: its model name and the thread count, because
    both change the numbers (the same seed trains bit-identical weights on the same CPU family and
    thread count; another vendor's kernels round differently and the difference compounds)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else the platform's processor or machine."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class TrainHistory:
    """What one training run leaves behind besides the weights."""

    telemetry: list[dict[str, float]] = field(default_factory=list)  # one dict per step
    epoch_seconds: list[float] = field(default_factory=list)
    train_seconds: float = 0.0
    pgd_steps: int = 0  # PGD steps per batch actually run
    steps: int = 0

    @property
    def seconds_per_epoch(self) -> float:
        return float(np.mean(self.epoch_seconds)) if self.epoch_seconds else 0.0

    @property
    def collapsed(self) -> bool:
        return is_collapsed([t["separability"] for t in self.telemetry])


@dataclass
class TrainingState:
    """Everything a training run needs to go on after a finished epoch as if it had never stopped:
    the weights, the optimiser's state, the sampler's generator, the global RNGs, the defense's own
    state (HM's previous loss, COLO's next phase, ...), the history so far and the training time
    spent. :func:`train_model` hands one to ``on_epoch`` after every epoch but the last and takes one
    back as ``resume`` (``checkpoints.save_training_state`` stores it with ``weights_only``-safe
    values only)."""

    epoch: int  # epochs finished
    step: int  # optimiser steps made
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    generator: torch.Tensor
    rng: dict[str, Any]
    defense: dict[str, Any]
    telemetry: list[dict[str, float]]
    epoch_seconds: list[float]
    train_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


_PLAIN = (type(None), bool, int, float, str)


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def defense_state(defense: Defense) -> dict[str, Any] | None:
    """The defense's attributes (its parameters and whatever it keeps between steps) when every one
    is a plain value (None, bool, int, float, str, or lists, tuples and str-keyed dicts of them), so
    that a snapshot restores it exactly; ``None`` otherwise (such a defense is not snapshotted and
    an interrupted run of it starts again from its first epoch)."""
    state = dict(vars(defense))
    return copy.deepcopy(state) if all(_plain(v) for v in state.values()) else None


def _rng_state(device: torch.device) -> dict[str, Any]:
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position),
                                                       int(has_gauss), float(gauss)],
             "python": list(random.getstate()[1]), "python_gauss": random.getstate()[2]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate((3, tuple(state["python"]), state["python_gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@deterministic_kernels()
def train_model(
    model: EmbeddingModel,
    bundle: DatasetBundle,
    defense: Defense,
    preset: Preset,
    profile: AttackProfile,
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    attention_lambda: float = 10.0,
    model_name: str = "c2f2",
    progress: bool = True,
    train_split: Split | None = None,
    resume: TrainingState | None = None,
    on_epoch: Callable[[TrainingState], None] | None = None,
) -> TrainHistory:
    """Train ``model`` in place with ``defense`` under ``preset``; return the history.

    ``on_epoch(state)`` is called after every epoch but the last with a :class:`TrainingState`
    (not for a defense whose state is not plain: :func:`defense_state`); ``resume`` continues from
    one, and the weights it ends with are the same, bit for bit, as an uninterrupted run's with
    the same thread count. ``history.train_seconds`` counts the training time of every part.
    Runs with deterministic kernels (:mod:`benchmark.determinism`)."""
    device = torch.device(device)
    split = train_split if train_split is not None else bundle.train
    if preset.max_train_images is not None and len(split) > preset.max_train_images:
        keep = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[: preset.max_train_images]
        split = split.subset(keep.sort().values)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), **optimizer_settings(model, model_name))
    generator = torch.Generator().manual_seed(seed)
    sampler = SPC2Sampler(split.labels, preset.batch_pairs, generator)
    budget = preset.training_budget(profile)
    history = TrainHistory(pgd_steps=budget.steps(defense_pgd_steps(defense)))
    defense.reset()
    epochs = preset.epochs_for(bundle.name)
    total = epochs * len(sampler)
    schedule = preset.schedule_for(bundle.name)
    base_rates = [group["lr"] for group in optimizer.param_groups]
    first_epoch, step, spent = 0, 0, 0.0
    if resume is not None:
        if not 0 < resume.epoch < epochs or resume.step != resume.epoch * len(sampler):
            raise BenchmarkError(f"cannot resume training at epoch {resume.epoch}, step {resume.step}: this run has "
                                 f"{epochs} epochs of {len(sampler)} steps")
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        generator.set_state(resume.generator)
        _restore_rng(resume.rng, device)
        for name, value in copy.deepcopy(resume.defense).items():
            setattr(defense, name, value)
        history.telemetry = list(resume.telemetry)
        history.epoch_seconds = list(resume.epoch_seconds)
        first_epoch, step, spent = resume.epoch, resume.step, resume.train_seconds
    bar = tqdm(total=total, initial=step, desc=f"train {getattr(defense, 'registry_name', type(defense).__name__)}",
               unit="step", leave=False, disable=not progress)
    start = time.perf_counter()
    for epoch in range(first_epoch, epochs):
        epoch_start = time.perf_counter()
        for index in sampler:
            images = split.batch(index, train=True, generator=generator).to(device)
            labels = split.labels[index].to(device)
            ctx = TrainContext.under(budget, epoch=epoch, num_epochs=epochs, step=step, generator=generator,
                                     attention_lambda=attention_lambda, device=device)
            model.set_train_mode(adversarial=defense.trains_batchnorm)
            result = defense.training_step(model, images, labels, ctx)
            loss = result.loss
            if loss.dim() != 0 or not torch.isfinite(loss):
                raise BenchmarkError(
                    f"defense {type(defense).__name__} returned a non-finite or non-scalar loss "
                    f"({loss.detach().flatten()[:3].tolist()}) at epoch {epoch}, step {step}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if schedule != "constant":
                factor = schedule_factor(schedule, step, total)
                for group, rate in zip(optimizer.param_groups, base_rates):
                    group["lr"] = rate * factor
            optimizer.step()
            history.telemetry.append(_step_telemetry(model, images, labels, result, ctx, epoch, step,
                                                     attention_lambda, float(loss.detach())))
            step += 1
            bar.update(1)
            if step % 5 == 0:
                last = history.telemetry[-1]
                bar.set_postfix(epoch=epoch, loss=f"{last['loss']:.3f}", sep=f"{last['separability']:.2f}")
        history.epoch_seconds.append(time.perf_counter() - epoch_start)
        if on_epoch is not None and epoch + 1 < epochs:
            state = defense_state(defense)
            if state is not None:
                pause = time.perf_counter()
                on_epoch(TrainingState(
                    epoch=epoch + 1, step=step,
                    model={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                    optimizer=copy.deepcopy(optimizer.state_dict()), generator=generator.get_state(),
                    rng=_rng_state(device), defense=state, telemetry=list(history.telemetry),
                    epoch_seconds=list(history.epoch_seconds), train_seconds=spent + pause - start))
                start += time.perf_counter() - pause  # writing the snapshot is not training time
    bar.close()
    history.train_seconds = spent + time.perf_counter() - start
    history.steps = step
    model.eval()
    return history


def _step_telemetry(model, images, labels, result, ctx, epoch, step, lam, loss_value) -> dict[str, float]:
    embeddings, triplets = result.embeddings, result.triplets
    if embeddings is None:
        with torch.no_grad():
            was_training = model.training
            model.eval()
            embeddings = model(images)
            model.train(was_training)
    if triplets is None:
        triplets = mine_random(embeddings, labels, generator=ctx.generator)
    record = {"step": step, "epoch": epoch, "loss": loss_value}
    record.update(batch_telemetry(embeddings.detach(), triplets, lam))
    shift = result.embedding_shift
    record["embedding_shift"] = float(shift) if shift is not None else math.nan
    for key, value in result.extras.items():
        record[f"x:{key}"] = float(value)
    return record
