"""The one signed-gradient PGD loop shared by every attack and every adversarial defense.

x ← clip_[0,1]( Proj_{‖x - x0‖∞ ≤ ε}( x - α · sign(∇ₓ L(x)) ) ), η iterations, minimising L.
No random start unless asked for (REFERENCE §1.2). The caller decides the model mode: attacks
and defenses put the model in eval mode while perturbing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PGDConfig:
    epsilon: float
    alpha: float
    steps: int
    random_start: bool = False

    def __repr__(self) -> str:
        return (f"PGD(eps={self.epsilon:.6g}, alpha={self.alpha:.6g}, steps={self.steps}, "
                f"random_start={self.random_start})")


def project(x: torch.Tensor, origin: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Project into the L∞ ball of radius ε around ``origin`` and into [0, 1]."""
    return torch.min(torch.max(x, origin - epsilon), origin + epsilon).clamp_(0.0, 1.0)


def pgd(
    images: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    config: PGDConfig,
    *,
    generator: torch.Generator | None = None,
    stop: Callable[[int, float], bool] | None = None,
) -> torch.Tensor:
    """Minimise ``loss_fn(x)`` over the ε-ball around ``images``; return the perturbed images.

    ``loss_fn`` maps a batch of images to a scalar. ``stop(step, loss_value)`` may end the loop
    early (HM's plateau stop, CA-TRIDE's loss < 1e-5 stop); it is checked before each update.
    The returned tensor is detached.
    """
    origin = images.detach()
    if config.steps <= 0 or config.epsilon <= 0:
        return origin.clone()
    x = origin.clone()
    if config.random_start:
        noise = torch.rand(x.shape, generator=generator, device="cpu").to(x.device)
        x = project(x + (2 * noise - 1) * config.epsilon, origin, config.epsilon)
    for step in range(config.steps):
        x.requires_grad_(True)
        loss = loss_fn(x)
        if stop is not None and stop(step, float(loss.detach())):
            x = x.detach()
            break
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            x = project(x - config.alpha * grad.sign(), origin, config.epsilon)
    return x.detach()


def _apgd_checkpoints(steps: int) -> list[int]:
    """Iterations at which APGD may halve its step (Croce & Hein 2020): p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06), as fractions of the budget."""
    points = [0.0, 0.22]
    while points[-1] < 1.0:
        points.append(points[-1] + max(points[-1] - points[-2] - 0.03, 0.06))
    return sorted({min(steps, int(math.ceil(p * steps))) for p in points if p <= 1.0} - {0})


def apgd(
    images: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    config: PGDConfig,
    *,
    momentum: float = 0.75,
    rho: float = 0.75,
) -> torch.Tensor:
    """Minimise ``loss_fn`` with the adaptive step-size schedule of APGD (Croce & Hein 2020), the
    step rule of the standard strong attack in image classification, and return the best iterate.

    Start at step η = 2ε; each step takes a signed-gradient step z and moves with momentum,
    x ← P(x + m·(z − x) + (1 − m)·(x − x_prev)). At the checkpoints of :func:`_apgd_checkpoints` the
    step is halved, and the iterate reset to the best point so far, when fewer than ``rho`` of the
    steps since the last checkpoint lowered the loss, or when neither the step nor the best loss
    changed since then. Gradient evaluations: one at the start and one per iteration,
    ``config.steps`` in all, plus one more at each checkpoint that resets the iterate (so at most
    ``config.steps + len(_apgd_checkpoints(config.steps))``; callers that count passes count the
    calls of ``loss_fn``). ``config.alpha`` is not used.

    Difference from APGD: our attack losses are batch means, so the step size and the "best point"
    are shared by the batch rather than kept per image. The audit therefore keeps, per query, the
    worst case over this and the other runs (``attacks.audit``).
    """
    origin = images.detach()
    if config.steps <= 0 or config.epsilon <= 0:
        return origin.clone()
    epsilon = config.epsilon
    checkpoints = set(_apgd_checkpoints(config.steps))
    eta = 2.0 * epsilon

    def evaluate(x: torch.Tensor) -> tuple[float, torch.Tensor]:
        x = x.detach().requires_grad_(True)
        loss = loss_fn(x)
        (grad,) = torch.autograd.grad(loss, x)
        return float(loss.detach()), grad

    x, x_prev = origin.clone(), origin.clone()
    loss, grad = evaluate(x)
    best_x, best_loss = x.clone(), loss
    successes, last_loss = 0, loss
    eta_at_checkpoint, best_at_checkpoint, since = eta, best_loss, 0
    for step in range(1, config.steps):
        with torch.no_grad():
            z = project(x - eta * grad.sign(), origin, epsilon)
            blend = momentum if step > 1 else 1.0
            x_next = project(x + blend * (z - x) + (1 - blend) * (x - x_prev), origin, epsilon)
        x_prev, x = x, x_next
        loss, grad = evaluate(x)
        successes += loss < last_loss
        last_loss = loss
        since += 1
        if loss < best_loss:
            best_x, best_loss = x.clone(), loss
        if step in checkpoints:
            stalled = successes < rho * since
            unchanged = eta == eta_at_checkpoint and best_loss == best_at_checkpoint
            if stalled or unchanged:
                eta /= 2.0
                x, x_prev = best_x.clone(), best_x.clone()
                loss, grad = evaluate(x)
            eta_at_checkpoint, best_at_checkpoint, successes, since = eta, best_loss, 0, 0
    return best_x.detach()
