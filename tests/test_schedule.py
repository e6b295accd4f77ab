"""The per-dataset learning-rate schedule of a preset (every defense alike): cosine decay from the
model's Adam rate, constant by default, part of the training payload only where a preset has one."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from benchmark.datasets import load_digits
from benchmark.errors import BenchmarkError
from benchmark.models import build_model
from benchmark.plugins import load_builtins
from benchmark.presets import PROFILES, QUICK, SMOKE, Preset, schedule_factor
from benchmark.registry import DEFENSES
from benchmark.trainer import seed_everything, train_model


def test_schedule_factor():
    assert schedule_factor("constant", 5, 10) == 1.0
    assert schedule_factor("cosine", 0, 10) == 1.0
    assert schedule_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert schedule_factor("cosine", 10, 10) == pytest.approx(0.0, abs=1e-12)
    assert all(schedule_factor("cosine", t + 1, 40) < schedule_factor("cosine", t, 40) for t in range(40))
    with pytest.raises(BenchmarkError, match="accepted: constant, cosine"):
        schedule_factor("step", 0, 10)
    with pytest.raises(BenchmarkError, match="accepted: constant, cosine"):
        Preset("x", 1, 8, 1, 8, 8, schedule_by_dataset=(("digits", "linear"),))


def test_a_preset_without_a_schedule_keeps_its_payload():
    assert "schedule_by_dataset" not in SMOKE.to_dict()
    scheduled = replace(SMOKE, schedule_by_dataset=(("digits", "cosine"),))
    assert scheduled.to_dict()["schedule_by_dataset"] == (("digits", "cosine"),)
    assert scheduled.schedule_for("digits") == "cosine" and scheduled.schedule_for("omniglot") == "constant"
    assert QUICK.schedule_for("digits") == "constant"


def _train(preset: Preset) -> torch.Tensor:
    load_builtins()
    bundle = load_digits()
    seed_everything(0)
    model = build_model("c2f2")
    train_model(model, bundle, DEFENSES.create("nt"), preset, PROFILES["rob28"], seed=0, progress=False)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_cosine_changes_training_and_constant_does_not():
    tiny = replace(SMOKE, epochs=1, max_train_images=128)
    base = _train(tiny)
    assert torch.equal(base, _train(replace(tiny, schedule_by_dataset=(("omniglot", "cosine"),))))
    cosine = _train(replace(tiny, schedule_by_dataset=(("digits", "cosine"),)))
    assert not torch.equal(base, cosine) and math.isfinite(float(cosine.sum()))
