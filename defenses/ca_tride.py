"""CA-TRIDE as released with the ICML'24 paper (REFERENCE §4.4), made runnable.

CAP (odd steps) perturbs positives and negatives with loss relu(−C), which attacks until the
attention-weighted triplet is collapsed; ANP (even steps) perturbs anchors with
relu(C) + γ·relu(T_an − S_aa), γ = exp(−relu(−C)) as a constant. Both phases use 16 PGD steps of
size α·e/E and stop as soon as their loss falls below 1e-5 (possibly before the first step).
The training loss is the triplet loss on the perturbed triplet plus 0.5·relu(closest-half
d(a,p) − closest-half d(a,n) + 0.04), which the released code adds to every adversarial loss.

Fixed relative to the snapshot (REFERENCE §4.4 caveats): λ, the phase flag and the schedule are
fields/arguments instead of module globals and mismatched call signatures; nothing is logged to
a hard-coded path; the dead "assist" code path is not reproduced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from benchmark.defense import StepResult, TrainContext
from benchmark.losses import Triplets, gradual_margin, mine_semihard, row_distance, triplet_loss
from benchmark.registry import DEFENSES
from benchmark.telemetry import collapseness

from ._common import (
    AlternatingPhases,
    attention_lambda,
    clean_embeddings,
    closest_half_mean,
    embedding_shift,
    perturb,
    top_ranked_term,
)


@DEFENSES.register("ca-tride", aliases=("catride",),
                   description="released CA-TRIDE code: collapse-aware CAP/ANP alternation, top-ranked term")
@dataclass
class CATRIDE(AlternatingPhases):
    """The released CA-TRIDE training step (``pnp_training_step`` with ``pgtripletN``)."""

    margin: float = 0.2
    miner_margin: float = 0.2  # base of the gradual-hard margin m(e) = 0.2 (1 − e/2E)²
    attention_lambda: float = 0.0  # λ; ≤ 0: the run's λ (ctx.attention_lambda)
    top_ranked_weight: float = 0.5
    top_ranked_margin: float = 0.04
    stop_loss: float = 1e-5  # a phase's PGD stops once its loss is below this

    pgd_steps: ClassVar[int] = 16

    def training_step(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      ctx: TrainContext) -> StepResult:
        lam = attention_lambda(self.attention_lambda, ctx)
        clean = clean_embeddings(model, images)
        miner_margin = gradual_margin(ctx.epoch, ctx.num_epochs, self.miner_margin)
        triplets = mine_semihard(clean, labels, margin=miner_margin, generator=ctx.generator)
        is_cap = self._advance_phase()
        config = ctx.pgd_config(self.pgd_steps, alpha_scale=ctx.progress)
        phase = self._cap if is_cap else self._anp
        loss, perturbed, originals, reference, extras = phase(model, images, clean, triplets, config, lam)
        extras.update(phase_cap=float(is_cap), miner_margin=miner_margin)
        shift = embedding_shift(model, perturbed, reference, trains_batchnorm=self.trains_batchnorm)
        return StepResult(loss=loss, embeddings=clean, triplets=triplets, embedding_shift=shift,
                          perturbed=perturbed, originals=originals, extras=extras)

    def _stop(self, step: int, loss: float) -> bool:
        return loss < self.stop_loss

    def _training_loss(self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        top_ranked = top_ranked_term(row_distance(anchor, positive), row_distance(anchor, negative),
                                     self.top_ranked_margin)
        return triplet_loss(anchor, positive, negative, self.margin) + self.top_ranked_weight * top_ranked

    def _cap(self, model, images, clean, triplets: Triplets, config, lam: float):
        """Perturb [P; N] against the clean anchors with relu(−C) (attack until collapsed)."""
        count = len(triplets)
        candidates = torch.cat([triplets.positive, triplets.negative])
        originals = images[candidates].detach()
        anchor = clean[triplets.anchor]

        def objective(x: torch.Tensor) -> torch.Tensor:
            positive, negative = model(x).split(count)
            return torch.relu(-collapseness(row_distance(anchor, positive), row_distance(anchor, negative), lam))

        perturbed = perturb(model, originals, objective, config, trains_batchnorm=self.trains_batchnorm,
                            stop=self._stop)
        embedded = model(torch.cat([images[triplets.anchor], perturbed]))
        loss = self._training_loss(*embedded.split(count))
        return loss, perturbed, originals, clean[candidates], {}

    def _anp(self, model, images, clean, triplets: Triplets, config, lam: float):
        """Perturb anchors with relu(C) + γ·relu(T_an − S_aa) against clean positives/negatives."""
        count = len(triplets)
        originals = images[triplets.anchor].detach()
        clean_anchor = clean[triplets.anchor]
        positive, negative = clean[triplets.positive], clean[triplets.negative]

        def objective(x: torch.Tensor) -> torch.Tensor:
            anchor = model(x)
            d_an = row_distance(anchor, negative)
            c = collapseness(row_distance(anchor, positive), d_an, lam)
            gamma = math.exp(min(float(c.detach()), 0.0))  # a constant, as in the released code
            shift = row_distance(anchor, clean_anchor).mean()
            return torch.relu(c) + gamma * torch.relu(closest_half_mean(d_an) - shift)

        perturbed = perturb(model, originals, objective, config, trains_batchnorm=self.trains_batchnorm,
                            stop=self._stop)
        embedded = model(torch.cat([perturbed, images[triplets.positive], images[triplets.negative]]))
        loss = self._training_loss(*embedded.split(count))
        return loss, perturbed, originals, clean_anchor, {}
