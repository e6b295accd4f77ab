"""COLO-TRIDE, the seed paper's method (SPEC §6), and its ablations (paper Table 3).

* **Collapseness** C of the clean mined triplets, with the paper's weighting (§3.2): more weight on
  samples near their anchors, w ∝ exp(−λ (d − min d)) per vector (``benchmark.telemetry``).
* **COLO** (collapse-oriented): the perturbation objective is multiplied by sign(−C): attack
  (raise hardness) when C ≤ 0, assist (lower hardness) when C > 0. Assist is disabled for the
  first ``assist_warmup`` fraction of the epochs so that naturally hard negatives are learned from
  first; while it is disabled a collapsed batch (C > 0) is not perturbed and trains on its clean
  images (the paper's "assist-part" without the assist).
* **TRIDE** (triplet decoupling): CAP and ANP alternate per mini-batch. CAP perturbs positives and
  negatives (anchors fixed). ANP perturbs anchors only, plus the top-ranked term of Eq. 12,
  γ·relu(T_an − S_aa): T_an the mean distance of the perturbed anchor to the closest half of the
  negatives, S_aa its distance to the *original, unperturbed* anchor; minimising it pulls the
  anchor toward its nearest negatives until it has moved as far from where it started as they
  are. γ = exp(−relu(−C)), and the term is off while collapsed (it would counteract the assist).
  ANP's training loss adds β·relu(closest-half d(a,p) − closest-half d(a,n) + 0.04) (Eq. 13).
* **Budget**: 16 PGD steps of size α_T·e/E (zero in epoch 0: no PGD is run then), with
  16·α_T = ``travel``·ε, ``travel`` = 2 as in the reference at 224 (8/255 with α 1/255): the
  ε-ball is reachable from half-way through training. At rob28 that is α_T = ε/8 = 0.0377, not
  the attack profile's 3/255 (which would cap the adversary at 0.62 ε). Semihard mining with
  margin m(e) = 0.2·(1 − e/2E)².

Deliberate choice where the paper leaves room: the objective that the sign multiplies is the
triplet hardness mean d(a,p) − mean d(a,n) of the perturbed triplets (the triplet loss without
its hinge), so easy triplets are moved as well as hard ones, and "attack"/"assist" mean exactly
"raise"/"lower" the hardness that the telemetry logs. There is no early stop.

The registered names are this one class with different defaults:

* ``colo-tride``; ``colo-cap`` and ``colo-anp`` (``phases="cap"`` / ``"anp"``): COLO with one phase;
* ``naive-tride``, ``naive-cap``, ``naive-anp`` (``colo=False``): the same perturbations always
  attacking, never flipping (the paper: these collapse);
* ``naive-at`` (``phases="joint"``, ``colo=False``): the whole triplet perturbed at once to raise
  its hardness, the "current perturbation method" the paper's Naive AT row stands for, under the
  same 16-step budget, so that it differs from ``naive-tride`` only by not decoupling.

Telemetry extras per step: ``direction`` (COLO's decision: +1 attack, −1 assist, 0 none),
``perturbed`` (1 when a perturbation was actually computed: 0 in epoch 0, where the step size is
0, and for a collapsed batch during the warm-up), ``clean_collapseness``, ``would_flip`` (C > 0:
a step where COLO acts, also logged for the naive ablations, which ignore it), the phase and the
miner margin.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from benchmark.collapseness import collapseness
from benchmark.defense_api import StepResult, TrainContext, clean_embeddings, embedding_shift, param, perturb
from benchmark.distances import mean_pairwise_distance
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

PHASE_MODES = ("alternate", "cap", "anp", "joint")
ATTACK, ASSIST, NO_PERTURBATION = 1, -1, 0


def top_ranked_gamma(clean_collapseness: float, colo: bool = True) -> float:
    """Weight γ = exp(−relu(−C)) of ANP's top-ranked term; with COLO it is 0 (off) while collapsed."""
    if colo and clean_collapseness > 0:
        return 0.0
    return math.exp(-max(-clean_collapseness, 0.0))


def anchor_top_ranked_term(anchor: torch.Tensor, original_anchor: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Eq. 12 without γ: relu(T_an − S_aa), T_an the mean distance of the (perturbed) anchors to the
    closest half of their negatives, S_aa the mean distance to the original, unperturbed anchors."""
    closest_negatives = closest_half_mean(row_distance(anchor, negative))
    shift = row_distance(anchor, original_anchor).mean()
    return torch.relu(closest_negatives - shift)


@DEFENSES.register("colo-tride", aliases=("colotride",),
                   description="collapse-oriented adversarial training with triplet decoupling (seed paper)")
@dataclass
class COLOTRIDE(AlternatingPhases):
    """Collapse-oriented sign flip + alternating candidate/anchor perturbations (SPEC §6)."""

    margin: float = param(0.2, low=0)  # triplet margin of the training loss
    miner_margin: float = param(0.2, low=0)  # base of the semihard margin schedule m(e)
    attention_lambda: float = param(0.0, low=0)  # λ of collapseness; 0: the run's λ (ctx.attention_lambda)
    colo: bool = param(True, choices=(True, False))  # False: never flip the sign (the naive ablations)
    # Fraction of the epochs during which assist is disabled (the paper gives no number; a
    # quarter keeps the first, easiest epochs purely adversarial).
    assist_warmup: float = param(0.25, low=0, high=1)
    # "alternate" (TRIDE), "cap" (CAP only), "anp" (ANP only), "joint" (the whole triplet at once)
    phases: str = param("alternate", choices=PHASE_MODES)
    top_ranked_weight: float = param(0.5, low=0)  # β of ANP's training term
    top_ranked_margin: float = param(0.04, low=0)
    # PGD steps × step size = travel × ε at the end of training (2: ε reached from half-way).
    travel: float = param(2.0, low=0, low_open=True)

    pgd_steps: ClassVar[int] = 16
    version: ClassVar[int] = 2

    def __post_init__(self) -> None:
        self.phases = str(self.phases).strip().lower()
        super().__post_init__()

    def clean_collapseness(self, clean: torch.Tensor, d_ap: torch.Tensor, d_an: torch.Tensor, lam: float) -> float:
        """The collapseness COLO decides on: the paper's, on absolute distances."""
        return float(collapseness(d_ap, d_an, lam))

    def next_phase(self) -> str:
        """``cap``, ``anp`` or ``joint`` for this step (alternating CAP/ANP under TRIDE)."""
        if self.phases != "alternate":
            return self.phases
        return "cap" if self._advance_phase() else "anp"

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
        clean_c = self.clean_collapseness(clean, d_ap, d_an, attention_lambda(self.attention_lambda, ctx))
        phase = self.next_phase()
        direction = self.direction(clean_c, ctx.progress)
        config = ctx.pgd_config(self.pgd_steps, alpha=tride_step_size(self.travel, ctx.epsilon, self.pgd_steps),
                                alpha_scale=ctx.progress)
        if direction == NO_PERTURBATION:
            config = dataclasses.replace(config, steps=0)
        perturbs = config.steps > 0 and config.alpha > 0 and config.epsilon > 0
        extras = {"phase_cap": float(phase == "cap"), "phase_anp": float(phase == "anp"),
                  "direction": float(direction), "perturbed": float(perturbs),
                  "assist": float(direction == ASSIST and perturbs), "clean_collapseness": clean_c,
                  "would_flip": float(clean_c > 0), "miner_margin": miner_margin}
        if phase == "cap":
            loss, perturbed, originals, reference = self._cap(model, images, clean, triplets, direction, config)
        elif phase == "anp":
            loss, perturbed, originals, reference = self._anp(model, images, clean, triplets, direction,
                                                              config, clean_c, extras)
        else:
            loss, perturbed, originals, reference = self._joint(model, images, clean, triplets, direction, config)
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
        """Anchor perturbation (+ the top-ranked term of Eq. 12), and Eq. 13 in the training loss."""
        count = len(triplets)
        originals = images[triplets.anchor].detach()
        original_anchor = clean[triplets.anchor]
        positive, negative = clean[triplets.positive], clean[triplets.negative]
        gamma = top_ranked_gamma(clean_c, self.colo)

        def objective(x: torch.Tensor) -> torch.Tensor:
            anchor = model(x)
            value = -direction * (row_distance(anchor, positive).mean() - row_distance(anchor, negative).mean())
            if gamma > 0:
                value = value + gamma * anchor_top_ranked_term(anchor, original_anchor, negative)
            return value

        perturbed = perturb(model, originals, objective, config, trains_batchnorm=self.trains_batchnorm)
        embedded = model(torch.cat([perturbed, images[triplets.positive], images[triplets.negative]]))
        anchor, positive_t, negative_t = embedded.split(count)
        top_ranked = top_ranked_term(row_distance(anchor, positive_t), row_distance(anchor, negative_t),
                                     self.top_ranked_margin)
        loss = triplet_loss(anchor, positive_t, negative_t, self.margin) + self.top_ranked_weight * top_ranked
        extras.update(top_ranked_gamma=gamma, top_ranked_loss=float(top_ranked.detach()))
        return loss, perturbed, originals, original_anchor

    def _joint(self, model, images, clean, triplets: Triplets, direction: int, config):
        """Anchors, positives and negatives perturbed together (no decoupling)."""
        count = len(triplets)
        stacked = torch.cat([triplets.anchor, triplets.positive, triplets.negative])
        originals = images[stacked].detach()

        def objective(x: torch.Tensor) -> torch.Tensor:
            anchor, positive, negative = model(x).split(count)
            return -direction * (row_distance(anchor, positive).mean() - row_distance(anchor, negative).mean())

        perturbed = perturb(model, originals, objective, config, trains_batchnorm=self.trains_batchnorm)
        loss = triplet_loss(*model(perturbed).split(count), self.margin)
        return loss, perturbed, originals, clean[stacked]


@DEFENSES.register("naive-tride", description="TRIDE without COLO: always attack, never flip (ablation; collapses)")
@dataclass
class NaiveTRIDE(COLOTRIDE):
    """Ablation: alternating CAP/ANP perturbations that always attack."""

    colo: bool = param(False, choices=(True, False))


@DEFENSES.register("colo-cap", description="COLO with the candidate perturbation (CAP) phase only (ablation)")
@dataclass
class COLOCAP(COLOTRIDE):
    """Ablation: COLO sign flip, every step a CAP step."""

    phases: str = param("cap", choices=PHASE_MODES)


@DEFENSES.register("colo-anp", description="COLO with the anchor perturbation (ANP) phase only (ablation)")
@dataclass
class COLOANP(COLOTRIDE):
    """Ablation: COLO sign flip, every step an ANP step."""

    phases: str = param("anp", choices=PHASE_MODES)


@DEFENSES.register("naive-cap", description="CAP only, always attack, no COLO (ablation; the paper: collapses)")
@dataclass
class NaiveCAP(COLOTRIDE):
    """Ablation (paper Table 3, Naive CAP): every step a CAP step that always attacks."""

    colo: bool = param(False, choices=(True, False))
    phases: str = param("cap", choices=PHASE_MODES)


@DEFENSES.register("naive-anp", description="ANP only, always attack, no COLO (ablation; the paper: collapses)")
@dataclass
class NaiveANP(COLOTRIDE):
    """Ablation (paper Table 3, Naive ANP): every step an ANP step that always attacks."""

    colo: bool = param(False, choices=(True, False))
    phases: str = param("anp", choices=PHASE_MODES)


@DEFENSES.register("naive-at", description="whole triplet perturbed to raise hardness, no COLO, no TRIDE "
                                           "(ablation: the paper's Naive AT; collapses)")
@dataclass
class NaiveAT(COLOTRIDE):
    """Ablation (paper Table 3, Naive AT): anchors, positives and negatives perturbed together to
    raise the hardness, always attacking, under the TRIDE family's 16-step budget."""

    colo: bool = param(False, choices=(True, False))
    phases: str = param("joint", choices=PHASE_MODES)


@DEFENSES.register("colo-tride-rel", description="COLO-TRIDE whose collapseness uses distances relative to the "
                                                 "batch's mean pairwise distance (scale-free ablation)")
@dataclass
class RelativeCOLOTRIDE(COLOTRIDE):
    """Ablation: COLO-TRIDE with a scale-free collapseness.

    The paper's collapseness weights distances by exp(−λ d) with λ in absolute units (10 for 28x28
    data). Once a model shrinks its embeddings into a cap a thousandth wide, every weight is the
    same, C equals the plain hardness (measured C/H = 1.000 on every shrunk entry), stays below 0,
    and COLO never acts. Here the distances are divided by the clean batch's mean pairwise distance
    before weighting, so λ means the same at every scale and C is in units of the batch's spread
    (which also sets the top-ranked weight γ = exp(−relu(−C))). Everything else is COLO-TRIDE's.
    For an unshrunk batch (spread about 1) it decides as COLO-TRIDE does.
    """

    version: ClassVar[int] = 1

    def clean_collapseness(self, clean: torch.Tensor, d_ap: torch.Tensor, d_an: torch.Tensor, lam: float) -> float:
        spread = mean_pairwise_distance(clean).clamp_min(1e-12)
        return float(collapseness(d_ap / spread, d_an / spread, lam))
