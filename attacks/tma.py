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

    Also reported, ``TMA-centred``: the same cosine with both vectors taken relative to the clean
    gallery's mean embedding, cos(f̂(q̃) − μ, e_r − μ). The raw cosine measures the cap the
    embeddings live in rather than the attack: when a model shrinks its embeddings into a tiny cap
    every raw cosine is 1.000 before any attack. The centred cosine is unchanged by such a map
    (up to the one direction the cap removes) and equals the raw one for a gallery centred on the
    origin; the ranked ERS uses it (``benchmark.robustness_scores``). The loss stays RobRank's: 1 − cos of unit
    vectors is half their squared distance, which pulls the query onto its target under both.
    """

    metrics = ("TMA", "TMA-centred")
    metric_specs = {
        "TMA": MetricSpec("TMA", False, "targeted mismatch attack: mean cosine similarity to the target "
                          "embedding (RobRank's definition)", 3),
        "TMA-centred": MetricSpec("TMA c", False, "targeted mismatch attack: mean cosine similarity to the target, "
                                  "both centred on the clean gallery's mean (scale-free)", 3),
    }
    version = 3

    def select(self, index: torch.Tensor, gallery: Gallery, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"target": random_indices((len(index),), len(gallery), generator, gallery.device)}

    def _cosine(self, emb: torch.Tensor, selection, gallery: Gallery) -> torch.Tensor:
        return F.cosine_similarity(emb, gallery.embeddings[selection["target"]], dim=1)

    def loss(self, emb, index, selection, gallery) -> torch.Tensor:
        return (1.0 - self._cosine(emb, selection, gallery)).mean()

    def measure(self, emb, index, selection, gallery) -> dict[str, torch.Tensor]:
        centre = gallery.centre
        centred = F.cosine_similarity(emb.double() - centre, gallery.embeddings[selection["target"]].double() - centre,
                                      dim=1, eps=1e-300)
        return {"TMA": self._cosine(emb, selection, gallery), "TMA-centred": centred}
