"""The hot paths under each execution option, with the parity each must keep.

``python -m pytest -q --benchmark-enable tests/test_hot_paths.py`` times them (pytest-benchmark);
the plain run executes each once and checks its parity with float32: an option that changes
nothing (inference mode, channels-last) must give the same embeddings to float32 rounding, and
the bf16 trunk must stay within bfloat16's rounding. README "Performance" gives the measured
table and which option is the default. The hot paths, on c2f2 with the quick preset's batch of
128 images: one PGD step (forward and input gradient: what every attack step and every
adversarial-training step pays), one natural training step (forward, backward, Adam) and one pass
of the clean gallery (1,000 test images, embedded once per cell).
"""

from __future__ import annotations

import pytest
import torch

from benchmark.models import C2F2, set_precision

BATCH = 128


def _model(option: str) -> C2F2:
    torch.manual_seed(0)
    model = C2F2().eval()
    if option == "bf16":
        set_precision(model, "bf16")
    if option == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    return model


def _images(n: int, option: str) -> torch.Tensor:
    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    return x.contiguous(memory_format=torch.channels_last) if option == "channels_last" else x


def _pgd_step(model, x):
    x = x.clone().requires_grad_(True)
    emb = model(x)
    (grad,) = torch.autograd.grad(emb[:, 0].sum() - emb[:, 1].sum(), x)
    return emb.detach(), grad


def _train_step(model, optimizer, x):
    model.train()
    emb = model(x)
    loss = (emb[: len(x) // 2] - emb[len(x) // 2:]).pow(2).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    model.eval()
    return float(loss.detach())


def _gallery(model, x, mode: str):
    context = torch.inference_mode() if mode == "inference_mode" else torch.no_grad()
    with context:
        return torch.cat([model(part) for part in x.split(256)])


@pytest.fixture(scope="module")
def reference():
    """The float32 PGD step every option is compared with (computed once, when a test needs it)."""
    return _pgd_step(_model("float32"), _images(BATCH, "float32"))


@pytest.mark.parametrize("option", ["float32", "channels_last", "bf16"])
def test_pgd_step(benchmark, reference, option):
    model, x = _model(option), _images(BATCH, option)
    emb, grad = benchmark(_pgd_step, model, x)
    reference_emb, reference_grad = reference
    tolerance = 5e-3 if option == "bf16" else 1e-5
    assert (emb - reference_emb).abs().max() < tolerance, option
    # The sign of the input gradient is what signed-gradient PGD follows.
    agree = (grad.sign() == reference_grad.sign()).double().mean()
    assert agree > (0.9 if option == "bf16" else 0.999), (option, float(agree))


@pytest.mark.parametrize("option", ["float32", "bf16"])
def test_training_step(benchmark, option):
    model, x = _model(option), _images(BATCH, "float32")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-7)
    loss = benchmark(_train_step, model, optimizer, x)
    assert loss == loss and loss >= 0


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_gallery_pass(benchmark, mode):
    model, x = _model("float32"), _images(1000, "float32")
    emb = benchmark(_gallery, model, x, mode)
    assert torch.equal(emb, _gallery(model, x, "no_grad"))  # the same kernels: bit-identical
