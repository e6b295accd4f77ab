"""Embedding-shift attack ES (REFERENCE §2.4): move the query's embedding as far as possible
from its clean embedding. One run gives two numbers, ES:D and ES:R."""

from __future__ import annotations

import torch

from benchmark.losses import row_distance
from benchmark.registry import ATTACKS
from benchmark.shrinkage import ISOTROPIC_MEAN_DISTANCE

from .base import Attack, MetricSpec, recall_at_1


@ATTACKS.register("es", aliases=("embshift", "embedding-shift"),
                  description="embedding shift: push a query's embedding away from its clean one (ES:D, ES:R)")
class EmbeddingShiftAttack(Attack):
    """Maximise d(f̂(x̃), f̂(x)) for each query.

    Loss: −Σ_i d(f̂(x̃_i), f̂(x_i)) (batch sum), with the clean embedding f̂(x_i) taken from the
    gallery. At the start x̃ = x and the distance is 0, where the norm has no gradient; RobRank
    adds 1e-7 to the reference embedding at iteration 0. We get the same effect at every step by
    measuring the distance as ‖u − v + 1e-6‖ (``F.pairwise_distance``'s eps, as RobRank's
    loss does), whose gradient at u = v is the constant direction (1, …, 1)/√D.

    Reported: ``ES:D`` = ‖f̂(x̃) − f̂(x)‖₂ per query (0–2) and ``ES:R`` = R@1 in percent after the
    attack (ground-truth label, self masked by index). Deliberate differences from RobRank:
    ES:D is measured on the FINAL adversarial embedding (RobRank reads the embedding of the
    iterate before the last update; the difference is negligible but makes ES:D consistent with
    ES:R), and both are averaged over queries. Before the attack ES:D = 0 and ES:R = clean R@1.

    Also reported, ``ES:D-rel``: the shift in units of the clean gallery's spread, √2·ES:D / s with
    s the gallery's mean pairwise distance (``Gallery.spread``). An absolute shift rewards a model
    for shrinking its embeddings (a cap a thousandth wide leaves the attack a thousandth to move,
    however far it moves the query among the other items); the relative one does not change when
    the embeddings are rescaled, and the factor √2 (the mean pairwise distance of unit vectors
    spread isotropically) makes it equal ES:D for such a gallery. The ranked ERS uses it.
    """

    metrics = ("ES:D", "ES:R", "ES:D-rel")
    metric_specs = {"ES:D": MetricSpec("ES:D", False, "embedding shift: mean L2 shift of the query embedding "
                                       "(RobRank's definition, absolute)", 3),
                    "ES:R": MetricSpec("ES:R", True, "embedding shift: R@1 after the attack, %"),
                    "ES:D-rel": MetricSpec("ES:D rel", False, "embedding shift relative to the clean gallery's "
                                           "spread: √2 · shift / mean pairwise distance (scale-free)", 3)}
    version = 3

    def loss(self, emb, index, selection, gallery) -> torch.Tensor:
        return -row_distance(emb, gallery.embeddings[index]).sum()

    def measure(self, emb, index, selection, gallery) -> dict[str, torch.Tensor]:
        shift = (emb.double() - gallery.embeddings[index].double()).norm(dim=1)
        relative = shift * (ISOTROPIC_MEAN_DISTANCE / max(gallery.spread, 1e-300))
        return {"ES:D": shift, "ES:R": recall_at_1(emb, index, gallery), "ES:D-rel": relative}
