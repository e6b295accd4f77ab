"""EST: embedding-shifted triplet (ECCV'20; REFERENCE §4.1)."""

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


@DEFENSES.register("est", description="embedding-shifted triplet: train on images pushed to maximal embedding shift")
@dataclass
class EmbeddingShiftedTriplet(Defense):
    """Every image is perturbed to move its embedding as far as possible from the clean one; the
    triplet loss (spc2-random, margin 0.2) is then computed on the perturbed batch only.

    The only defense that trains BatchNorm layers (RobRank's ``rres18d`` sets ``is_advtrain``).
    """

    margin: float = param(0.2, low=0)
    # Size of the noise added to the clean reference embedding so that the distance being
    # maximised is not exactly zero at the first step: 1e-7 · {−1, 0, +1} per coordinate, as
    # RobRank's training-time embedding shift (REFERENCE §4.1).
    reference_noise: float = param(1e-7, low=0)

    pgd_steps: ClassVar[int] = 32
    trains_batchnorm: ClassVar[bool] = True
    version: ClassVar[int] = 2

    def training_step(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      ctx: TrainContext) -> StepResult:
        clean = clean_embeddings(model, images)
        noise = torch.randint(-1, 2, clean.shape, generator=ctx.generator).to(clean.device, clean.dtype)
        reference = clean + noise * self.reference_noise

        def shift_loss(x: torch.Tensor) -> torch.Tensor:
            return -row_distance(model(x), reference).mean()

        perturbed = perturb(model, images, shift_loss, ctx.pgd_config(self.pgd_steps),
                            trains_batchnorm=self.trains_batchnorm)
        shift = embedding_shift(model, perturbed, clean, trains_batchnorm=self.trains_batchnorm)
        adversarial = model(perturbed)
        # spc2-random ignores the embeddings, so these are the triplets mined "on the adversarial
        # embeddings" and, index for index, the ones the telemetry reads on the clean batch.
        triplets = mine_random(adversarial.detach(), labels, generator=ctx.generator)
        loss = triplet_loss(adversarial[triplets.anchor], adversarial[triplets.positive],
                            adversarial[triplets.negative], self.margin)
        return StepResult(loss=loss, embeddings=clean, triplets=triplets, embedding_shift=shift,
                          perturbed=perturbed, originals=images.detach())
