"""Training-state measurements logged every step for every defense (SPEC §6).

* collapseness C (:mod:`benchmark.collapseness`, the paper's weighting): C > 0 means even the
  nearest negatives are closer than the nearest positives, the batch is collapsing.
* hardness H = mean d(a,p) - mean d(a,n).
* separability = (mean d(a,n) - mean d(a,p)) / mean pairwise distance.
* mean embedding distance over all pairs of the batch.
* embedding shift caused by a defense's perturbation (reported by the defense).
"""

from __future__ import annotations

import torch

from .collapseness import collapseness
from .distances import mean_pairwise_distance
from .losses import Triplets, triplet_distances


def batch_telemetry(embeddings: torch.Tensor, triplets: Triplets, lam: float) -> dict[str, float]:
    """Collapseness, hardness, separability and mean distance of a batch of triplets."""
    with torch.no_grad():
        d_ap, d_an = triplet_distances(embeddings, triplets)
        mean_distance = mean_pairwise_distance(embeddings)
        hardness = d_ap.mean() - d_an.mean()
        return {
            "collapseness": float(collapseness(d_ap, d_an, lam)),
            "hardness": float(hardness),
            "separability": float(-hardness / mean_distance.clamp_min(1e-12)),
            "mean_distance": float(mean_distance),
        }


def is_collapsed(separability: list[float], tail_fraction: float = 0.25, threshold: float = 0.0) -> bool:
    """A run is *collapsed* when the median separability over the last ``tail_fraction`` of its
    steps is ≤ ``threshold``: for most of the end of training positives were no closer to their
    anchors than negatives. The median ignores a few noisy batches either way."""
    if not separability:
        return False
    tail = separability[-max(1, int(round(len(separability) * tail_fraction))):]
    return float(torch.tensor(tail).median()) <= threshold


# The *entangled* verdict (the paper's second collapse signature): the median separability over
# the last quarter of the steps after perturbations started is at or below this. Separability is
# scale-free (it divides by the batch's mean distance); 0 means negatives are as close to their
# anchors as positives, and "near it" is taken as 0.05 (every entry measured here ends at 0.17 or
# more, natural training at 0.64–0.71).
ENTANGLED_SEPARABILITY = 0.05


def perturbation_start(records: list[dict[str, float]]) -> int:
    """Index of the first step on which the defense perturbed its inputs (0 when it never reports
    it: defenses without the ``x:perturbed`` extra perturb from the first step or never)."""
    for i, record in enumerate(records):
        perturbed = record.get("x:perturbed")
        if perturbed is None:
            return 0
        if float(perturbed) > 0:
            return i
    return 0


def training_summary(records: list[dict[str, float]]) -> dict[str, float]:
    """Per-run numbers stored with a cell's rows (``attack == "training"``).

    For every defense: ``steps``, ``min_separability`` (smoothed over 5 % of the steps, so one
    noisy batch does not decide it), ``tail_separability`` (the median over the last 25 %, the
    collapse rule's number) and ``max_collapseness`` / ``positive_collapseness_share`` of the
    logged (paper) collapseness. For defenses that report them (the COLO-TRIDE family, CA-TRIDE):

    * ``perturbed_share``: steps on which a perturbation was computed at all;
    * ``colo_attack_share``, ``colo_assist_share``, ``colo_skip_share``: steps that attacked,
      assisted, or trained on clean images (no perturbation: epoch 0's zero step size, or a
      collapsed batch while assist is disabled); they add up to 1;
    * ``colo_acted_share``: steps on which COLO changed the perturbation (assist or skip because
      the clean batch was collapsing, C > 0); ``would_flip_share``: steps whose clean C > 0, also
      for the naive ablations, which ignore it; ``clean_collapseness_max``.

    The two collapse signatures of the seed paper (§4.2), kept apart:

    * shrinkage: ``start_mean_distance`` (median batch mean distance over the first 5 % of the
      steps), ``end_mean_distance`` (over the last 25 %) and ``spread_vs_start`` = end / start;
    * entanglement: ``entangled_separability``, the median separability over the last 25 % of the
      steps counted from the first perturbed step, and ``entangled`` (1 when it is at or below
      :data:`ENTANGLED_SEPARABILITY`).
    """
    if not records:
        return {}

    def column(key: str) -> torch.Tensor | None:
        values = [r.get(key) for r in records]
        if any(v is None for v in values):
            return None
        return torch.tensor([float(v) for v in values], dtype=torch.float64)

    out: dict[str, float] = {"steps": float(len(records))}
    separability = column("separability")
    if separability is not None:
        window = max(1, len(separability) // 20)
        smoothed = separability.unfold(0, window, 1).mean(dim=1) if len(separability) >= window else separability
        out["min_separability"] = float(smoothed.min())
        tail = separability[-max(1, int(round(len(separability) * 0.25))):]
        out["tail_separability"] = float(tail.median())
        late = separability[perturbation_start(records):]
        late_tail = late[-max(1, int(round(len(late) * 0.25))):]
        out["entangled_separability"] = float(late_tail.median())
        out["entangled"] = float(out["entangled_separability"] <= ENTANGLED_SEPARABILITY)
    distance = column("mean_distance")
    if distance is not None:
        start = float(distance[:max(1, int(round(len(distance) * 0.05)))].median())
        end = float(distance[-max(1, int(round(len(distance) * 0.25))):].median())
        out["start_mean_distance"], out["end_mean_distance"] = start, end
        out["spread_vs_start"] = end / start if start > 0 else float("nan")
    collapse = column("collapseness")
    if collapse is not None:
        out["max_collapseness"] = float(collapse.max())
        out["positive_collapseness_share"] = float((collapse > 0).double().mean())
    perturbed = column("x:perturbed")
    if perturbed is not None:
        out["perturbed_share"] = float(perturbed.mean())
    direction = column("x:direction")
    if direction is not None and perturbed is not None:
        moved = perturbed > 0
        out["colo_attack_share"] = float((moved & (direction > 0)).double().mean())
        out["colo_assist_share"] = float((moved & (direction < 0)).double().mean())
        out["colo_skip_share"] = float((~moved).double().mean())
        out["colo_acted_share"] = float((direction <= 0).double().mean())
    would_flip = column("x:would_flip")
    if would_flip is not None:
        out["would_flip_share"] = float(would_flip.mean())
    clean_c = column("x:clean_collapseness")
    if clean_c is not None:
        out["clean_collapseness_max"] = float(clean_c.max())
    steps_run = column("x:pgd_steps_run")
    if steps_run is not None:
        out["mean_pgd_steps_run"] = float(steps_run.mean())
    return out
