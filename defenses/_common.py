"""Pieces shared by the built-in TRIDE-family defenses (COLO-TRIDE, its ablations and CA-TRIDE):
the "top-ranked" terms, the step size, the per-dataset λ and the CAP/ANP alternation. The helpers
every defense (built-in or plugin) uses to perturb a batch, ``perturb``, ``clean_embeddings`` and
``embedding_shift``, are public in :mod:`benchmark.defense_api`; the defenses import them from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from benchmark.defense_api import (
    Defense,
    TrainContext,
)


def closest_half_mean(distances: torch.Tensor) -> torch.Tensor:
    """Mean of the ⌊B/2⌋ smallest entries (at least one): the "top-ranked" part of a batch."""
    k = max(1, distances.numel() // 2)
    return distances.topk(k, largest=False).values.mean()


def top_ranked_term(d_ap: torch.Tensor, d_an: torch.Tensor, margin: float = 0.04) -> torch.Tensor:
    """relu(mean closest-half d(a,p) − mean closest-half d(a,n) + margin).

    The two halves are chosen independently (not per triplet), as in the released CA-TRIDE code.
    """
    return torch.relu(closest_half_mean(d_ap) - closest_half_mean(d_an) + margin)


def tride_step_size(travel: float, epsilon: float, steps: int) -> float:
    """The TRIDE family's PGD step α_T, with steps·α_T = travel·ε before the e/E schedule.

    travel = 2 reproduces the reference at 224 (16 steps of 1/255 for ε = 8/255): the ε-ball is
    reachable from half-way through training.
    """
    return travel * epsilon / max(steps, 1)


def attention_lambda(parameter: float, ctx: TrainContext) -> float:
    """λ of collapseness: the defense's own value when set (> 0), else the run's (recorded) one."""
    return float(parameter) if parameter and parameter > 0 else float(ctx.attention_lambda)


@dataclass
class AlternatingPhases(Defense):
    """Base of the TRIDE family: CAP on the 1st, 3rd, 5th ... training step, ANP on the others.

    The alternation is state of the defense object (RobRank-style code flips a module-level
    flag); ``reset()`` starts again with CAP.
    """

    _next_phase_cap: bool = field(default=True, init=False, repr=False)

    def reset(self) -> None:
        self._next_phase_cap = True

    def _advance_phase(self) -> bool:
        """True for a CAP step; flips the alternation."""
        is_cap = self._next_phase_cap
        self._next_phase_cap = not is_cap
        return is_cap
