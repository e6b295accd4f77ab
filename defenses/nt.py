"""NT: natural training with the triplet loss (REFERENCE §5.1), the no-defense baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from benchmark.defense_api import Defense, StepResult, TrainContext, param
from benchmark.losses import mine_random, triplet_loss
from benchmark.registry import DEFENSES


@DEFENSES.register("nt", aliases=("natural",),
                   description="natural training: triplet loss (margin 0.2), spc2-random negatives, no adversary")
@dataclass
class NaturalTraining(Defense):
    """Triplet loss on the clean batch; negatives uniform among other labels (``ptripletN``)."""

    margin: float = param(0.2, low=0)

    pgd_steps: ClassVar[int] = 0
    version: ClassVar[int] = 2

    def training_step(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      ctx: TrainContext) -> StepResult:
        embeddings = model(images)
        triplets = mine_random(embeddings.detach(), labels, generator=ctx.generator)
        loss = triplet_loss(embeddings[triplets.anchor], embeddings[triplets.positive],
                            embeddings[triplets.negative], self.margin)
        return StepResult(loss=loss, embeddings=embeddings.detach(), triplets=triplets)
