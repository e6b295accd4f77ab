"""Numeric precision of a model's forward pass: what the convolutional trunk computes in.

``float32`` (the default) runs everything in float32. ``bf16`` runs the trunk (every layer before
the embedding head) under bfloat16 autocast and the head and the L2 normalisation in float32, on
the CPU or a CUDA device alike. Retrieval metrics are always computed from float embeddings in
float64, whatever the precision. The precision decides the numbers (other rounding, other weights,
other attacks), so a cell's precision is part of its identity (a non-default precision enters the
training payload, hence both ids) and every row records it (column ``precision``).

Which one to use is a measurement, not a taste: on a CPU with native bfloat16 (AMX, AVX-512 BF16)
or a recent GPU the bf16 trunk can be much faster; on an AVX2-only CPU it is emulated and several
times slower. README "Performance" gives the timings and the parity evidence behind the default.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from .errors import BenchmarkError

DEFAULT_PRECISION = "float32"
PRECISIONS = {
    "float32": "every layer in float32 (the default: numbers comparable across machines)",
    "bf16": "convolutional trunk under bfloat16 autocast; embedding head and normalisation in float32",
}


def check_precision(name: str | None) -> str:
    """The canonical precision name, or a clear error naming the accepted ones."""
    if name is None:
        return DEFAULT_PRECISION
    key = str(name).strip().lower()
    key = {"fp32": "float32", "f32": "float32", "bfloat16": "bf16"}.get(key, key)
    if key not in PRECISIONS:
        raise BenchmarkError(f"unknown precision {name!r}; accepted: {', '.join(PRECISIONS)}")
    return key


def autocast(precision: str, device_type: str) -> AbstractContextManager:
    """The autocast context of ``precision`` on ``device_type`` (a no-op for float32)."""
    if precision == "float32":
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
