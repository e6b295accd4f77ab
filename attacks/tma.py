"""Targeted mismatch attack TMA (REFERENCE §2.3, after Tolias et al., ICCV'19)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmark.registry import ATTACKS

from .base import Attack, Gallery, MetricSpec, random_indices


@ATTACKS.register("tma", aliases=("targeted-mismatch",),
                  description="targeted mismatch attack: make a query's embedding match a random gallery item's")
class TargetedMismatchAttack(Attack):
    """Pull the query's embedding onto a random gallery embedding e_r.

    Loss: mean over the batch of 1 − cos(f̂(q̃), e_r); cosine similarity whatever the metric, as
    in RobRank. Reported ``TMA``: cos(f̂(q̃), e_r) per query (0–1 for typical pairs; lower = more
    robust). The target is drawn uniformly over the whole gallery. Deliberate differences from
    RobRank: the draw is seeded and the metric is averaged over queries.
    """

    perturbs = "query"
    metrics = ("TMA",)
    metric_specs = {"TMA": MetricSpec("TMA", False, "targeted mismatch attack: mean cosine similarity to the target embedding", 3)}

    def select(self, index: torch.Tensor, gallery: Gallery, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"target": random_indices((len(index),), len(gallery), generator, gallery.device)}

    def _cosine(self, emb: torch.Tensor, selection, gallery: Gallery) -> torch.Tensor:
        return F.cosine_similarity(emb, gallery.embeddings[selection["target"]], dim=1)

    def loss(self, emb, index, selection, gallery) -> torch.Tensor:
        return (1.0 - self._cosine(emb, selection, gallery)).mean()

    def measure(self, emb, index, selection, gallery) -> dict[str, torch.Tensor]:
        return {"TMA": self._cosine(emb, selection, gallery)}
