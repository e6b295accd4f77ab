"""Registry, presets, PGD loop, defense parameters and the trainer."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from benchmark.collapseness import attention_mean, collapseness
from benchmark.datasets import SPC2Sampler, load_digits
from benchmark.defense_api import Defense, StepResult, parse_params
from benchmark.errors import BenchmarkError
from benchmark.losses import Triplets, mine_random, mine_semihard, mine_softhard, triplet_loss
from benchmark.models import C2F2, ResNet18Embedding
from benchmark.pgd import PGDConfig, pgd
from benchmark.plugins import load_builtins as import_builtins
from benchmark.presets import PROFILES, Preset, get_preset, get_profile, profile_for_input
from benchmark.registry import Registry
from benchmark.telemetry import batch_telemetry, is_collapsed
from benchmark.trainer import train_model


def test_registry_aliases_listing_and_unknown_name():
    reg = Registry("widget")

    @reg.register("alpha-one", aliases=("a1",), description="first widget")
    class A:
        pass

    @reg.register("beta")
    class B:
        """Second widget.

        More text."""

    assert reg.get("A1").obj is A and reg.get("alpha_one").obj is A
    assert reg.names() == ["alpha-one", "beta"]
    assert reg.get("beta").description == "Second widget."
    assert reg.names("al*") == ["alpha-one"]
    with pytest.raises(BenchmarkError, match="unknown widget 'gamma'; known widgets: alpha-one, beta"):
        reg.get("gamma")
    with pytest.raises(BenchmarkError, match="already registered"):
        reg.add("a1", object())


def test_builtins_register_every_kind():
    import_builtins()
    from benchmark.registry import ATTACKS, DATASETS, DEFENSES, MODELS, PRESETS

    assert {"digits", "omniglot", "mnist", "fashion", "cub", "cars", "sop"} <= set(DATASETS.names())
    assert {"c2f2", "resnet18"} <= set(MODELS.names())
    assert {"ca+", "ca-", "qa+", "qa-", "tma", "es", "ltm", "gtm", "gtt"} <= set(ATTACKS.names())
    assert {"nt", "est", "act", "hm", "colo-tride", "ca-tride", "ga", "naive-tride", "colo-cap",
            "colo-anp"} <= set(DEFENSES.names())
    assert PRESETS.names() == ["smoke", "quick", "paper"]
    assert DEFENSES.canonical("hm-ics") == "hm"


def test_presets_and_profiles():
    assert get_preset("quick").train_pgd_steps(32) == 32 // get_preset("quick").train_pgd_divisor
    assert get_preset("paper").train_pgd_steps(16) == 16
    assert get_preset("smoke").train_pgd_steps(0) == 0
    assert get_profile("rob28").epsilon == pytest.approx(77 / 255)
    assert get_profile("ROB224").alpha == pytest.approx(3 / 255)
    assert profile_for_input(28) is PROFILES["rob28"] and profile_for_input(224) is PROFILES["rob224"]
    with pytest.raises(BenchmarkError, match="known profiles: rob28, rob224"):
        get_profile("rob99")
    with pytest.raises(BenchmarkError, match="known presets"):
        get_preset("fast")


def test_pgd_stays_in_ball_and_descends():
    torch.manual_seed(0)
    model = C2F2(embedding_dim=16).eval()
    x = torch.rand(8, 1, 28, 28)
    target = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)

    def loss_fn(z):
        return (model(z) - target).pow(2).sum()

    cfg = PGDConfig(epsilon=0.1, alpha=0.02, steps=10)
    adv = pgd(x, loss_fn, cfg)
    assert (adv - x).abs().max() <= 0.1 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert loss_fn(adv) < loss_fn(x)
    assert torch.equal(pgd(x, loss_fn, PGDConfig(0.0, 0.02, 10)), x)
    calls = []
    pgd(x, loss_fn, cfg, stop=lambda step, value: calls.append(step) or step == 3)
    assert calls == [0, 1, 2, 3]


def test_miners_respect_labels_and_layout():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 0, 0])
    emb = torch.nn.functional.normalize(torch.randn(10, 8), dim=1)
    for miner in (mine_random, mine_semihard, mine_softhard):
        t = miner(emb, labels, generator=g)
        assert torch.equal(t.anchor, torch.tensor([0, 2, 4, 6, 8]))
        assert (labels[t.positive] == labels[t.anchor]).all()
        assert (labels[t.negative] != labels[t.anchor]).all()
        assert (t.positive != t.anchor).all()


def test_semihard_miner_picks_semihard_negatives_when_they_exist():
    # anchor at 0, positive at 0.1, negatives at 0.15 (semihard), 0.5 and 2.0 (easy) on a line
    emb = torch.tensor([[0.0], [0.1], [0.15], [0.16], [0.5], [0.55], [2.0], [2.1]])
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    for seed in range(5):
        t = mine_semihard(emb, labels, margin=0.2, generator=torch.Generator().manual_seed(seed))
        assert int(t.negative[0]) in (2, 3)


def test_collapseness_weights_samples_near_anchors_and_ca_tride_far_ones():
    d_ap = torch.tensor([0.1, 0.2, 1.0])
    d_an = torch.tensor([0.5, 0.5, 0.5])
    for weighting in ("near", "far"):
        assert attention_mean(d_ap, 0.0, weighting) == pytest.approx(d_ap.mean().item())
    # The seed paper (§3.2): most weight on the samples closest to their anchors (a soft minimum).
    assert attention_mean(d_ap, 1000.0) == pytest.approx(0.1, abs=1e-4)
    assert attention_mean(d_ap, 10.0) < d_ap.mean() < attention_mean(d_ap, 10.0, "far")
    assert collapseness(d_ap, d_an, 1000.0) == pytest.approx(-0.4, abs=1e-3)
    assert collapseness(d_ap + 0.5, d_an, 1000.0) > 0 > collapseness(d_ap, d_an, 1000.0)
    # The released CA-TRIDE code (REFERENCE §4.4): a soft maximum, the farthest samples first.
    assert attention_mean(d_ap, 1000.0, "far") == pytest.approx(1.0, abs=1e-4)
    assert collapseness(d_ap, d_an, 1000.0, "far") == pytest.approx(0.5, abs=1e-3)
    assert collapseness(d_ap, d_an, 1000.0, "far") > 0 > collapseness(d_ap * 0.1, d_an, 1000.0, "far")
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    emb = torch.nn.functional.normalize(emb, dim=1)
    tel = batch_telemetry(emb, Triplets(torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([2, 0])), 10.0)
    assert tel["hardness"] < 0 < tel["separability"] and tel["collapseness"] < 0
    assert is_collapsed([1.0] * 10 + [-0.1] * 5) and not is_collapsed([-1.0] * 5 + [0.5] * 15)


def test_defense_params_conversion_and_errors():
    @dataclass
    class Toy(Defense):
        margin: float = 0.2
        steps: int = 4
        flag: bool = True

    d = Toy.from_params(parse_params(["margin=0.3", "steps=7", "flag=no"]))
    assert d.params() == {"margin": 0.3, "steps": 7, "flag": False}
    with pytest.raises(BenchmarkError, match="has no parameter 'gamma'; its parameters: margin, steps, flag"):
        Toy.from_params({"gamma": "1"})
    with pytest.raises(BenchmarkError, match="expected a float"):
        Toy.from_params({"margin": "wide"})
    with pytest.raises(BenchmarkError, match="expected name=value"):
        parse_params(["margin"])


@dataclass
class _Natural(Defense):
    margin: float = 0.2

    def training_step(self, model, images, labels, ctx):
        emb = model(images)
        t = mine_random(emb.detach(), labels, generator=ctx.generator)
        return StepResult(triplet_loss(emb[t.anchor], emb[t.positive], emb[t.negative], self.margin),
                          emb.detach(), t)


def _tiny_preset(**kw) -> Preset:
    values = dict(name="t", epochs=2, batch_pairs=16, train_pgd_divisor=1, attack_queries=16, attack_batch=16,
                  max_train_images=256)
    values.update(kw)
    return Preset(**values)


@pytest.mark.slow
def test_trainer_is_reproducible_and_records_telemetry():
    bundle = load_digits()
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = C2F2(embedding_dim=32)
        history = train_model(model, bundle, _Natural(), _tiny_preset(), PROFILES["rob28"], seed=3, progress=False)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert history.steps == len(history.telemetry) == 2 * (256 // 16)
    assert len(history.epoch_seconds) == 2 and history.train_seconds > 0
    first = history.telemetry[0]
    assert {"collapseness", "hardness", "separability", "mean_distance", "embedding_shift", "loss"} <= set(first)
    assert math.isnan(first["embedding_shift"])
    assert history.pgd_steps == 0 and not history.collapsed


def test_trainer_rejects_non_finite_loss():
    @dataclass
    class Broken(Defense):
        def training_step(self, model, images, labels, ctx):
            return StepResult(model(images).sum() * float("nan"))

    with pytest.raises(BenchmarkError, match="non-finite"):
        train_model(C2F2(embedding_dim=8), load_digits(), Broken(), _tiny_preset(epochs=1), PROFILES["rob28"],
                    progress=False)


def test_spc2_sampler_layout():
    labels = torch.arange(20) % 5
    batches = list(SPC2Sampler(labels, 4, torch.Generator().manual_seed(1)))
    assert len(batches) == 5
    for b in batches:
        assert len(b) == 8 and (labels[b[0::2]] == labels[b[1::2]]).all() and (b[0::2] != b[1::2]).all()


def test_models_normalise_and_resnet_freezes_bn():
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(C2F2()(x).norm(dim=1), torch.ones(2), atol=1e-5)
    net = ResNet18Embedding(embedding_dim=16)
    net.set_train_mode(adversarial=False)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert net.training and all(not m.training for m in bns)
    net.set_train_mode(adversarial=True)
    assert all(m.training for m in bns)
    out = net.eval()(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 16)
    with pytest.raises(BenchmarkError, match="does not exist"):
        ResNet18Embedding(weights="/nonexistent/weights.pth")


def test_pairwise_distance_is_exact_for_shrunk_embeddings():
    """The miners' distance matrix comes from differences, not the float32 expansion that loses
    distances below ~3e-4 between unit vectors (where adversarial training can shrink embeddings)."""
    from benchmark.losses import pairwise_distance

    torch.manual_seed(0)
    pole = torch.zeros(40, 32)
    pole[:, 0] = 1.0
    points = torch.nn.functional.normalize(pole + 1e-4 * torch.randn(40, 32), dim=1)
    exact = torch.cdist(points.double(), points.double(), compute_mode="donot_use_mm_for_euclid_dist")
    assert (pairwise_distance(points, points).double() - exact).abs().max() < 1e-3 * float(exact.mean())


def test_optimiser_settings_are_the_models_own_never_silently_c2f2s():
    from benchmark.models import OPTIMIZER_SETTINGS, EmbeddingModel, optimizer_settings

    class Quantised(C2F2):  # a plugin model deriving from a built-in gets the built-in's settings
        pass

    class Own(EmbeddingModel):
        optimizer_settings = {"lr": 0.5, "weight_decay": 0.0}

    class Bare(EmbeddingModel):
        pass

    assert optimizer_settings(C2F2(), "c2f2") == OPTIMIZER_SETTINGS["c2f2"]
    assert optimizer_settings(Quantised(), "c2f2-quantised") == OPTIMIZER_SETTINGS["c2f2"]
    assert optimizer_settings(Own(), "own") == {"lr": 0.5, "weight_decay": 0.0}
    with pytest.raises(BenchmarkError, match="no optimiser settings"):
        optimizer_settings(Bare(), "bare")
