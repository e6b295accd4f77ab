"""Collapseness, the training quantity the COLO-TRIDE family decides on, and its per-dataset λ.

C is the attention-weighted mean d(a,p) minus the attention-weighted mean d(a,n) over a batch's
triplets. The seed paper's weighting (§3.2) puts more weight on samples near their anchors:
weights ∝ exp(−λ (d − min d)) per vector, a soft minimum. C > 0 means even the nearest negatives
are closer than the nearest positives: the batch is collapsing. The released CA-TRIDE code weights
the other way, ∝ exp(+λ (d − max d)) (a soft maximum, REFERENCE §4.4); ``weighting="far"`` gives
that one, which only ``ca-tride`` uses. The training telemetry (:mod:`benchmark.telemetry`) logs
the paper's C every step for every defense; λ is the cell's ``attention_lambda`` (recorded), by
default :data:`LAMBDA_BY_DATASET` or :data:`DEFAULT_LAMBDA_28`.
"""

from __future__ import annotations

import torch

DEFAULT_LAMBDA_28 = 10.0  # λ for 28x28 data: the CUB value, recorded with every run
LAMBDA_BY_DATASET = {"cub": 10.0, "cars": 9.5, "sop": 2.0}


WEIGHTINGS = ("near", "far")


def attention_mean(values: torch.Tensor, lam: float, weighting: str = "near") -> torch.Tensor:
    """Σ w_i v_i / Σ w_i, differentiable through the weights.

    ``near``: w_i = exp(−λ (v_i − min v)), most weight on the smallest distances (seed paper);
    ``far``: w_i = exp(λ (v_i − max v)), most weight on the largest (released CA-TRIDE code).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    sign = -1.0 if weighting == "near" else 1.0
    weights = torch.softmax(sign * lam * values, dim=0)  # softmax is shift-invariant: same weights
    return (weights * values).sum()


def collapseness(d_ap: torch.Tensor, d_an: torch.Tensor, lam: float, weighting: str = "near") -> torch.Tensor:
    """C = attention-weighted mean d(a,p) − attention-weighted mean d(a,n) (see the module docstring)."""
    return attention_mean(d_ap, lam, weighting) - attention_mean(d_an, lam, weighting)
