"""Adversarial training cost: one HM training step (32 PGD steps) against its floor.

The floor of an adversarial training step is (PGD steps + 1) forward+backward passes over the
images the adversary perturbs: one per PGD step, one for the training loss. Everything else (the
clean embeddings, mining, the embedding-shift telemetry, the optimiser) is overhead; the ratio
says how much. ``pytest --benchmark-enable tests/test_training_speed.py`` times the step with
pytest-benchmark; the plain test run checks the ratio against a loose bound that catches a
recomputation creeping into the step (e.g. a second gallery or a per-step model copy).
"""

from __future__ import annotations

import time

import pytest
import torch

from benchmark.datasets import SPC2Sampler, load_digits
from benchmark.defense_api import TrainContext
from benchmark.models import C2F2
from benchmark.plugins import load_builtins as import_builtins
from benchmark.presets import PROFILES
from benchmark.registry import DEFENSES

ROB28 = PROFILES["rob28"]
PAIRS = 64  # the quick preset's batch


def _setup():
    import_builtins()
    torch.manual_seed(0)
    split = load_digits().train
    index = next(iter(SPC2Sampler(split.labels, PAIRS, torch.Generator().manual_seed(0))))
    images, labels = split.batch(index), split.labels[index]
    model = C2F2()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-7)
    # plateau_tolerance = 0: never stop early, so every one of the 32 steps is paid for and timed.
    defense = DEFENSES.get("hm").obj(plateau_tolerance=0.0)
    ctx = TrainContext(epoch=1, num_epochs=2, step=0, epsilon=ROB28.train_epsilon, alpha=ROB28.train_alpha,
                       pgd_divisor=1, generator=torch.Generator().manual_seed(0), attention_lambda=10.0)
    return model, optimizer, defense, ctx, images, labels


def _training_step(model, optimizer, defense, ctx, images, labels):
    model.set_train_mode(adversarial=defense.trains_batchnorm)
    result = defense.training_step(model, images, labels, ctx)
    optimizer.zero_grad(set_to_none=True)
    result.loss.backward()
    optimizer.step()
    return result


def _floor_pass(model, stack):
    """One forward + input-gradient backward of the perturbed stack, as a PGD step does it."""
    x = stack.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).sum(), x)
    return grad


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


@pytest.mark.slow
def test_hm_training_step_costs_little_beyond_its_pgd_passes():
    model, optimizer, defense, ctx, images, labels = _setup()
    result = _training_step(model, optimizer, defense, ctx, images, labels)  # warm-up
    stack = result.originals  # [A; P; N]: 3B images, what the adversary perturbs
    assert len(stack) == 3 * PAIRS
    model.eval()
    for _ in range(3):
        _floor_pass(model, stack)
    one_pass = _median_seconds(lambda: _floor_pass(model, stack), 7)
    step = _median_seconds(lambda: _training_step(model, optimizer, defense, ctx, images, labels), 3)
    ratio = step / ((defense.pgd_steps + 1) * one_pass)
    print(f"\nHM step {step:.3f} s, one fwd+bwd of {len(stack)} images {one_pass * 1000:.1f} ms, "
          f"ratio {ratio:.2f}")
    assert ratio < 2.0, f"an HM training step costs {ratio:.2f}x its (32 + 1) passes"


@pytest.mark.slow
def test_benchmark_hm_training_step(benchmark):
    """pytest-benchmark: one HM training step with 32 PGD steps, 64 pairs of digits, c2f2."""
    model, optimizer, defense, ctx, images, labels = _setup()
    result = benchmark(_training_step, model, optimizer, defense, ctx, images, labels)
    assert torch.isfinite(result.loss)
    assert defense.pgd_steps == 32


@pytest.mark.parametrize("name", ["est", "act", "hm", "colo-tride", "ca-tride"])
def test_faithful_preset_runs_the_published_step_count(name):
    """The quick preset no longer divides the adversary: a defense runs its own PGD steps."""
    from benchmark.presets import get_preset

    quick = get_preset("quick")
    assert quick.faithful and quick.train_pgd_steps(DEFENSES.get(name).obj.pgd_steps) == DEFENSES.get(name).obj.pgd_steps
    assert not get_preset("smoke").faithful
