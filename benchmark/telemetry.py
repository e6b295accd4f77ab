"""Training-state measurements logged every step for every defense (SPEC §6).

* collapseness C: attention-weighted mean d(a,p) minus attention-weighted mean d(a,n), weights
  ∝ exp(λ (d - max d)) per vector (a soft maximum). C > 0 means the batch is collapsing.
* hardness H = mean d(a,p) - mean d(a,n).
* separability = (mean d(a,n) - mean d(a,p)) / mean pairwise distance.
* mean embedding distance over all pairs of the batch.
* embedding shift caused by a defense's perturbation (reported by the defense).
"""

from __future__ import annotations

import torch

from .losses import Triplets, pairwise_distance, triplet_distances

DEFAULT_LAMBDA_28 = 10.0  # λ for 28x28 data: the CUB value, recorded with every run
LAMBDA_BY_DATASET = {"cub": 10.0, "cars": 9.5, "sop": 2.0}


def attention_mean(values: torch.Tensor, lam: float) -> torch.Tensor:
    """Σ w_i v_i / Σ w_i with w_i = exp(λ (v_i - max v)); differentiable through the weights."""
    weights = torch.softmax(lam * values, dim=0)  # softmax is shift-invariant: same weights
    return (weights * values).sum()


def collapseness(d_ap: torch.Tensor, d_an: torch.Tensor, lam: float) -> torch.Tensor:
    return attention_mean(d_ap, lam) - attention_mean(d_an, lam)


def batch_telemetry(embeddings: torch.Tensor, triplets: Triplets, lam: float) -> dict[str, float]:
    """Collapseness, hardness, separability and mean distance of a batch of triplets."""
    with torch.no_grad():
        d_ap, d_an = triplet_distances(embeddings, triplets)
        n = len(embeddings)
        dist = pairwise_distance(embeddings, embeddings)
        mean_distance = dist.sum() / max(n * (n - 1), 1)
        hardness = d_ap.mean() - d_an.mean()
        return {
            "collapseness": float(collapseness(d_ap, d_an, lam)),
            "hardness": float(hardness),
            "separability": float(-hardness / mean_distance.clamp_min(1e-12)),
            "mean_distance": float(mean_distance),
        }


def is_collapsed(separability: list[float], tail_fraction: float = 0.25, threshold: float = 0.0) -> bool:
    """A run is *collapsed* when the median separability over the last ``tail_fraction`` of its
    steps is ≤ ``threshold``: for most of the end of training positives were no closer to their
    anchors than negatives. The median ignores a few noisy batches either way."""
    if not separability:
        return False
    tail = separability[-max(1, int(round(len(separability) * tail_fraction))):]
    return float(torch.tensor(tail).median()) <= threshold
