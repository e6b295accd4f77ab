"""Triplet miners and the triplet loss on SPC-2 batches (distances: :mod:`benchmark.distances`,
re-exported here for defense authors).

An SPC-2 batch holds two images per class laid out [c1, c1, c2, c2, ...]: anchors are the even
positions, positives the odd ones, and miners choose one negative per anchor. Miners are
separate from the loss, in the manner of pytorch-metric-learning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .distances import pairwise_distance, row_distance

__all__ = ["MINERS", "Triplets", "gradual_margin", "mine_random", "mine_semihard", "mine_softhard",
           "pairwise_distance", "row_distance", "spc2_pairs", "triplet_distances", "triplet_loss"]


@dataclass
class Triplets:
    """Index triplets into a batch."""

    anchor: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor

    def __len__(self) -> int:
        return int(self.anchor.numel())

    def to(self, device) -> Triplets:
        return Triplets(self.anchor.to(device), self.positive.to(device), self.negative.to(device))


def spc2_pairs(n: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    anchor = torch.arange(0, n - n % 2, 2, device=device)
    return anchor, anchor + 1


def _pick(mask: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """For each row, a uniformly random column where ``mask`` is True (rows must have one)."""
    noise = torch.rand(mask.shape, generator=generator, device="cpu").to(mask.device)
    return torch.where(mask, noise + 1.0, noise.new_zeros(())).argmax(dim=1)


def mine_random(embeddings: torch.Tensor, labels: torch.Tensor, *,
                generator: torch.Generator | None = None, **_: object) -> Triplets:
    """Anchor/positive pairs of the SPC-2 layout, negative uniform among other labels."""
    anchor, positive = spc2_pairs(len(labels), labels.device)
    negative_mask = labels[anchor].unsqueeze(1) != labels.unsqueeze(0)
    return Triplets(anchor, positive, _pick(negative_mask, generator))


def mine_semihard(embeddings: torch.Tensor, labels: torch.Tensor, *, margin: float = 0.2,
                  generator: torch.Generator | None = None, **_: object) -> Triplets:
    """Negative random among semihard ones: d(a,p) < d(a,n) < d(a,p) + margin; else any negative.

    With ``margin = m(e) = 0.2 (1 - e / 2E)^2`` this is CA-TRIDE's gradual-hard miner.
    """
    anchor, positive = spc2_pairs(len(labels), labels.device)
    with torch.no_grad():
        dist = pairwise_distance(embeddings[anchor], embeddings)
        d_ap = dist.gather(1, positive.unsqueeze(1))
    negative_mask = labels[anchor].unsqueeze(1) != labels.unsqueeze(0)
    semihard = negative_mask & (dist > d_ap) & (dist < d_ap + margin)
    has = semihard.any(dim=1, keepdim=True)
    return Triplets(anchor, positive, _pick(torch.where(has, semihard, negative_mask), generator))


def mine_softhard(embeddings: torch.Tensor, labels: torch.Tensor, *,
                  generator: torch.Generator | None = None, **_: object) -> Triplets:
    """RobRank's soft-hard miner (REFERENCE §4.3): a negative closer than the farthest positive,
    a positive farther than the closest negative; each falls back to any negative / the partner."""
    n = len(labels)
    anchor, partner = spc2_pairs(n, labels.device)
    with torch.no_grad():
        dist = pairwise_distance(embeddings[anchor], embeddings)
    same = labels[anchor].unsqueeze(1) == labels.unsqueeze(0)
    same[torch.arange(len(anchor), device=labels.device), anchor] = False  # not the anchor itself
    negative_mask = ~same
    negative_mask[torch.arange(len(anchor), device=labels.device), anchor] = False
    inf = torch.tensor(float("inf"), device=dist.device)
    far_positive = torch.where(same, dist, -inf).max(dim=1, keepdim=True).values
    near_negative = torch.where(negative_mask, dist, inf).min(dim=1, keepdim=True).values
    hard_neg = negative_mask & (dist < far_positive)
    hard_pos = same & (dist > near_negative)
    negative = _pick(torch.where(hard_neg.any(1, keepdim=True), hard_neg, negative_mask), generator)
    pos_choice = _pick(torch.where(hard_pos.any(1, keepdim=True), hard_pos, same | ~same), generator)
    positive = torch.where(hard_pos.any(1), pos_choice, partner)
    return Triplets(anchor, positive, negative)


MINERS = {"random": mine_random, "semihard": mine_semihard, "softhard": mine_softhard,
          "gradual-hard": mine_semihard}


def gradual_margin(epoch: int, num_epochs: int, base: float = 0.2) -> float:
    """CA-TRIDE's semihard margin schedule m(e) = base * (1 - e / 2E)^2."""
    return base * (1.0 - epoch / (2.0 * max(num_epochs, 1))) ** 2


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                 margin: float = 0.2) -> torch.Tensor:
    """mean relu(d(a,p) - d(a,n) + margin) on embeddings (REFERENCE §5.1)."""
    return F.triplet_margin_loss(anchor, positive, negative, margin=margin, p=2)


def triplet_distances(embeddings: torch.Tensor, triplets: Triplets) -> tuple[torch.Tensor, torch.Tensor]:
    a = embeddings[triplets.anchor]
    return row_distance(a, embeddings[triplets.positive]), row_distance(a, embeddings[triplets.negative])
