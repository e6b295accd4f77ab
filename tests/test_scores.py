"""ERS, ARS and WHM recompute the published numbers from raw attack values (REFERENCE §3, §8)."""

from __future__ import annotations

import math

import pytest

from benchmark.errors import BenchmarkError
from benchmark.robustness_scores import (
    ARS_GOALS,
    ARS_KEYS,
    ERS_KEYS,
    ROBRANK_ERS_KEYS,
    ars,
    ars_attack,
    ars_mean,
    ers,
    ers_robrank,
    ers_terms,
    whm,
)


def attack_row(*values: float) -> dict[str, float]:
    """Raw attack values in the column order CA+ CA− QA+ QA− TMA ES:D ES:R LTM GTM GTT."""
    assert len(values) == len(ROBRANK_ERS_KEYS)
    return dict(zip(ROBRANK_ERS_KEYS, values))


# REFERENCE §8.3 (CVPR'22 tab-sota, rob224) and §8.1 (Fashion-MNIST, rob28)
CUB_NONE = attack_row(0.0, 100.0, 0.0, 99.9, 0.883, 1.762, 0.0, 0.0, 14.1, 0.0)
CUB_ACT_32 = attack_row(15.5, 37.7, 15.1, 32.2, 0.472, 0.821, 11.1, 9.4, 14.9, 1.0)
SOP_HM_ICS_32 = attack_row(32.0, 4.2, 33.7, 3.0, 0.606, 0.207, 39.1, 39.8, 37.9, 45.6)
FASHION_NONE = attack_row(1.1, 96.8, 0.3, 97.8, 0.990, 1.604, 0.1, 0.0, 12.6, 0.0)
FASHION_EST = attack_row(14.9, 36.1, 20.9, 48.6, 0.966, 0.288, 62.0, 28.0, 20.8, 0.0)
FASHION_ACT = attack_row(33.6, 14.6, 38.5, 12.1, 0.259, 0.541, 48.5, 59.5, 60.2, 0.1)


@pytest.mark.parametrize("values,published,unrounded", [
    (CUB_NONE, 3.8, 3.78),
    (CUB_ACT_32, 33.9, 33.95),  # exactly 33.945; printed 33.9
    (SOP_HM_ICS_32, 61.6, 61.57),
])
def test_ers_recomputes_published_cvpr22_rows(values, published, unrounded):
    score = ers_robrank(values)
    assert round(score, 1) == published
    assert score == pytest.approx(unrounded, abs=0.01)


def test_ers_exact_hand_sum():
    terms = [2 * 15.5, 100 - 37.7, 2 * 15.1, 100 - 32.2, 100 * (1 - 0.472), 50 * (2 - 0.821),
             11.1, 9.4, 14.9, 1.0]
    assert ers_robrank(CUB_ACT_32) == pytest.approx(sum(terms) / 10, abs=1e-12)
    assert ers_robrank(CUB_ACT_32) == pytest.approx(33.945, abs=1e-9)


@pytest.mark.parametrize("values,published,terms", [
    (FASHION_NONE, 4.2, [2.2, 3.2, 0.6, 2.2, 1.0, 19.8, 0.1, 0.0, 12.6, 0.0]),
    (FASHION_EST, 38.7, [29.8, 63.9, 41.8, 51.4, 3.4, 85.6, 62.0, 28.0, 20.8, 0.0]),
    (FASHION_ACT, 63.3, [67.2, 85.4, 77.0, 87.9, 74.1, 72.95, 48.5, 59.5, 60.2, 0.1]),
])
def test_ers_recomputes_fashion_rows_and_terms(values, published, terms):
    assert round(ers_robrank(values), 1) == published
    got = ers_terms(values, ROBRANK_ERS_KEYS)
    assert list(got) == list(ROBRANK_ERS_KEYS)
    assert list(got.values()) == pytest.approx(terms, abs=1e-9)


# every CVPR'22 row of REFERENCE §8.3: the table's inputs are themselves rounded (CA/QA to 0.1,
# doubled in ERS), so a row can differ from its printed ERS by up to about 0.1
CVPR22_ROWS = [
    ((0.5, 97.3, 0.5, 91.3, 0.875, 1.325, 3.9, 0.4, 14.9, 0.0), 7.9),
    ((13.7, 46.8, 12.6, 39.3, 0.547, 0.902, 13.6, 9.8, 21.9, 1.3), 31.3),
    ((12.7, 46.4, 11.6, 39.9, 0.567, 0.783, 16.8, 11.9, 27.9, 1.4), 32.4),
    ((12.9, 40.9, 14.7, 33.7, 0.806, 0.487, 17.1, 13.2, 26.3, 2.3), 33.5),
    ((2.7, 97.9, 0.4, 97.3, 0.848, 1.576, 1.4, 0.0, 4.0, 0.0), 5.3),
    ((14.7, 39.6, 15.6, 34.2, 0.523, 0.736, 16.5, 15.0, 26.7, 2.9), 35.9),
    ((15.5, 37.7, 16.6, 30.9, 0.753, 0.506, 17.9, 16.7, 27.3, 2.9), 36.0),
    ((0.2, 100.0, 0.1, 99.6, 0.874, 1.816, 0.0, 0.0, 13.4, 0.0), 3.6),
    ((19.3, 33.1, 20.3, 32.3, 0.413, 0.760, 18.4, 15.0, 28.6, 1.2), 39.8),
    ((21.0, 23.3, 23.1, 22.2, 0.698, 0.415, 31.2, 38.0, 47.8, 9.6), 47.9),
    ((18.0, 32.3, 17.5, 30.5, 0.383, 0.763, 16.3, 15.3, 20.7, 1.6), 38.6),
    ((19.3, 25.9, 19.6, 25.7, 0.650, 0.446, 30.3, 36.7, 46.0, 8.8), 46.0),
    ((0.1, 99.3, 0.2, 99.1, 0.845, 1.685, 0.0, 0.0, 6.3, 0.0), 4.0),
    ((24.8, 10.7, 25.4, 8.2, 0.321, 0.485, 15.4, 17.7, 25.1, 11.3), 49.5),
    ((30.6, 4.7, 31.2, 3.5, 0.466, 0.266, 38.6, 40.3, 38.6, 44.3), 61.8),
    ((19.9, 35.1, 20.0, 25.9, 0.485, 0.779, 15.4, 13.7, 20.7, 1.4), 38.3),  # CUB rswintp
]


@pytest.mark.parametrize("values,published", CVPR22_ROWS)
def test_ers_close_to_other_published_rows(values, published):
    assert ers_robrank(attack_row(*values)) == pytest.approx(published, abs=0.1)


def test_robrank_ers_has_no_clipping():
    values = dict(CUB_ACT_32, **{"ES:D": 3.0, "TMA": -0.5})  # unnormalised embeddings can do this
    terms = ers_terms(values, ROBRANK_ERS_KEYS)
    assert terms["ES:D"] == pytest.approx(-50.0)
    assert terms["TMA"] == pytest.approx(150.0)


def test_ers_ignores_extra_keys_and_reports_missing_ones():
    assert ers_robrank(dict(CUB_ACT_32, extra=1e9)) == ers_robrank(CUB_ACT_32)
    partial = {k: v for k, v in CUB_ACT_32.items() if k not in ("GTT", "ES:R")}
    with pytest.raises(BenchmarkError, match=r"ES:R, GTT") as err:
        ers_robrank(partial)
    assert "CA+" in str(err.value)  # the accepted keys are listed too
    with pytest.raises(BenchmarkError, match="finite"):
        ers_robrank(dict(CUB_ACT_32, TMA=float("nan")))


# SPEC §5 / seed paper Table 2, CUB ACT: "before" nominal values and the printed ARS
CUB_ACT_BEFORE = {"CA+": 50.0, "QA+": 50.0, "CA-": 1.0, "QA-": 1.0,
                  "ES:R": 27.5, "LTM": 27.5, "GTM": 27.5, "GTT": 100.0}
CUB_ACT_ARS = {"CA+": 31.0, "CA-": 62.9, "QA+": 30.2, "QA-": 68.5,
               "ES:R": 40.4, "LTM": 34.2, "GTM": 54.2, "GTT": 1.0}


def test_ars_recomputes_cub_act_per_attack_and_mean():
    per_attack = ars(CUB_ACT_BEFORE, CUB_ACT_32)
    assert list(per_attack) == list(ARS_KEYS)  # TMA and ES:D are not ARS attacks
    # the exact values, by hand: 100·(1 − |after − before| / |goal − before|)
    exact = {"CA+": 100 * (1 - 34.5 / 50), "CA-": 100 * (1 - 36.7 / 99), "QA+": 100 * (1 - 34.9 / 50),
             "QA-": 100 * (1 - 31.2 / 99), "ES:R": 100 * 11.1 / 27.5, "LTM": 100 * 9.4 / 27.5,
             "GTM": 100 * 14.9 / 27.5, "GTT": 1.0}
    for key, value in per_attack.items():
        assert value == pytest.approx(exact[key], abs=1e-9), key
        # printed to 1 decimal (round half away from zero); the paper prints ES:R 40.36 as 40.3
        assert value == pytest.approx(CUB_ACT_ARS[key], abs=0.05), key
    mean = ars_mean(CUB_ACT_BEFORE, CUB_ACT_32)
    assert mean == pytest.approx(sum(exact.values()) / 8, abs=1e-9)
    assert mean == pytest.approx(40.3, abs=0.05)  # 40.29


def test_ars_goals_and_keys():
    assert ARS_GOALS == {"CA+": 0.0, "QA+": 0.0, "CA-": 100.0, "QA-": 100.0,
                         "ES:R": 0.0, "LTM": 0.0, "GTM": 0.0, "GTT": 0.0}
    assert set(ARS_KEYS) == set(ERS_KEYS) - {"TMA-centred", "ES:D-rel"}
    assert set(ARS_KEYS) == set(ROBRANK_ERS_KEYS) - {"TMA", "ES:D"}


def scale_free(values: dict[str, float], tma_centred: float, shift_relative: float) -> dict[str, float]:
    return dict(values, **{"TMA-centred": tma_centred, "ES:D-rel": shift_relative})


def test_ranked_ers_uses_the_scale_free_terms_and_equals_robrank_for_an_isotropic_gallery():
    # for a gallery centred on the origin with spread √2 the scale-free values equal the raw ones
    values = scale_free(CUB_ACT_32, CUB_ACT_32["TMA"], CUB_ACT_32["ES:D"])
    assert ers(values) == pytest.approx(ers_robrank(values), abs=1e-12)
    # a shrunk model: RobRank's absolute ES:D gives it nearly all 10 points, the relative shift none
    shrunk = dict(values, **{"ES:D": 0.002, "TMA": 1.0, "ES:D-rel": 2.4, "TMA-centred": 0.6})
    terms = ers_terms(shrunk)
    assert terms["ES:D-rel"] == 0.0  # clipped: a shift beyond the gallery's effective diameter
    assert terms["TMA-centred"] == pytest.approx(40.0)
    assert ers_terms(shrunk, ROBRANK_ERS_KEYS)["ES:D"] == pytest.approx(99.9)
    assert ers_terms(shrunk, ROBRANK_ERS_KEYS)["TMA"] == pytest.approx(0.0)
    # the scale-free terms stay in [0, 100]
    assert ers_terms(scale_free(CUB_ACT_32, -0.5, 0.0))["TMA-centred"] == 100.0


def test_ranked_ers_needs_the_scale_free_values():
    with pytest.raises(BenchmarkError, match="TMA-centred, ES:D-rel"):
        ers(CUB_ACT_32)


@pytest.mark.parametrize("before,after,goal,expected", [
    (50.0, 50.0, 0.0, 100.0),  # no change: fully robust
    (50.0, 0.0, 0.0, 0.0),  # goal reached
    (50.0, 25.0, 0.0, 50.0),  # half way
    (1.0, 100.0, 100.0, 0.0),
    (1.0, 50.5, 100.0, 50.0),
    (27.5, -3.0, 0.0, 0.0),  # beyond the goal: clipped at 0
    (1.0, 120.0, 100.0, 0.0),
    (50.0, 70.0, 0.0, 100.0),  # moved away from the goal: none of the intended change, 100
    (50.0, 150.0, 0.0, 100.0),
    (20.0, 10.0, 100.0, 100.0),
    (0.0, 0.0, 0.0, 100.0),  # goal == before: nothing to change
    (0.0, 5.0, 0.0, 100.0),
])
def test_ars_attack_formula_and_clipping(before, after, goal, expected):
    assert ars_attack(before, after, goal) == pytest.approx(expected, abs=1e-12)


def test_ars_only_attacks_present_in_both_and_missing_key_errors():
    after = {"CA+": 25.0, "TMA": 0.5, "LTM": 10.0}
    before = {"CA+": 50.0, "LTM": 20.0, "GTM": 20.0}
    assert ars(before, after) == {"CA+": pytest.approx(50.0), "LTM": pytest.approx(50.0)}
    with pytest.raises(BenchmarkError, match="after") as err:
        ars_mean(CUB_ACT_BEFORE, {k: v for k, v in CUB_ACT_32.items() if k != "GTM"})
    assert "GTM" in str(err.value)
    with pytest.raises(BenchmarkError, match="before"):
        ars_mean({k: v for k, v in CUB_ACT_BEFORE.items() if k != "CA-"}, CUB_ACT_32)


@pytest.mark.parametrize("train_r1,test_r1,a,expected", [
    (0.8, 0.8, 0.5, 0.8),  # equal recalls: the mean is that recall
    (1.0, 0.5, 0.5, 1.5 * 0.5 / (0.25 + 1.0)),  # 0.6
    (0.5, 1.0, 0.5, 1.5 * 0.5 / (0.5 + 0.5)),  # 0.75: the test split weighs more
    (0.9, 0.3, 1.0, 2 * 0.27 / 1.2),  # a = 1: the plain harmonic mean
    (0.0, 0.6, 0.5, 0.0),
    (0.7, 0.0, 0.5, 0.0),
    (0.0, 0.0, 0.5, 0.0),  # defined as 0
    (0.0, 0.0, 0.0, 0.0),
    (0.4, 0.6, 0.0, 0.6),  # a = 0: only the test split counts
])
def test_whm_hand_cases(train_r1, test_r1, a, expected):
    assert whm(train_r1, test_r1, a) == pytest.approx(expected, abs=1e-12)


def test_whm_default_weight_and_bad_inputs():
    assert whm(0.9, 0.6) == pytest.approx(1.5 * 0.54 / (0.3 + 0.9))
    assert whm(90.0, 60.0) == pytest.approx(100 * whm(0.9, 0.6))  # unit-agnostic
    assert math.isfinite(whm(1e-300, 1e-300))
    with pytest.raises(BenchmarkError, match="non-negative"):
        whm(-0.1, 0.5)
    with pytest.raises(BenchmarkError, match="finite"):
        whm(float("nan"), 0.5)
