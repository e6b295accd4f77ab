"""Summary scores over attack results: ERS, ARS and WHM (SPEC §5, REFERENCE §3).

Pure functions on plain numbers. Attack values use these units (the units the attacks report):

=========  ==========================================  ==============
key        meaning                                     unit / range
=========  ==========================================  ==============
CA+, CA-   candidate attack, mean rank percentile      percent, 0–100
QA+, QA-   query attack, mean rank percentile          percent, 0–100
TMA        targeted mismatch, mean cosine similarity   0–1
TMA-centred  the same cosine, centred on the gallery   −1–1
ES:D       embedding shift, mean L2 shift              0–2 (unit vectors)
ES:D-rel   the shift × √2 / the gallery's spread       ≥ 0 (≈ ES:D when isotropic)
ES:R       R@1 after the embedding-shift attack        percent
LTM, GTM   R@1 after the misranking attacks            percent
GTT        retain@4 after top-1 translocation          percent
=========  ==========================================  ==============

Two ERS definitions, one ranked and one for comparison with published numbers:

* **ERS** (the ranked score) is scale-free: it uses ``TMA-centred`` and ``ES:D-rel`` for the two
  terms that RobRank measures in absolute units, so it does not change when a model's embeddings
  are mapped by a transformation that keeps every ranking (such as shrinking them into a tiny
  cap, which an absolute distance rewards and a raw cosine punishes). Those two terms are clipped
  to [0, 100]: a relative shift can exceed 2 and a centred cosine can be negative.
* **ERS (RobRank)**, :func:`ers_robrank`: REFERENCE §3 exactly (raw TMA, absolute ES:D, no
  clipping); it recomputes the published numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from .errors import BenchmarkError

# The ranked ERS (scale-free) and RobRank's protocol ERS: the same ten attacks, two of them measured
# differently. ``ERS_KEYS`` is the ranked one.
ERS_KEYS: tuple[str, ...] = ("CA+", "CA-", "QA+", "QA-", "TMA-centred", "ES:D-rel", "ES:R", "LTM", "GTM", "GTT")
ROBRANK_ERS_KEYS: tuple[str, ...] = ("CA+", "CA-", "QA+", "QA-", "TMA", "ES:D", "ES:R", "LTM", "GTM", "GTT")
# Every attack value that enters either definition, in board order.
SCORED_KEYS: tuple[str, ...] = ("CA+", "CA-", "QA+", "QA-", "TMA-centred", "TMA", "ES:D-rel", "ES:D", "ES:R", "LTM",
                                "GTM", "GTT")

# The stored score metrics: the ranked ERS and the protocol one.
RANKED_SCORE = "ERS"
ROBRANK_SCORE = "ERS:RobRank"
# The same two under the strong evaluation (benchmark.strong_eval): per query the worst case over its
# runs. STRONG_SCORE is what the boards rank by.
STRONG_SCORE = "ERS:strong"
ROBRANK_STRONG_SCORE = "ERS:RobRank:strong"


def _clip(value: float) -> float:
    return min(100.0, max(0.0, value))


# Each attack value mapped to a 0–100 "robustness" term, 100 = perfectly robust (REFERENCE §3).
# CA+/QA+ double because a random ranking puts the target at the 50th percentile.
ERS_TERMS: Mapping[str, Callable[[float], float]] = {
    "TMA-centred": lambda v: _clip(100.0 * (1.0 - v)),
    "ES:D-rel": lambda v: _clip(50.0 * (2.0 - v)),
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


def ers_terms(values: Mapping[str, float], keys: tuple[str, ...] = ERS_KEYS) -> dict[str, float]:
    """The ten rescaled ERS terms (0–100, higher = more robust), keyed like ``keys``.

    Terms: 2·CA+, 100−CA−, 2·QA+, 100−QA−, 100·(1−TMA), 50·(2−ES:D), ES:R, LTM, GTM, GTT, with
    TMA-centred and ES:D-rel in place of TMA and ES:D for the ranked ERS (clipped to [0, 100]).
    RobRank's terms are not clipped, as in the reference: an ES:D above 2 (unnormalised
    embeddings) gives a negative term. Extra keys in ``values`` are ignored; missing ones raise
    :class:`BenchmarkError`.
    """
    _require(values, keys, "ERS")
    return {key: ERS_TERMS[key](_finite(values[key], key)) for key in keys}


def ers(values: Mapping[str, float]) -> float:
    """The ranked Empirical Robustness Score (scale-free): the mean of :func:`ers_terms`."""
    terms = ers_terms(values, ERS_KEYS)
    return sum(terms.values()) / len(terms)


def ers_robrank(values: Mapping[str, float]) -> float:
    """ERS exactly as RobRank defines it (REFERENCE §3): raw TMA, absolute ES:D, no clipping."""
    terms = ers_terms(values, ROBRANK_ERS_KEYS)
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
