"""Example attack plugin: push a query away from its whole clean top-10, report how much of it survives.

GTT moves one neighbour out of the top-4; this attack goes after the neighbourhood as a whole:

    loss = −mean_k d(f̂(q̃), x_k)  over the query's 10 nearest clean gallery items (self excluded)

and reports ``R10`` (retain@10): the share, in percent, of those 10 items still among the 10
nearest after the attack (100 before it; higher is more robust). It is an extra column on the
leaderboard and never enters ERS or ARS. Run it next to the suite:

    rrb run --defenses nt,act --attacks ca+,ca-,qa+,qa-,tma,es,ltm,gtm,gtt,top10-shift \\
        --plugin examples/top10_shift_attack.py
"""

from __future__ import annotations

import torch

from attacks.base import Attack, Gallery, MetricSpec, check_count
from benchmark.registry import ATTACKS


@ATTACKS.register("top10-shift", description="push a query away from its clean top-10; retain@10 after (example)")
class Top10Shift(Attack):
    metrics = ("R10",)
    metric_specs = {"R10": MetricSpec("R10", True, "top-10 shift: share of the clean top-10 kept in the top-10, %")}

    def __init__(self, k: int = 10):
        self.k = check_count("k", k)

    def hyperparameters(self) -> dict[str, object]:
        return {"k": self.k}  # recorded with the rows and part of the cell id

    def select(self, index: torch.Tensor, gallery: Gallery, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"neighbours": gallery.nearest(index, min(self.k, len(gallery) - 1))}  # clean, self excluded

    def loss(self, emb, index, selection, gallery) -> torch.Tensor:
        neighbours = gallery.embeddings[selection["neighbours"]]  # [B, k, D]
        return -(emb.unsqueeze(1) - neighbours).norm(dim=-1).mean()

    def measure(self, emb, index, selection, gallery) -> dict[str, torch.Tensor]:
        k = selection["neighbours"].shape[1]
        top = gallery.distances_without_self(emb, index).topk(k, largest=False).indices  # [B, k]
        kept = (top.unsqueeze(2) == selection["neighbours"].unsqueeze(1)).any(dim=1).float().mean(dim=1)
        return {"R10": kept * 100.0}
