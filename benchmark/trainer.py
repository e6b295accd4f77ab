"""The training loop: owns the optimiser, seeding, timing, progress and telemetry.

A defense only turns a clean SPC-2 batch into the loss (benchmark.defense_api). Everything else —
Adam settings per model, the seeded sampler, the per-step telemetry of SPC-2 §6 and the wall
clock per epoch — lives here, so every defense is trained under the same protocol.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .datasets import DatasetBundle, SPC2Sampler, Split
from .defense_api import Defense, TrainContext, defense_pgd_steps
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
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


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
) -> TrainHistory:
    """Train ``model`` in place with ``defense`` under ``preset``; return the history."""
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
    bar = tqdm(total=total, desc=f"train {getattr(defense, 'registry_name', type(defense).__name__)}",
               unit="step", leave=False, disable=not progress)
    step = 0
    start = time.perf_counter()
    for epoch in range(epochs):
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
    bar.close()
    history.train_seconds = time.perf_counter() - start
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
