"""Misranking attacks LTM and GTM (REFERENCE §2.5–§2.6): make a query's top-1 retrieve a wrong class."""

from __future__ import annotations

import torch

from benchmark.errors import BenchmarkError
from benchmark.losses import row_distance
from benchmark.registry import ATTACKS

from .base import Attack, Gallery, MetricSpec, mask_self, recall_at_1

# Stands in for ±inf in masked max/min so no inf enters a subtraction in the graph.
_FAR = 1e4


@ATTACKS.register("ltm", aliases=("learning-to-misrank",),
                  description="learning-to-misrank: bring every negative closer than every positive (R@1 after)")
class LearningToMisrankAttack(Attack):
    """Feng et al.'s learning-to-misrank objective (CVPR'20, Eq. 1, no margin).

    Loss (batch sum): relu(max_{j: y_j ≠ y_q} d(f̂(q̃), x_j) − min_{j ≠ q: y_j = y_q} d(f̂(q̃), x_j)).
    Reported ``LTM``: R@1 in percent after the attack (ground-truth label, self masked).

    Deliberate differences from RobRank: the query's own clean embedding is EXCLUDED from the
    positives (RobRank means to, but its exclusion is a no-op, so its min over positives starts
    at d(q̃, self) = 0 and the attack first has to move away from itself); a query whose class has
    no other gallery item contributes 0; R@1 is averaged over queries.
    """

    metrics = ("LTM",)
    metric_specs = {"LTM": MetricSpec("LTM", True, "learning-to-misrank: R@1 after the attack, %")}

    def select(self, index: torch.Tensor, gallery: Gallery, generator: torch.Generator) -> dict[str, torch.Tensor]:
        index = index.to(gallery.device)
        positives = gallery.labels.unsqueeze(0) == gallery.labels[index].unsqueeze(1)  # [B, N]
        negatives = ~positives
        positives[torch.arange(len(index), device=gallery.device), index] = False  # not self
        return {"positives": positives, "negatives": negatives}

    def loss(self, emb, index, selection, gallery) -> torch.Tensor:
        dist = gallery.distances(emb)
        farthest_negative = dist.masked_fill(~selection["negatives"], -_FAR).amax(dim=1)
        nearest_positive = dist.masked_fill(~selection["positives"], _FAR).amin(dim=1)
        return torch.relu(farthest_negative - nearest_positive).sum()

    def measure(self, emb, index, selection, gallery) -> dict[str, torch.Tensor]:
        return {"LTM": recall_at_1(emb, index, gallery)}


@ATTACKS.register("gtm", aliases=("greedy-top1-misrank",),
                  description="greedy top-1 misranking: pull a query onto the best-ranked item of another class (R@1 after)")
class GreedyTop1MisrankAttack(Attack):
    """Pull the query toward the highest-ranked gallery item whose label differs from its clean
    top-1 (predicted) label.

    Selection (clean): self masked by index; ŷ = label of the clean top-1; target = the nearest
    gallery item with label ≠ ŷ. Loss: mean over the batch of d(f̂(q̃), x_target). Reported
    ``GTM``: R@1 in percent after the attack (ground-truth label, self masked).

    Deliberate differences from RobRank: the target is indexed correctly — RobRank takes the
    arg-min over the boolean-masked sub-vector and uses that subset position as a gallery index,
    which on class-sorted test sets picks an arbitrary, possibly same-class, item. The fix is not
    always the stronger attack: measured on natural-training c2f2 models with the same weights and
    selections in both codes, R@1 after GTM was 1.3 % here vs 5.0 % with the reference on digits,
    but 15.9 % vs 11.3 % on omniglot-small, because the first item whose label differs from the
    *predicted* top-1 can carry the query's true label when the clean top-1 is wrong (the target
    then helps the query). GTM numbers are therefore not comparable with published ones in either
    direction. Seeded (here: deterministic) selection; R@1 averaged over queries.
    """

    metrics = ("GTM",)
    metric_specs = {"GTM": MetricSpec("GTM", True, "global top-1 misranking: R@1 after the attack, %")}

    def select(self, index: torch.Tensor, gallery: Gallery, generator: torch.Generator) -> dict[str, torch.Tensor]:
        index = index.to(gallery.device)
        top1 = gallery.nearest(index, 1)[:, 0]
        predicted = gallery.labels[top1]
        with torch.no_grad():
            dist = mask_self(gallery.distances(gallery.embeddings[index]), index)
        other = gallery.labels.unsqueeze(0) != predicted.unsqueeze(1)
        if not bool(other.any(dim=1).all()):
            raise BenchmarkError("GTM needs a gallery with at least two classes")
        target = dist.masked_fill(~other, float("inf")).argmin(dim=1)
        return {"target": target, "predicted": predicted}

    def loss(self, emb, index, selection, gallery) -> torch.Tensor:
        return row_distance(emb, gallery.embeddings[selection["target"]]).mean()

    def measure(self, emb, index, selection, gallery) -> dict[str, torch.Tensor]:
        return {"GTM": recall_at_1(emb, index, gallery)}
