"""COLO-TRIDE, the seed paper's method (SPEC §6), and its ablations.

* **COLO** (collapse-oriented): the perturbation objective is multiplied by sign(−C), with C the
  collapseness of the clean mined triplets: attack (raise hardness) when C ≤ 0, assist (lower
  hardness) when C > 0. Assist is disabled for the first ``assist_warmup`` fraction of the epochs
  so that naturally hard negatives are learned from first; while it is disabled a collapsed batch
  (C > 0) is not perturbed at all and trains on its clean images.
* **TRIDE** (triplet decoupling): CAP and ANP alternate per mini-batch.
  CAP perturbs positives and negatives (anchors fixed); ANP perturbs anchors only, plus the
  top-ranked pull of the anchor toward the closest half of the negatives, weighted
  γ = exp(−relu(−C)) and off while collapsed; ANP's training loss adds
  β·relu(closest-half d(a,p) − closest-half d(a,n) + 0.04).
* **Budget**: 16 PGD steps with step size α·e/E (zero in epoch 0: no PGD is run then), semihard
  mining with margin m(e) = 0.2·(1 − e/2E)².

Deliberate choice where the paper leaves room: the objective that the sign multiplies is the
triplet hardness mean d(a,p) − mean d(a,n) of the perturbed triplets (the triplet loss without
its hinge), so easy triplets are moved as well as hard ones, and "attack"/"assist" mean exactly
"raise"/"lower" the hardness that the telemetry logs. There is no early stop.

The four registered names are this one class with different defaults: ``colo-tride``;
``naive-tride`` (``colo=False``: always attack, expected to collapse); ``colo-cap`` and
``colo-anp`` (``phases="cap"`` / ``"anp"``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from benchmark.defense import StepResult, TrainContext
from benchmark.errors import BenchmarkError
from benchmark.losses import (
    Triplets,
    gradual_margin,
    mine_semihard,
    row_distance,
    triplet_distances,
    triplet_loss,
)
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

PHASE_MODES = ("alternate", "cap", "anp")
ATTACK, ASSIST, NO_PERTURBATION = 1, -1, 0


def top_ranked_gamma(clean_collapseness: float) -> float:
    """Weight γ = exp(−relu(−C)) of ANP's top-ranked pull; 0 (the pull is off) while collapsed."""
    if clean_collapseness > 0:
        return 0.0
    return math.exp(-max(-clean_collapseness, 0.0))


@DEFENSES.register("colo-tride", aliases=("colotride",),
                   description="collapse-oriented adversarial training with triplet decoupling (seed paper)")
@dataclass
class COLOTRIDE(AlternatingPhases):
    """Collapse-oriented sign flip + alternating candidate/anchor perturbations (SPEC §6)."""

    margin: float = 0.2  # triplet margin of the training loss
    miner_margin: float = 0.2  # base of the semihard margin schedule m(e)
    attention_lambda: float = 0.0  # λ of collapseness; ≤ 0: the run's λ (ctx.attention_lambda)
    colo: bool = True  # False: never flip the sign (always attack), the naive-tride ablation
    # Fraction of the epochs during which assist is disabled (the paper gives no number; a
    # quarter keeps the first, easiest epochs purely adversarial).
    assist_warmup: float = 0.25
    phases: str = "alternate"  # "alternate", "cap" (CAP only) or "anp" (ANP only)
    top_ranked_weight: float = 0.5  # β of ANP's training term
    top_ranked_margin: float = 0.04

    pgd_steps: ClassVar[int] = 16

    def __post_init__(self) -> None:
        self.phases = str(self.phases).strip().lower()
        if self.phases not in PHASE_MODES:
            raise BenchmarkError(f"phases={self.phases!r}: expected one of {', '.join(PHASE_MODES)}")
        if not 0.0 <= self.assist_warmup <= 1.0:
            raise BenchmarkError(f"assist_warmup={self.assist_warmup!r}: expected a fraction in [0, 1]")

    def next_phase_is_cap(self) -> bool:
        """Whether this step perturbs candidates (CAP) rather than anchors (ANP)."""
        if self.phases == "cap":
            return True
        if self.phases == "anp":
            return False
        return self._advance_phase()

    def direction(self, clean_collapseness: float, progress: float) -> int:
        """+1 attack, −1 assist, 0 no perturbation (a collapsed batch while assist is disabled)."""
        if not self.colo or clean_collapseness <= 0:
            return ATTACK
        return NO_PERTURBATION if progress < self.assist_warmup else ASSIST

    def training_step(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      ctx: TrainContext) -> StepResult:
        clean = clean_embeddings(model, images)
        miner_margin = gradual_margin(ctx.epoch, ctx.num_epochs, self.miner_margin)
        triplets = mine_semihard(clean, labels, margin=miner_margin, generator=ctx.generator)
        d_ap, d_an = triplet_distances(clean, triplets)
        clean_c = float(collapseness(d_ap, d_an, attention_lambda(self.attention_lambda, ctx)))
        is_cap = self.next_phase_is_cap()
        direction = self.direction(clean_c, ctx.progress)
        config = ctx.pgd_config(self.pgd_steps, alpha_scale=ctx.progress)
        if direction == NO_PERTURBATION:
            config = dataclasses.replace(config, steps=0)
        extras = {"phase_cap": float(is_cap), "direction": float(direction),
                  "assist": float(direction == ASSIST), "clean_collapseness": clean_c,
                  "miner_margin": miner_margin}
        if is_cap:
            loss, perturbed, originals, reference = self._cap(model, images, clean, triplets, direction, config)
        else:
            loss, perturbed, originals, reference = self._anp(model, images, clean, triplets, direction,
                                                              config, clean_c, extras)
        shift = embedding_shift(model, perturbed, reference, trains_batchnorm=self.trains_batchnorm)
        return StepResult(loss=loss, embeddings=clean, triplets=triplets, embedding_shift=shift,
                          perturbed=perturbed, originals=originals, extras=extras)

    def _cap(self, model, images, clean, triplets: Triplets, direction: int, config):
        """Candidate perturbation: positives and negatives move, the (clean) anchor is fixed."""
        count = len(triplets)
        candidates = torch.cat([triplets.positive, triplets.negative])
        originals = images[candidates].detach()
        anchor = clean[triplets.anchor]

        def objective(x: torch.Tensor) -> torch.Tensor:
            positive, negative = model(x).split(count)
            hardness = row_distance(anchor, positive).mean() - row_distance(anchor, negative).mean()
            return -direction * hardness  # PGD minimises: attack raises hardness, assist lowers it

        perturbed = perturb(model, originals, objective, config, trains_batchnorm=self.trains_batchnorm)
        embedded = model(torch.cat([images[triplets.anchor], perturbed]))
        loss = triplet_loss(*embedded.split(count), self.margin)
        return loss, perturbed, originals, clean[candidates]

    def _anp(self, model, images, clean, triplets: Triplets, direction: int, config, clean_c: float,
             extras: dict[str, float]):
        """Anchor perturbation (+ top-ranked pull), and the top-ranked term in the training loss."""
        count = len(triplets)
        originals = images[triplets.anchor].detach()
        positive, negative = clean[triplets.positive], clean[triplets.negative]
        gamma = top_ranked_gamma(clean_c)

        def objective(x: torch.Tensor) -> torch.Tensor:
            anchor = model(x)
            d_ap, d_an = row_distance(anchor, positive), row_distance(anchor, negative)
            value = -direction * (d_ap.mean() - d_an.mean())
            if gamma > 0:  # pull the anchor toward its closest negatives (raises hardness too)
                value = value + gamma * closest_half_mean(d_an)
            return value

        perturbed = perturb(model, originals, objective, config, trains_batchnorm=self.trains_batchnorm)
        embedded = model(torch.cat([perturbed, images[triplets.positive], images[triplets.negative]]))
        anchor, positive_t, negative_t = embedded.split(count)
        top_ranked = top_ranked_term(row_distance(anchor, positive_t), row_distance(anchor, negative_t),
                                     self.top_ranked_margin)
        loss = triplet_loss(anchor, positive_t, negative_t, self.margin) + self.top_ranked_weight * top_ranked
        extras.update(top_ranked_gamma=gamma, top_ranked_loss=float(top_ranked.detach()))
        return loss, perturbed, originals, clean[triplets.anchor]


@DEFENSES.register("naive-tride", description="TRIDE without COLO: always attack, never flip (ablation; collapses)")
@dataclass
class NaiveTRIDE(COLOTRIDE):
    """Ablation: alternating CAP/ANP perturbations that always attack."""

    colo: bool = False


@DEFENSES.register("colo-cap", description="COLO with the candidate perturbation (CAP) phase only (ablation)")
@dataclass
class COLOCAP(COLOTRIDE):
    """Ablation: COLO sign flip, every step a CAP step."""

    phases: str = "cap"


@DEFENSES.register("colo-anp", description="COLO with the anchor perturbation (ANP) phase only (ablation)")
@dataclass
class COLOANP(COLOTRIDE):
    """Ablation: COLO sign flip, every step an ANP step."""

    phases: str = "anp"
