"""CA-TRIDE as released with the ICML'24 paper (REFERENCE §4.4), made runnable.

CAP (odd steps) perturbs positives and negatives with loss relu(−C), which attacks until the
attention-weighted triplet is collapsed; ANP (even steps) perturbs anchors with
relu(C) + γ·relu(T_an − S_aa), γ = exp(−relu(−C)) as a constant. Both phases use 16 PGD steps of
size α_T·e/E with 16·α_T = 2ε (the released code's 8/255 and 1/255 at 224; ε/8 at rob28, so the
ε-ball is reachable from half-way through training) and stop as soon as their loss falls below
1e-5 (possibly before the first step).

Collapseness here is the released code's: attention weights ∝ exp(+λ (d − max d)), a soft maximum
that counts the *farthest* samples most (REFERENCE §4.4). The seed paper's COLO-TRIDE weights the
samples nearest their anchors instead (``colo-tride``); this defense keeps the released weighting
on purpose, since it reproduces the released code.
The training loss is the triplet loss on the perturbed triplet plus 0.5·relu(closest-half
d(a,p) − closest-half d(a,n) + 0.04), which the released code adds to every adversarial loss.

Fixed relative to the snapshot (REFERENCE §4.4 caveats): λ, the phase flag and the schedule are
fields/arguments instead of module globals and mismatched call signatures; nothing is logged to
a hard-coded path; the dead "assist" code path is not reproduced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from benchmark.collapseness import collapseness
from benchmark.defense_api import StepResult, TrainContext, clean_embeddings, embedding_shift, param, perturb
from benchmark.losses import (
    Triplets,
    gradual_margin,
    mine_semihard,
    row_distance,
    triplet_distances,
    triplet_loss,
)
from benchmark.registry import DEFENSES

from ._common import (
    AlternatingPhases,
    attention_lambda,
    closest_half_mean,
    top_ranked_term,
    tride_step_size,
)


@DEFENSES.register("ca-tride", aliases=("catride",),
                   description="released CA-TRIDE code: collapse-aware CAP/ANP alternation, top-ranked term")
@dataclass
class CATRIDE(AlternatingPhases):
    """The released CA-TRIDE training step (``pnp_training_step`` with ``pgtripletN``)."""

    margin: float = param(0.2, low=0)
    miner_margin: float = param(0.2, low=0)  # base of the gradual-hard margin m(e) = 0.2 (1 − e/2E)²
    attention_lambda: float = param(0.0, low=0)  # λ; 0: the run's λ (ctx.attention_lambda)
    top_ranked_weight: float = param(0.5, low=0)
    top_ranked_margin: float = param(0.04, low=0)
    stop_loss: float = param(1e-5, low=0)  # a phase's PGD stops once its loss is below this
    travel: float = param(2.0, low=0, low_open=True)  # PGD steps × step size = travel × ε

    pgd_steps: ClassVar[int] = 16
    version: ClassVar[int] = 2

    _steps_run: int = field(default=0, init=False, repr=False)  # PGD updates of the last phase (telemetry)

    def training_step(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      ctx: TrainContext) -> StepResult:
        lam = attention_lambda(self.attention_lambda, ctx)
        clean = clean_embeddings(model, images)
        miner_margin = gradual_margin(ctx.epoch, ctx.num_epochs, self.miner_margin)
        triplets = mine_semihard(clean, labels, margin=miner_margin, generator=ctx.generator)
        clean_c = float(collapseness(*triplet_distances(clean, triplets), lam, weighting="far"))
        is_cap = self._advance_phase()
        config = ctx.pgd_config(self.pgd_steps, alpha=tride_step_size(self.travel, ctx.epsilon, self.pgd_steps),
                                alpha_scale=ctx.progress)
        phase = self._cap if is_cap else self._anp
        self._steps_run = 0
        loss, perturbed, originals, reference, extras = phase(model, images, clean, triplets, config, lam)
        moved = bool((perturbed != originals).any())
        extras.update(phase_cap=float(is_cap), miner_margin=miner_margin, clean_collapseness=clean_c,
                      pgd_steps_run=float(self._steps_run), perturbed=float(moved),
                      would_flip=float(clean_c > 0))
        shift = embedding_shift(model, perturbed, reference, trains_batchnorm=self.trains_batchnorm)
        return StepResult(loss=loss, embeddings=clean, triplets=triplets, embedding_shift=shift,
                          perturbed=perturbed, originals=originals, extras=extras)

    def _stop(self, step: int, loss: float) -> bool:
        stop = loss < self.stop_loss
        self._steps_run = step + (0 if stop else 1)  # updates actually made
        return stop

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
            return torch.relu(-collapseness(row_distance(anchor, positive), row_distance(anchor, negative), lam,
                                             weighting="far"))

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
            c = collapseness(row_distance(anchor, positive), d_an, lam, weighting="far")
            gamma = math.exp(min(float(c.detach()), 0.0))  # a constant, as in the released code
            shift = row_distance(anchor, clean_anchor).mean()
            return torch.relu(c) + gamma * torch.relu(closest_half_mean(d_an) - shift)

        perturbed = perturb(model, originals, objective, config, trains_batchnorm=self.trains_batchnorm,
                            stop=self._stop)
        embedded = model(torch.cat([perturbed, images[triplets.positive], images[triplets.negative]]))
        loss = self._training_loss(*embedded.split(count))
        return loss, perturbed, originals, clean_anchor, {}
