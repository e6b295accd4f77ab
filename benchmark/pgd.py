"""The one signed-gradient PGD loop shared by every attack and every adversarial defense.

x ← clip_[0,1]( Proj_{‖x - x0‖∞ ≤ ε}( x - α · sign(∇ₓ L(x)) ) ), η iterations, minimising L.
No random start unless asked for (REFERENCE §1.2). The caller decides the model mode: attacks
and defenses put the model in eval mode while perturbing.
"""

from __future__ import annotations

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
