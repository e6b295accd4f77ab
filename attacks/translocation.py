"""Greedy top-1 translocation GTT (REFERENCE §2.7): push a query's clean top-1 out of its top-4."""

from __future__ import annotations

import torch

from benchmark.registry import ATTACKS

from .base import Attack, Gallery, MetricSpec, check_count, mask_self, signed_rank_loss


@ATTACKS.register("gtt", aliases=("greedy-top1-translocation",),
                  description="greedy top-1 translocation: move a query's clean top-1 out of its top-4 (retain@4 after)")
class GreedyTop1TranslocationAttack(Attack):
    """QA− with M = 1 on the query's clean top-1 neighbour (self excluded).

    Loss: mean_j relu(d(x_j, f̂(q̃)) − d(f̂(q̃), x_top1)) over the whole gallery, averaged over the
    batch. Reported ``GTT``: retain@``retain_k`` in percent, i.e. 100 if the original top-1 is
    still among the ``retain_k`` (4) nearest gallery items (self masked) after the attack. This
    is the number ERS uses (not ID-retain@1). Before the attack it is 100.

    Deliberate differences from RobRank: self is masked by index; the metric is averaged over
    queries (RobRank also selects an unused top-2; we do not).
    """

    metrics = ("GTT",)
    metric_specs = {"GTT": MetricSpec("GTT", True, "global top-1 translocation: retain@4 after the attack, %")}

    def __init__(self, retain_k: int = 4):
        self.retain_k = check_count("retain_k", retain_k)

    def hyperparameters(self) -> dict[str, object]:
        return {"retain_k": self.retain_k}

    def select(self, index: torch.Tensor, gallery: Gallery, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"target": gallery.nearest(index.to(gallery.device), 1)}  # [B, 1]

    def loss(self, emb, index, selection, gallery) -> torch.Tensor:
        dist = gallery.distances(emb)
        return signed_rank_loss(dist, dist.gather(1, selection["target"]), "-")

    def measure(self, emb, index, selection, gallery) -> dict[str, torch.Tensor]:
        dist = mask_self(gallery.distances(emb), index)
        k = min(self.retain_k, dist.shape[1] - 1)
        top = dist.topk(k, dim=1, largest=False).indices
        retained = (top == selection["target"]).any(dim=1)
        return {"GTT": retained.float() * 100.0}
