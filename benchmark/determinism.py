"""Deterministic kernels: the same cell on the same machine and thread count gives the same bits.

PyTorch's CPU backward of advanced indexing (``embeddings[index]`` with repeated indices, which
every triplet loss does: a negative is often drawn twice in a batch) accumulates the gradients of
the repeated rows with atomic adds from several threads, so their order, and the last bits of the
sum, depend on thread timing. Training amplifies a last-bit difference into different weights:
measured on this project's 2-core host (torch 2.14), the first step of NT, GA and EST gave
different parameter gradients in two runs of one process, and a GA digits cell retrained twice
ended with different weights. ``torch.use_deterministic_algorithms`` switches that backward (and
``index_put_``/``put_`` with accumulation) to an implementation that adds in index order: same
bits every run, at no measured cost for these sizes (384 x 512 rows: 0.30 ms against 0.44 ms for
the racy kernel, minimum of 300 runs).

:func:`deterministic_kernels` is entered around everything that decides a cell's numbers
(training, the clean gallery, the attacks). ``warn_only``: an operation without a deterministic
implementation (some CUDA kernels) warns instead of failing the cell. Uninitialised memory is not
filled (the fill costs time and no built-in reads uninitialised memory).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.utils.deterministic

# Part of every cell's training identity (benchmark.cell.ResolvedCell.train_payload): cells computed
# before the kernels were deterministic get other ids and are never reused as if they were.
KERNELS = "deterministic"

# cuBLAS is deterministic only with a fixed workspace, read when CUDA makes its first cuBLAS handle:
# set on import (every training and attack path imports this module before touching CUDA).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@contextmanager
def deterministic_kernels() -> Iterator[None]:
    """Run the body with PyTorch's deterministic algorithms (warn only); restore the previous mode after."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.utils.deterministic.fill_uninitialized_memory = previous[2]
