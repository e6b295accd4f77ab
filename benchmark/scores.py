"""Summary scores over attack results: ERS, ARS and WHM (SPEC §5, REFERENCE §3).

Pure functions on plain numbers. Attack values use these units (the units the attacks report):

=========  ==========================================  ==============
key        meaning                                     unit / range
=========  ==========================================  ==============
CA+, CA-   candidate attack, mean rank percentile      percent, 0–100
QA+, QA-   query attack, mean rank percentile          percent, 0–100
TMA        targeted mismatch, mean cosine similarity   0–1
ES:D       embedding shift, mean L2 shift              0–2 (unit vectors)
ES:R       R@1 after the embedding-shift attack        percent
LTM, GTM   R@1 after the misranking attacks            percent
GTT        retain@4 after top-1 translocation          percent
=========  ==========================================  ==============
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from .errors import BenchmarkError

ERS_KEYS: tuple[str, ...] = ("CA+", "CA-", "QA+", "QA-", "TMA", "ES:D", "ES:R", "LTM", "GTM", "GTT")

# Each attack value mapped to a 0–100 "robustness" term, 100 = perfectly robust (REFERENCE §3).
# CA+/QA+ double because a random ranking puts the target at the 50th percentile.
ERS_TERMS: Mapping[str, Callable[[float], float]] = {
    "CA+": lambda v: 2.0 * v,
    "CA-": lambda v: 100.0 - v,
    "QA+": lambda v: 2.0 * v,
    "QA-": lambda v: 100.0 - v,
    "TMA": lambda v: 100.0 * (1.0 - v),
    "ES:D": lambda v: 50.0 * (2.0 - v),
    "ES:R": lambda v: v,
    "LTM": lambda v: v,
    "GTM": lambda v: v,
    "GTT": lambda v: v,
}

ARS_KEYS: tuple[str, ...] = ("CA+", "CA-", "QA+", "QA-", "ES:R", "LTM", "GTM", "GTT")

# What a fully successful attack would reach, in the units above (SPEC §5).
ARS_GOALS: Mapping[str, float] = {
    "CA+": 0.0, "QA+": 0.0,  # the pushed-up candidate ranked first
    "CA-": 100.0, "QA-": 100.0,  # the pushed-down candidate ranked last
    "ES:R": 0.0, "LTM": 0.0, "GTM": 0.0,  # no query retrieves a correct top-1
    "GTT": 0.0,  # no original top-1 stays in the top-4
}


def _require(values: Mapping[str, float], keys: tuple[str, ...], what: str) -> None:
    missing = [key for key in keys if key not in values]
    if missing:
        raise BenchmarkError(f"{what} needs the attack values {', '.join(missing)} (missing); "
                             f"required keys: {', '.join(keys)}")


def _finite(value: float, name: str) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise BenchmarkError(f"{name} must be a finite number, got {value}")
    return value


def ers_terms(values: Mapping[str, float]) -> dict[str, float]:
    """The ten rescaled ERS terms (0–100, higher = more robust), keyed like ``ERS_KEYS``.

    Terms: 2·CA+, 100−CA−, 2·QA+, 100−QA−, 100·(1−TMA), 50·(2−ES:D), ES:R, LTM, GTM, GTT.
    No clipping, as in the reference: an ES:D above 2 (unnormalised embeddings) gives a negative term.
    Extra keys in ``values`` are ignored; missing ones raise :class:`BenchmarkError`.
    """
    _require(values, ERS_KEYS, "ERS")
    return {key: ERS_TERMS[key](_finite(values[key], key)) for key in ERS_KEYS}


def ers(values: Mapping[str, float]) -> float:
    """Empirical Robustness Score: the mean of :func:`ers_terms` (printed with 1 decimal)."""
    terms = ers_terms(values)
    return sum(terms.values()) / len(terms)


def ars_attack(before: float, after: float, goal: float) -> float:
    """ARS of one attack: the share (percent) of its intended change that the attack failed to make.

    ARS = 100·(1 − |after − before| / |goal − before|), clipped to [0, 100] (SPEC §5), where the
    change counts only in the direction of the goal: we use the signed progress
    (after − before) / (goal − before), which equals the absolute ratio whenever the attack moved
    the value towards its goal. So an attack that reaches or overshoots its goal scores 0, one
    that changes nothing scores 100, and one that moves the value *away* from its goal also
    scores 100 (it achieved none of the intended change) — with plain absolute values such a
    move would be penalised as if it were progress, and the upper clip would never act.
    When ``goal == before`` the attack had nothing to change, so the model counts as fully
    robust: 100.
    """
    before, after, goal = (_finite(before, "before"), _finite(after, "after"), _finite(goal, "goal"))
    if goal == before:
        return 100.0
    progress = (after - before) / (goal - before)
    return min(100.0, max(0.0, 100.0 * (1.0 - progress)))


def ars(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """ARS per attack for every key of ``ARS_KEYS`` present in both ``before`` and ``after``.

    ``before`` holds the same measurements on clean inputs with the same selections (nominally
    50 for CA+/QA+, about 1 for CA−/QA−, the clean R@1 for ES:R/LTM/GTM, 100 for GTT).
    """
    return {key: ars_attack(before[key], after[key], ARS_GOALS[key])
            for key in ARS_KEYS if key in before and key in after}


def ars_mean(before: Mapping[str, float], after: Mapping[str, float]) -> float:
    """Averaged ARS over CA+, CA−, QA+, QA−, ES:R, LTM, GTM, GTT (TMA and ES:D are not part of it).

    Every one of the eight must be present in both mappings, else :class:`BenchmarkError`.
    """
    _require(before, ARS_KEYS, "ARS (before values)")
    _require(after, ARS_KEYS, "ARS (after values)")
    per_attack = ars(before, after)
    return sum(per_attack.values()) / len(per_attack)


def whm(train_r1: float, test_r1: float, a: float = 0.5) -> float:
    """Weighted harmonic mean of train-split and test-split R@1: (1+a)·Ms·Mt / (a·Mt + Ms).

    Ms = ``train_r1``, Mt = ``test_r1``; equivalently (1+a) / (a/Ms + 1/Mt), so a < 1 weights the
    test split more. Unit-agnostic (fractions in, fraction out). Defined as 0 when the
    denominator is 0 (both recalls 0). Negative recalls or a negative ``a`` are rejected.
    """
    train_r1, test_r1, a = _finite(train_r1, "train_r1"), _finite(test_r1, "test_r1"), _finite(a, "a")
    if train_r1 < 0 or test_r1 < 0 or a < 0:
        raise BenchmarkError(f"WHM needs non-negative recalls and weight, got train_r1={train_r1}, "
                             f"test_r1={test_r1}, a={a}")
    denominator = a * test_r1 + train_r1
    if denominator == 0.0:
        return 0.0
    return (1.0 + a) * train_r1 * test_r1 / denominator
