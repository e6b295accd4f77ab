"""ACT: anti-collapse triplet (RobRank TPAMI; REFERENCE §4.2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from benchmark.defense_api import (
    Defense,
    StepResult,
    TrainContext,
    clean_embeddings,
    embedding_shift,
    param,
    perturb,
)
from benchmark.losses import mine_random, row_distance, triplet_loss
from benchmark.registry import DEFENSES


@DEFENSES.register("act", description="anti-collapse triplet: positives and negatives perturbed toward each other")
@dataclass
class AntiCollapseTriplet(Defense):
    """Copies of each triplet's positive and negative image are perturbed jointly so that their
    embeddings collapse onto each other; the loss is the triplet loss with the clean anchor.
    No benign term."""

    margin: float = param(0.2, low=0)

    pgd_steps: ClassVar[int] = 32
    version: ClassVar[int] = 2

    def training_step(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      ctx: TrainContext) -> StepResult:
        clean = clean_embeddings(model, images)
        triplets = mine_random(clean, labels, generator=ctx.generator)
        count = len(triplets)
        candidates = torch.cat([triplets.positive, triplets.negative])
        originals = images[candidates].detach()

        def collapse_loss(x: torch.Tensor) -> torch.Tensor:
            embedded = model(x)
            return row_distance(embedded[:count], embedded[count:]).mean()

        perturbed = perturb(model, originals, collapse_loss, ctx.pgd_config(self.pgd_steps),
                            trains_batchnorm=self.trains_batchnorm)
        shift = embedding_shift(model, perturbed, clean[candidates], trains_batchnorm=self.trains_batchnorm)
        # One forward for anchors and perturbed candidates (BN is frozen here, so batching them
        # together does not change any statistic).
        embedded = model(torch.cat([images[triplets.anchor], perturbed]))
        anchor, positive, negative = embedded.split(count)
        loss = triplet_loss(anchor, positive, negative, self.margin)
        return StepResult(loss=loss, embeddings=clean, triplets=triplets, embedding_shift=shift,
                          perturbed=perturbed, originals=originals)
