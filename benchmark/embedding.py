"""Embedding a split once: the clean, L2-normalised embeddings every evaluation starts from."""

from __future__ import annotations

import torch

from .datasets import Split


@torch.no_grad()
def embed_split(model: torch.nn.Module, split: Split, *, batch_size: int = 256,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Clean, L2-normalised embeddings of every image of ``split`` (test-time transform), on ``device``."""
    model.eval()
    chunks = []
    for start in range(0, len(split), batch_size):
        index = torch.arange(start, min(start + batch_size, len(split)))
        chunks.append(model(split.batch(index, train=False).to(device)))
    return torch.cat(chunks) if chunks else torch.empty(0, getattr(model, "embedding_dim", 512), device=device)
