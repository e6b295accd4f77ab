"""Same cell, same machine, same thread count: same bits (benchmark.determinism).

With two threads, PyTorch's CPU backward of ``embeddings[index]`` with repeated indices adds the
repeated rows' gradients in an order that depends on thread timing; training amplifies the last
bit into other weights (GA and EST digits cells retrained to other weights before this was fixed).
Training, the clean gallery and the attacks run with deterministic kernels."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
import torch

from benchmark.cell import CellConfig, cell_runtime, resolve
from benchmark.checkpoints import weights_sha256
from benchmark.datasets import load_digits
from benchmark.defense_api import StepResult
from benchmark.determinism import KERNELS, deterministic_kernels
from benchmark.models import build_model
from benchmark.plugins import load_builtins
from benchmark.presets import PROFILES, SMOKE
from benchmark.registry import DEFENSES
from benchmark.trainer import seed_everything, train_model


def _index_backward_digests(repeats: int) -> set[str]:
    """Digests of the gradient of ``x[index]`` (many repeated indices) over ``repeats`` runs."""
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(384, 512, generator=generator)
    index = torch.randint(0, 384, (384,), generator=generator)
    weight = torch.randn(384, 512, generator=generator)
    digests = set()
    for _ in range(repeats):
        x = x0.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad((x[index] * weight).sum(), x)
        digests.add(hashlib.sha256(grad.numpy().tobytes()).hexdigest())
    return digests


def test_index_backward_is_the_same_every_time_with_two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with deterministic_kernels():
            digests = _index_backward_digests(100)
    finally:
        torch.set_num_threads(previous)
    assert len(digests) == 1, f"{len(digests)} different gradients in 100 runs"


def test_the_mode_is_restored_after_the_context():
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic_kernels():
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()  # a CUDA op without one warns, never fails
    assert torch.are_deterministic_algorithms_enabled() == before


def test_training_and_cell_runtime_use_deterministic_kernels():
    """Every defense step (plugins included) runs under the mode, and so does a cell's evaluation."""
    load_builtins()
    seen: list[bool] = []
    defense = DEFENSES.create("nt")
    original = type(defense).training_step

    def recording_step(self, model, images, labels, ctx) -> StepResult:
        seen.append(torch.are_deterministic_algorithms_enabled())
        return original(self, model, images, labels, ctx)

    defense.training_step = recording_step.__get__(defense)
    seed_everything(0)
    tiny = replace(SMOKE, epochs=1, max_train_images=64)
    train_model(build_model("c2f2"), load_digits(), defense, tiny, PROFILES["rob28"], seed=0, progress=False)
    assert seen and all(seen)
    assert not torch.are_deterministic_algorithms_enabled()
    cell = resolve(CellConfig("digits", "nt", preset="smoke", threads=1))
    with cell_runtime(cell):
        assert torch.are_deterministic_algorithms_enabled()
    assert not torch.are_deterministic_algorithms_enabled()


def test_the_kernels_are_part_of_the_training_identity():
    cell = resolve(CellConfig("digits", "nt", preset="smoke", threads=1))
    assert cell.train_payload()["kernels"] == KERNELS == "deterministic"


@pytest.mark.slow
@pytest.mark.parametrize("defense", ["ga", "est"])
def test_two_trainings_with_two_threads_end_with_the_same_weights(defense):
    """The two defenses whose digits cells retrained to other weights before the fix."""
    load_builtins()
    tiny = replace(SMOKE, epochs=1, train_pgd_divisor=1, max_train_images=256)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        digests = []
        for _ in range(2):
            seed_everything(0)
            model = build_model("c2f2")
            train_model(model, load_digits(), DEFENSES.create(defense), tiny, PROFILES["rob28"], seed=0,
                        progress=False)
            digests.append(weights_sha256(model))
    finally:
        torch.set_num_threads(previous)
    assert digests[0] == digests[1]
