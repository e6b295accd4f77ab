"""Pieces shared by the built-in defenses: clean embeddings, the perturbation wrapper around the
shared PGD loop, the embedding shift and the "top-ranked" triplet term.

Every adversarial defense perturbs through :func:`perturb`, which puts the model in eval mode,
runs :func:`benchmark.pgd.pgd` and restores the training mode the defense asked for, so the
model-mode convention of REFERENCE §4.0 lives in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from benchmark.defense import Defense, TrainContext
from benchmark.losses import row_distance
from benchmark.pgd import PGDConfig, pgd


def clean_embeddings(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Embeddings of the clean batch in eval mode, without gradient (the attacker's view)."""
    model.eval()
    with torch.no_grad():
        return model(images)


def perturb(model: torch.nn.Module, images: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor],
            config: PGDConfig, *, trains_batchnorm: bool,
            stop: Callable[[int, float], bool] | None = None) -> torch.Tensor:
    """Minimise ``loss_fn`` over the ε-ball around ``images`` with the model in eval mode.

    The model is put back into training mode (``set_train_mode(adversarial=trains_batchnorm)``)
    afterwards, even if the loss raises. A zero step size means no perturbation at all (the
    CA-/COLO-TRIDE schedule in epoch 0), so no PGD step is spent on it.
    """
    if config.steps <= 0 or config.epsilon <= 0 or config.alpha <= 0:
        return images.detach().clone()
    model.eval()
    try:
        return pgd(images, loss_fn, config, stop=stop)
    finally:
        set_train_mode(model, trains_batchnorm)


def set_train_mode(model: torch.nn.Module, trains_batchnorm: bool) -> None:
    """Training mode for the training forward; plain ``nn.Module``s just get ``train()``."""
    if hasattr(model, "set_train_mode"):
        model.set_train_mode(adversarial=trains_batchnorm)
    else:
        model.train()


def embedding_shift(model: torch.nn.Module, perturbed: torch.Tensor, clean: torch.Tensor,
                    *, trains_batchnorm: bool) -> float:
    """Mean ‖f̂(x̃) − f̂(x)‖ with ``clean`` the eval-mode embeddings of the matching clean images.

    Measured in eval mode (one extra forward without gradient) so that a defense which trains
    BatchNorm does not report a shift caused by batch statistics instead of the perturbation.
    """
    model.eval()
    try:
        with torch.no_grad():
            return float(row_distance(model(perturbed), clean).mean())
    finally:
        set_train_mode(model, trains_batchnorm)


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
