"""A gradient-free attack: Square-style random search in the L∞ ball (Andriushchenko et al. 2020).

Gradient masking (quantised inputs, shattered or vanishing gradients) can stop every PGD variant
while leaving the model as attackable as before; an attack that never reads a gradient is the
standard check for it (Carlini et al. 2019, "On evaluating adversarial robustness"; AutoAttack
runs Square for the same reason). It minimises the same ranking losses as the gradient attacks,
per query, with a fixed budget of model evaluations:

* start at a vertical-stripe perturbation (each image column at +ε or −ε, as Square starts);
* each iteration, for every image, a random square window (its side shrinks on Square's schedule)
  is set to a random ±ε per channel around the clean image; the proposal is kept for the images
  whose own loss it lowers.

Every iterate lies in the ε-ball and in [0, 1]. The draws come from one CPU generator, so a run is
reproducible and does not depend on the device. Differences from Square: the loss is the attack's
ranking loss of each query (the attacks here have no margin loss), and the budget is small (a
sanity check, not the ranking evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from benchmark.errors import BenchmarkError
from benchmark.pgd import project

# Square's schedule of the fraction of pixels a window covers, for a 10,000-query budget: p halves
# at these iterations (rescaled to the budget actually used).
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_P_INIT = 0.8


def window_fraction(iteration: int, queries: int) -> float:
    """The fraction of the image a proposal's window covers at ``iteration`` of ``queries``."""
    scaled = int(iteration / max(queries, 1) * 10000)
    return _P_INIT / 2 ** sum(scaled > h for h in _HALVINGS)


def random_search(
    images: torch.Tensor,
    query_losses: Callable[[torch.Tensor], torch.Tensor],
    epsilon: float,
    queries: int,
    *,
    generator: torch.Generator,
) -> torch.Tensor:
    """Minimise each image's loss over the L∞ ε-ball around ``images`` [B, C, H, W] without gradients.

    ``query_losses(x)`` returns one loss per image, [B] (called without autograd); ``queries`` is
    the number of times it is called, the start included. Returns the best point found per image.
    """
    if images.dim() != 4:
        raise BenchmarkError(f"random search needs images shaped B×C×H×W, got {tuple(images.shape)}")
    if int(queries) != queries or queries < 1:
        raise BenchmarkError(f"random search needs a positive number of queries, got {queries!r}")
    origin = images.detach()
    if epsilon <= 0:
        return origin.clone()
    batch, channels, height, width = origin.shape
    device = origin.device
    with torch.no_grad():
        stripes = torch.randint(0, 2, (batch, channels, 1, width), generator=generator).float() * 2 - 1
        x = project(origin + epsilon * stripes.to(device), origin, epsilon)
        loss = query_losses(x)
        for iteration in range(1, int(queries)):
            side = max(1, min(height, width, int(round(math.sqrt(window_fraction(iteration, queries)
                                                                      * height * width)))))
            rows = torch.randint(0, height - side + 1, (batch,), generator=generator)
            cols = torch.randint(0, width - side + 1, (batch,), generator=generator)
            signs = (torch.randint(0, 2, (batch, channels), generator=generator).float() * 2 - 1).to(device)
            mask = torch.zeros(batch, 1, height, width, dtype=torch.bool)
            for b in range(batch):
                mask[b, :, rows[b]:rows[b] + side, cols[b]:cols[b] + side] = True
            mask = mask.to(device)
            proposal = torch.where(mask, origin + epsilon * signs[:, :, None, None], x)
            proposal = project(proposal, origin, epsilon)
            proposal_loss = query_losses(proposal)
            better = proposal_loss < loss
            x = torch.where(better[:, None, None, None], proposal, x)
            loss = torch.where(better, proposal_loss, loss)
    return x.detach()
