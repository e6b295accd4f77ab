"""Behaviour of the built-in defenses (SPEC §6, REFERENCE §4).

Two small models keep this fast: a tiny conv net on digits batches for the checks every defense
must pass, and a linear "identity" embedding whose geometry the tests build by hand, so that the
direction checks (attack vs assist, hardness manipulation) have a known answer.
"""

from __future__ import annotations

import dataclasses
import math
import types

import pytest
import torch
from torch import nn

import defenses
from benchmark.collapseness import collapseness
from benchmark.datasets import load_digits
from benchmark.defense_api import Defense, TrainContext, defense_pgd_steps, parse_params
from benchmark.errors import BenchmarkError
from benchmark.losses import Triplets, row_distance, triplet_distances
from benchmark.models import EmbeddingModel
from benchmark.registry import BUILTIN, DEFENSES
from defenses.colo_tride import top_ranked_gamma
from defenses.hm import hardness_manipulation_objective, linear_gradual_destination

EPSILON = 0.1
PAIRS = 8


class TinyConvNet(EmbeddingModel):
    """A few thousand parameters on 1x28x28 inputs, with a BatchNorm to exercise mode handling."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding_dim = 32
        self.body = nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
            nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 7 * 7, 32),
        )

    def embed_raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class IdentityEmbedding(EmbeddingModel):
    """normalize(W (x − 0.5)) on 1x4x4 images with W = identity at construction: pixel k
    above/below 0.5 points the embedding along ±e_k, so tests can place embeddings by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding_dim = 16
        self.linear = nn.Linear(16, 16)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(16))
            self.linear.bias.zero_()

    def embed_raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1) - 0.5)


def make_ctx(*, epoch: int = 3, num_epochs: int = 4, divisor: int = 1, alpha: float = 0.01,
             epsilon: float = EPSILON, seed: int = 0, step: int = 0) -> TrainContext:
    return TrainContext(epoch=epoch, num_epochs=num_epochs, step=step, epsilon=epsilon, alpha=alpha,
                        pgd_divisor=divisor, generator=torch.Generator().manual_seed(seed),
                        attention_lambda=10.0)


def digits_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """An SPC-2 batch [c0, c0, c1, c1, ...] of 8 digit classes."""
    split = load_digits().train
    index = torch.cat([(split.labels == c).nonzero().flatten()[:2] for c in range(PAIRS)])
    return split.batch(index), split.labels[index]


def geometry_batch(collapsed: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair k: anchor along e_k; its positive close to e_k (easy pair) or nearly antipodal
    (collapsed pair: d(a,p) ≈ 1.96). Every negative is orthogonal to the anchor (d = √2)."""
    images = torch.full((2 * len(collapsed), 1, 4, 4), 0.5)
    flat = images.view(len(images), 16)
    for k, is_collapsed in enumerate(collapsed):
        flat[2 * k, k] = 1.0
        flat[2 * k + 1, k] = 0.0 if is_collapsed else 1.0
        flat[2 * k + 1, k + 8] = 0.7 if is_collapsed else 0.6
    labels = torch.arange(len(collapsed)).repeat_interleave(2)
    return images, labels


def builtin_names() -> list[str]:
    return [entry.name for entry in DEFENSES.entries() if entry.source == BUILTIN]


def hardness(model: nn.Module, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        a, p, n = model(anchor), model(positive), model(negative)
    return float(row_distance(a, p).mean() - row_distance(a, n).mean())


def perturbed_hardness(model: nn.Module, images: torch.Tensor, triplets: Triplets, result, phase_cap: bool) -> float:
    """Hardness of the perturbed triplets of a TRIDE step (CAP: [P̃; Ñ], ANP: Ã)."""
    count = len(triplets)
    if phase_cap:
        positive, negative = result.perturbed.split(count)
        return hardness(model, images[triplets.anchor], positive, negative)
    return hardness(model, result.perturbed, images[triplets.positive], images[triplets.negative])


def clean_hardness(model: nn.Module, images: torch.Tensor, triplets: Triplets) -> float:
    return hardness(model, images[triplets.anchor], images[triplets.positive], images[triplets.negative])


# -- every defense --------------------------------------------------------------------------------

def test_all_published_defenses_registered() -> None:
    names = set(builtin_names())
    assert {"nt", "est", "act", "hm", "hm-noics", "colo-tride", "ca-tride", "ga", "naive-tride",
            "colo-cap", "colo-anp"} <= names
    for alias, name in [("natural", "nt"), ("hm-ics", "hm"), ("ghmetsmi", "hm"), ("ghmetsm", "hm-noics")]:
        assert DEFENSES.canonical(alias) == name


@pytest.mark.parametrize("name", builtin_names())
def test_training_step_gives_finite_loss_gradients_and_valid_perturbations(name: str) -> None:
    torch.manual_seed(0)
    model = TinyConvNet()
    images, labels = digits_batch()
    defense = DEFENSES.get(name).obj()
    defense.reset()
    model.set_train_mode(adversarial=defense.trains_batchnorm)
    result = defense.training_step(model, images, labels, make_ctx(divisor=4, alpha=0.04))

    assert result.loss.dim() == 0 and torch.isfinite(result.loss)
    assert model.training, "the training forward must run in training mode"
    result.loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
    assert result.embeddings is not None and not result.embeddings.requires_grad
    assert len(result.embeddings) == len(images)
    assert isinstance(result.triplets, Triplets) and len(result.triplets) == PAIRS
    assert (labels[result.triplets.anchor] == labels[result.triplets.positive]).all()
    assert (labels[result.triplets.anchor] != labels[result.triplets.negative]).all()
    if defense_pgd_steps(defense) == 0:
        assert result.perturbed is None
        return
    assert result.perturbed.shape == result.originals.shape
    assert (result.perturbed - result.originals).abs().max() <= EPSILON + 1e-6
    assert result.perturbed.min() >= 0.0 and result.perturbed.max() <= 1.0
    if not name.startswith("hm"):  # HM leaves triplets already past its destination alone
        assert (result.perturbed != result.originals).any(), "an adversarial defense moved nothing"
    assert result.embedding_shift is not None and math.isfinite(result.embedding_shift)
    assert result.embedding_shift > 0


def test_declared_budgets_and_batchnorm() -> None:
    expected = {"nt": 0, "ga": 0, "est": 32, "act": 32, "hm": 32, "hm-noics": 32, "colo-tride": 16,
                "naive-tride": 16, "colo-cap": 16, "colo-anp": 16, "ca-tride": 16, "naive-cap": 16,
                "naive-anp": 16, "naive-at": 16}
    for name, steps in expected.items():
        defense = DEFENSES.get(name).obj()
        assert defense_pgd_steps(defense) == steps, name
        assert defense.trains_batchnorm == (name == "est"), name


def test_from_params_converts_and_rejects_unknown_names() -> None:
    hm = DEFENSES.get("hm").obj.from_params(parse_params(["margin=0.3", "ics=false", "ics_weight=0.05"]))
    assert hm.margin == 0.3 and hm.ics is False and hm.ics_weight == 0.05
    colo = DEFENSES.get("colo-tride").obj.from_params({"phases": "cap", "assist_warmup": "0.5"})
    assert colo.phases == "cap" and colo.assist_warmup == 0.5
    with pytest.raises(BenchmarkError, match="ics_weight"):  # the message lists the parameters
        DEFENSES.get("hm").obj.from_params({"lambda": "0.5"})
    with pytest.raises(BenchmarkError, match="expected a float"):
        DEFENSES.get("ga").obj.from_params({"gamma": "lots"})
    with pytest.raises(BenchmarkError, match="alternate"):
        DEFENSES.get("colo-tride").obj.from_params({"phases": "both"})
    assert "_previous_loss" not in DEFENSES.get("hm").obj().params()


def test_no_module_level_mutable_state() -> None:
    modules = [m for m in vars(defenses).values() if isinstance(m, types.ModuleType)]
    assert len(modules) >= 7
    for module in modules:
        for var, value in vars(module).items():
            if not var.startswith("__"):
                assert not isinstance(value, (list, dict, set, torch.Tensor)), f"{module.__name__}.{var}"
    for name in builtin_names():
        first, second = DEFENSES.get(name).obj(), DEFENSES.get(name).obj()
        for fld in dataclasses.fields(first):
            assert getattr(first, fld.name) is getattr(second, fld.name) or not isinstance(
                getattr(first, fld.name), (list, dict, set)), f"{name}.{fld.name} is shared"


def test_instances_do_not_share_state() -> None:
    images, labels = geometry_batch([False] * PAIRS)  # easy: HM's adversarial loss stays below u
    model = IdentityEmbedding()
    hm_a, hm_b = DEFENSES.get("hm").obj(), DEFENSES.get("hm").obj()
    hm_a.training_step(model, images, labels, make_ctx())
    assert hm_a.destination_hardness != hm_b.destination_hardness == pytest.approx(-0.2)
    tride_a, tride_b = DEFENSES.get("colo-tride").obj(), DEFENSES.get("colo-tride").obj()
    tride_a.training_step(model, images, labels, make_ctx())
    assert tride_b.training_step(model, images, labels, make_ctx()).extras["phase_cap"] == 1.0


# -- ACT, EST --------------------------------------------------------------------------------------

def test_act_pulls_positives_and_negatives_together() -> None:
    torch.manual_seed(0)
    model, (images, labels) = TinyConvNet(), digits_batch()
    result = DEFENSES.get("act").obj().training_step(model, images, labels, make_ctx())
    model.eval()
    with torch.no_grad():
        clean_p, clean_n = model(result.originals).split(PAIRS)
        adv_p, adv_n = model(result.perturbed).split(PAIRS)
    assert float(row_distance(adv_p, adv_n).mean()) < 0.8 * float(row_distance(clean_p, clean_n).mean())
    t = result.triplets
    assert torch.equal(result.originals, torch.cat([images[t.positive], images[t.negative]]))


def test_est_shifts_embeddings_more_than_random_noise() -> None:
    torch.manual_seed(0)
    model, (images, labels) = TinyConvNet(), digits_batch()
    result = DEFENSES.get("est").obj().training_step(model, images, labels, make_ctx())
    noise = torch.randint(0, 2, images.shape, generator=torch.Generator().manual_seed(1)) * 2.0 - 1.0
    noisy = (images + EPSILON * noise).clamp(0, 1)
    model.eval()
    with torch.no_grad():
        random_shift = float(row_distance(model(noisy), model(images)).mean())
    assert result.embedding_shift > 1.5 * random_shift


# -- HM --------------------------------------------------------------------------------------------

def test_hm_objective_ignores_triplets_beyond_destination() -> None:
    source = torch.tensor([-1.0, -0.5, 0.0, 0.3], requires_grad=True)
    value = hardness_manipulation_objective(source, -0.2)
    assert float(value.detach()) == pytest.approx((0.8 ** 2 + 0.3 ** 2) / 4)
    (grad,) = torch.autograd.grad(value, source)
    assert (grad[:2] < 0).all() and (grad[2:] == 0).all()  # descent raises only the easy ones
    assert linear_gradual_destination(2.0) == pytest.approx(-0.2)
    assert linear_gradual_destination(0.1) == pytest.approx(-0.1)
    assert linear_gradual_destination(-1.0) == 0.0


def test_hm_raises_easy_triplets_and_leaves_hard_ones_exactly() -> None:
    collapsed = [False] * 4 + [True] * 4  # easy H ≈ −1.2 < H_D = −0.2 < hard H ≈ 0.55
    images, labels = geometry_batch(collapsed)
    model = IdentityEmbedding()
    hm = DEFENSES.get("hm").obj()
    result = hm.training_step(model, images, labels, make_ctx())
    assert result.extras["destination_hardness"] == pytest.approx(-0.2)
    count = len(result.triplets)
    moved = (result.perturbed != result.originals).flatten(1).any(dim=1).view(3, count)
    easy, hard = torch.tensor(collapsed).logical_not(), torch.tensor(collapsed)
    assert moved[:, easy].any(dim=0).all()
    assert not moved[:, hard].any(), "triplets beyond the destination must not move"
    clean_a, clean_p, clean_n = result.originals.split(count)
    adv_a, adv_p, adv_n = result.perturbed.split(count)
    model.eval()
    with torch.no_grad():
        before = row_distance(model(clean_a), model(clean_p)) - row_distance(model(clean_a), model(clean_n))
        after = row_distance(model(adv_a), model(adv_p)) - row_distance(model(adv_a), model(adv_n))
    assert (after[easy] > before[easy] + 0.05).all()
    assert (before[hard] > -0.2).all()
    # The gradual adversary follows the step's adversarial loss; reset() starts over.
    assert hm.destination_hardness == pytest.approx(linear_gradual_destination(result.extras["adversarial_loss"]))
    hm.reset()
    assert hm.destination_hardness == pytest.approx(-0.2)


def test_hm_ics_term_is_added_only_with_ics() -> None:
    images, labels = geometry_batch([False] * PAIRS)  # anchors move farther than their positives
    model = IdentityEmbedding()
    with_ics = DEFENSES.get("hm").obj(ics_weight=10.0).training_step(model, images, labels, make_ctx())
    without = DEFENSES.get("hm-noics").obj().training_step(model, images, labels, make_ctx())
    assert "ics_loss" not in without.extras and with_ics.extras["ics_loss"] > 0
    assert float(with_ics.loss.detach()) == pytest.approx(float(without.loss.detach()) + 10.0 * with_ics.extras["ics_loss"], rel=1e-4)


# -- COLO-TRIDE ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["colo-cap", "colo-anp"])
@pytest.mark.parametrize("collapsed", [True, False])
def test_colo_assists_collapsed_batches_and_attacks_others(name: str, collapsed: bool) -> None:
    images, labels = geometry_batch([collapsed] * PAIRS)
    model = IdentityEmbedding()
    defense = DEFENSES.get(name).obj()
    result = defense.training_step(model, images, labels, make_ctx())
    assert (result.extras["clean_collapseness"] > 0) == collapsed
    assert result.extras["direction"] == (-1.0 if collapsed else 1.0)
    assert result.extras["assist"] == float(collapsed)
    before = clean_hardness(model, images, result.triplets)
    after = perturbed_hardness(model, images, result.triplets, result, name == "colo-cap")
    if collapsed:
        assert after < before - 0.05
    else:
        assert after > before + 0.05


def test_naive_tride_attacks_even_collapsed_batches() -> None:
    images, labels = geometry_batch([True] * PAIRS)
    model = IdentityEmbedding()
    result = DEFENSES.get("naive-tride").obj().training_step(model, images, labels, make_ctx())
    assert result.extras["direction"] == 1.0 and result.extras["phase_cap"] == 1.0
    assert perturbed_hardness(model, images, result.triplets, result, True) > \
        clean_hardness(model, images, result.triplets) + 0.05


def test_colo_assist_is_disabled_during_warmup_and_epoch_zero_is_clean() -> None:
    images, labels = geometry_batch([True] * PAIRS)
    model = IdentityEmbedding()
    defense = DEFENSES.get("colo-tride").obj(assist_warmup=0.5)
    result = defense.training_step(model, images, labels, make_ctx(epoch=1, num_epochs=4))  # e/E = 0.25
    assert result.extras["direction"] == 0.0
    assert torch.equal(result.perturbed, result.originals) and result.embedding_shift == pytest.approx(0, abs=1e-5)
    easy_images, easy_labels = geometry_batch([False] * PAIRS)
    for name in ("colo-tride", "ca-tride"):
        epoch0 = DEFENSES.get(name).obj().training_step(model, easy_images, easy_labels, make_ctx(epoch=0))
        assert torch.equal(epoch0.perturbed, epoch0.originals), name


def test_tride_phases_alternate_per_step() -> None:
    images, labels = geometry_batch([False] * PAIRS)
    model = IdentityEmbedding()
    for name, expected in [("colo-tride", [1, 0, 1, 0]), ("naive-tride", [1, 0, 1, 0]),
                           ("ca-tride", [1, 0, 1, 0]), ("colo-cap", [1, 1, 1, 1]), ("colo-anp", [0, 0, 0, 0])]:
        defense = DEFENSES.get(name).obj()
        phases = [defense.training_step(model, images, labels, make_ctx(step=i, divisor=16)).extras["phase_cap"]
                  for i in range(4)]
        assert phases == expected, name
        defense.training_step(model, images, labels, make_ctx(divisor=16))
        defense.reset()
        assert defense.training_step(model, images, labels, make_ctx(divisor=16)).extras["phase_cap"] == expected[0]


def test_top_ranked_pull_is_off_while_collapsed() -> None:
    assert top_ranked_gamma(0.3) == 0.0
    assert top_ranked_gamma(0.0) == 1.0
    assert top_ranked_gamma(-0.5) == pytest.approx(math.exp(-0.5))
    model = IdentityEmbedding()
    collapsed = DEFENSES.get("colo-anp").obj().training_step(model, *geometry_batch([True] * PAIRS), make_ctx())
    assert collapsed.extras["top_ranked_gamma"] == 0.0
    easy = DEFENSES.get("colo-anp").obj().training_step(model, *geometry_batch([False] * PAIRS), make_ctx())
    assert easy.extras["top_ranked_gamma"] == pytest.approx(math.exp(easy.extras["clean_collapseness"]))


# -- CA-TRIDE --------------------------------------------------------------------------------------

def _collapseness_after(model: nn.Module, images: torch.Tensor, triplets: Triplets, result, phase_cap: bool):
    model.eval()
    with torch.no_grad():
        clean = model(images)
        if phase_cap:
            positive, negative = model(result.perturbed).split(len(triplets))
            anchor = clean[triplets.anchor]
        else:
            anchor, positive, negative = model(result.perturbed), clean[triplets.positive], clean[triplets.negative]
        before = collapseness(*triplet_distances(clean, triplets), 10.0, weighting="far")  # CA-TRIDE's own C
        after = collapseness(row_distance(anchor, positive), row_distance(anchor, negative), 10.0, weighting="far")
    return float(before), float(after)


def test_ca_tride_cap_attacks_until_collapse_and_anp_uncollapses() -> None:
    model = IdentityEmbedding()
    easy_images, easy_labels = geometry_batch([False] * PAIRS)
    defense = DEFENSES.get("ca-tride").obj()
    cap = defense.training_step(model, easy_images, easy_labels, make_ctx())
    before, after = _collapseness_after(model, easy_images, cap.triplets, cap, True)
    assert before < 0 and after > before + 0.05
    images, labels = geometry_batch([True] * PAIRS)
    anp = defense.training_step(model, images, labels, make_ctx())
    before, after = _collapseness_after(model, images, anp.triplets, anp, False)
    assert before > 0 and after < before - 0.05
    # CAP's loss relu(−C) is already zero on a collapsed batch: the early stop leaves it clean.
    defense.reset()
    stopped = defense.training_step(model, images, labels, make_ctx())
    assert stopped.extras["phase_cap"] == 1.0 and torch.equal(stopped.perturbed, stopped.originals)


# -- GA --------------------------------------------------------------------------------------------

def _gradient(model: nn.Module, defense: Defense, images, labels, ctx: TrainContext) -> torch.Tensor:
    model.zero_grad()
    defense.training_step(model, images, labels, ctx).loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_ga_terms_change_the_gradient_and_vanish_at_zero() -> None:
    torch.manual_seed(0)
    model, (images, labels) = TinyConvNet(), digits_batch()
    ga = DEFENSES.get("ga").obj
    natural = _gradient(model, DEFENSES.get("nt").obj(), images, labels, make_ctx())
    plain = _gradient(model, ga(eps_weight=0.0, gamma=0.0), images, labels, make_ctx())
    torch.testing.assert_close(plain, natural)
    # Isotropic term: exactly γ times a unit vector added to the gradient.
    noisy = _gradient(model, ga(eps_weight=0.0, gamma=0.5), images, labels, make_ctx())
    assert float((noisy - natural).norm()) == pytest.approx(0.5, rel=1e-3)
    # Input-gradient term: a different gradient; default weight is the run's ε.
    regularised = _gradient(model, ga(gamma=0.0), images, labels, make_ctx())
    assert float((regularised - natural).norm()) > 1e-3 * float(natural.norm())
    result = ga().training_step(model, images, labels, make_ctx())
    assert result.extras["eps_weight"] == pytest.approx(EPSILON) and result.extras["input_gradient_l1"] > 0
    assert float(result.loss.detach()) == pytest.approx(
        result.extras["triplet_loss"] + EPSILON * result.extras["input_gradient_l1"], rel=1e-5)


# -- fidelity fixes (issue: faithful protocol) -------------------------------------------------------

def _one_step_budget(name: str, ctx: TrainContext) -> tuple[int, float]:
    """(PGD steps, step size) a TRIDE-family defense uses for one step, read from the PGD config it builds."""
    seen = {}
    import benchmark.defense_api as common  # perturb() calls the PGD loop through this module

    real = common.pgd

    def spy(images, loss_fn, config, **kwargs):
        seen["config"] = config
        return real(images, loss_fn, config, **kwargs)

    common.pgd = spy
    try:
        images, labels = geometry_batch([False] * PAIRS)
        DEFENSES.get(name).obj().training_step(IdentityEmbedding(), images, labels, ctx)
    finally:
        common.pgd = real
    return seen["config"].steps, seen["config"].alpha


@pytest.mark.parametrize("name", ["colo-tride", "ca-tride", "naive-tride", "colo-cap", "colo-anp", "naive-at"])
def test_tride_step_size_reaches_epsilon_from_half_way(name: str) -> None:
    """16 steps of α_T·e/E with 16·α_T = 2ε: ε is reachable once e/E ≥ 1/2 (the reference at 224).
    The old step (the profile's α = 3/255 at rob28) capped the travel at 0.62 ε."""
    epsilon = 77 / 255
    steps, alpha = _one_step_budget(name, make_ctx(epoch=2, num_epochs=4, epsilon=epsilon, alpha=3 / 255))
    assert steps == 16
    assert alpha == pytest.approx(2 * epsilon / 16 * 0.5)
    assert steps * alpha == pytest.approx(epsilon)  # exactly ε at half-way
    # A reduced-adversary preset divides the steps and multiplies the step, keeping the travel.
    steps, alpha = _one_step_budget(name, make_ctx(epoch=2, num_epochs=4, epsilon=epsilon, alpha=3 / 255, divisor=16))
    assert steps == 1 and steps * alpha == pytest.approx(epsilon)


def test_faithful_budgets_are_the_published_ones() -> None:
    """At a faithful preset (divisor 1) every PGD defense runs its own steps with the profile's α."""
    ctx = make_ctx(epsilon=77 / 255, alpha=3 / 255)
    for name in ("est", "act", "hm"):
        config = ctx.pgd_config(DEFENSES.get(name).obj.pgd_steps)
        assert (config.steps, config.alpha, config.epsilon) == (32, 3 / 255, 77 / 255), name


def test_colo_collapseness_weights_near_anchors() -> None:
    """COLO-TRIDE's C is the paper's: a batch whose nearest positives are far closer than its nearest
    negatives is not collapsing, even if its farthest positive is farther than every negative.
    The released weighting (far samples first) calls the same batch collapsed."""
    images, labels = geometry_batch([True] + [False] * (PAIRS - 1))  # one antipodal positive, seven close ones
    model = IdentityEmbedding()
    result = DEFENSES.get("colo-cap").obj().training_step(model, images, labels, make_ctx())
    assert result.extras["clean_collapseness"] < 0 and result.extras["direction"] == 1.0
    ca = DEFENSES.get("ca-tride").obj().training_step(model, images, labels, make_ctx())
    assert ca.extras["clean_collapseness"] > 0


def test_anp_top_ranked_term_is_measured_from_the_original_anchors() -> None:
    """Eq. 12: relu(T_an − S_aa) with S_aa the distance to the original, unperturbed anchor. An anchor
    already as far from its origin as from its nearest negatives gets no pull; one at its origin does."""
    from defenses.colo_tride import anchor_top_ranked_term

    original = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.0]]), dim=1)
    negative = torch.nn.functional.normalize(torch.tensor([[0.0, 1.0, 0.0]]), dim=1)
    at_origin = original.clone().requires_grad_(True)
    term = anchor_top_ranked_term(at_origin, original, negative)
    assert float(term.detach()) == pytest.approx(2 ** 0.5, abs=1e-5)  # T_an = √2, S_aa = 0
    moved = torch.nn.functional.normalize(torch.tensor([[0.0, 0.0, 1.0]]), dim=1)  # √2 from both
    assert float(anchor_top_ranked_term(moved, original, negative)) == pytest.approx(0.0, abs=1e-5)
    # The old term (mean distance to the closest negatives alone) would still pull the moved anchor.
    assert float(row_distance(moved, negative).mean()) > 1.0


def test_ga_input_gradient_term_is_the_batch_sum() -> None:
    """GA writes ε‖∂L/∂x‖₁ for the whole batch: the sum over images, 2B times the per-image mean."""
    torch.manual_seed(0)
    model, (images, labels) = TinyConvNet(), digits_batch()
    ga = DEFENSES.get("ga").obj
    summed = ga(gamma=0.0).training_step(model, images, labels, make_ctx(seed=1)).extras["input_gradient_l1"]
    mean = ga(gamma=0.0, reduction="mean").training_step(model, images, labels,
                                                         make_ctx(seed=1)).extras["input_gradient_l1"]
    assert summed == pytest.approx(mean * len(images), rel=1e-5)


@pytest.mark.parametrize("name, param, value, accepted", [
    ("hm", "margin", "-5", "margin"), ("hm", "ics_weight", "-1", "0 ≤ ics_weight"),
    ("colo-tride", "assist_warmup", "1.5", "assist_warmup ≤ 1"), ("colo-tride", "travel", "0", "0 < travel"),
    ("ga", "reduction", "median", "sum, mean"), ("act", "margin", "nan", "float"),
    ("ca-tride", "attention_lambda", "-2", "0 ≤ attention_lambda"),
])
def test_parameters_outside_their_range_are_one_clear_error(name, param, value, accepted) -> None:
    with pytest.raises(BenchmarkError, match=accepted) as info:
        DEFENSES.get(name).obj.from_params({param: value})
    assert param in str(info.value) and "\n" not in str(info.value)


def test_every_builtin_parameter_declares_its_range() -> None:
    for name in builtin_names():
        cls = DEFENSES.get(name).obj
        public = [f.name for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")]
        assert set(public) == set(cls.param_ranges()), name
