"""HM: hardness manipulation with the linear gradual adversary and the intra-class structure term
(CVPR'22 "HM[S, g_LGA] & ICS"; REFERENCE §4.3)."""

from __future__ import annotations

from dataclasses import dataclass, field
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
from benchmark.losses import mine_softhard, row_distance, triplet_loss
from benchmark.registry import DEFENSES

# RobRank initialises the previous adversarial loss to 2.0, so the first destination is −γ.
INITIAL_PREVIOUS_LOSS = 2.0


def hardness_manipulation_objective(source_hardness: torch.Tensor, destination: float | torch.Tensor) -> torch.Tensor:
    """The ET objective mean_i min(0, H̃_S,i − H_D)²: zero (and zero gradient) for a triplet whose
    hardness is already at or beyond the destination, so those triplets stop moving."""
    return torch.clamp(source_hardness - destination, max=0.0).pow(2).mean()


def linear_gradual_destination(previous_loss: float, gamma: float = 0.2, clip: float = 0.2) -> float:
    """LGA destination hardness H_D = −γ · min(max(ℓ_{t−1}, 0), u) / u (a scalar in [−γ, 0])."""
    return -gamma * min(max(previous_loss, 0.0), clip) / clip


@DEFENSES.register("hm", aliases=("hm-ics", "ghmetsmi"),
                   description="hardness manipulation toward the linear gradual destination, softhard source, + ICS")
@dataclass
class HardnessManipulation(Defense):
    """Soft-hard source triplets are perturbed (anchors, positives and negatives) until their
    hardness reaches the destination −γ·ℓ̄_{t−1}; the loss is the triplet loss on the perturbed
    triplets plus, with ``ics``, λ·mean relu(d(a, ã) − d(a, p)) on clean anchors and positives.

    Differences from robdml: the semihard destination triplets that the gradual branch mines and
    then overwrites are not mined (they only consumed random numbers); the plateau stop is the
    same test, |ℓ_t − ℓ_{t−1}| < 1e-7 after an update, evaluated by the shared PGD loop.
    """

    margin: float = param(0.2, low=0)
    gamma: float = param(0.2, low=0)  # destination scale γ of the gradual adversary
    clip: float = param(0.2, low=0, low_open=True)  # u: the previous loss is clipped to [0, u] and divided by u
    ics: bool = param(True, choices=(True, False))
    ics_weight: float = param(0.5, low=0)  # λ of the ICS term (0.05 in the paper on SOP)
    plateau_tolerance: float = param(1e-7, low=0)

    pgd_steps: ClassVar[int] = 32
    version: ClassVar[int] = 2

    # Adversarial triplet loss of the previous step (without ICS), for the gradual destination.
    _previous_loss: float = field(default=INITIAL_PREVIOUS_LOSS, init=False, repr=False)

    def reset(self) -> None:
        self._previous_loss = INITIAL_PREVIOUS_LOSS

    @property
    def destination_hardness(self) -> float:
        return linear_gradual_destination(self._previous_loss, self.gamma, self.clip)

    def training_step(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      ctx: TrainContext) -> StepResult:
        clean = clean_embeddings(model, images)
        triplets = mine_softhard(clean, labels, generator=ctx.generator)
        count = len(triplets)
        stacked = torch.cat([triplets.anchor, triplets.positive, triplets.negative])
        originals = images[stacked].detach()
        destination = self.destination_hardness

        def objective(x: torch.Tensor) -> torch.Tensor:
            anchor, positive, negative = model(x).split(count)
            hardness = row_distance(anchor, positive) - row_distance(anchor, negative)
            return hardness_manipulation_objective(hardness, destination)

        history: list[float] = [-1.0]  # ℓ_{−1} = −1 as in RobRank

        def plateau(step: int, loss: float) -> bool:
            # Checked before update ``step``; RobRank checks right after the previous update
            # whether that update's loss differed from the one before it: the same test.
            stop = len(history) >= 2 and abs(history[-1] - history[-2]) < self.plateau_tolerance
            history.append(loss)
            return stop

        perturbed = perturb(model, originals, objective, ctx.pgd_config(self.pgd_steps),
                            trains_batchnorm=self.trains_batchnorm, stop=plateau)
        shift = embedding_shift(model, perturbed, clean[stacked], trains_batchnorm=self.trains_batchnorm)

        if self.ics:
            clean_pairs = images[torch.cat([triplets.anchor, triplets.positive])]
            embedded = model(torch.cat([perturbed, clean_pairs]))
            adv_anchor, adv_positive, adv_negative, anchor, positive = embedded.split(count)
        else:
            adv_anchor, adv_positive, adv_negative = model(perturbed).split(count)
        adversarial_loss = triplet_loss(adv_anchor, adv_positive, adv_negative, self.margin)
        self._previous_loss = float(adversarial_loss.detach())
        loss = adversarial_loss
        extras = {"destination_hardness": destination, "adversarial_loss": self._previous_loss}
        if self.ics:
            ics_loss = torch.relu(row_distance(anchor, adv_anchor) - row_distance(anchor, positive)).mean()
            loss = loss + self.ics_weight * ics_loss
            extras["ics_loss"] = float(ics_loss.detach())
        return StepResult(loss=loss, embeddings=clean, triplets=triplets, embedding_shift=shift,
                          perturbed=perturbed, originals=originals, extras=extras)


@DEFENSES.register("hm-noics", aliases=("ghmetsm",),
                   description="hardness manipulation toward the linear gradual destination, without the ICS term")
@dataclass
class HardnessManipulationNoICS(HardnessManipulation):
    """HM[S, g_LGA] without the intra-class structure term."""

    ics: bool = param(False, choices=(True, False))
