"""The attack suite on a tiny naturally-trained C2F2 (digits): bounds, directions, ε = 0,
seeded selections, the gallery embedded once, and the GTM/LTM fixes of SPEC §4."""

from __future__ import annotations

import pytest
import torch

import attacks  # noqa: F401  (registers the suite)
from attacks.base import Gallery, neighbourhood_size
from attacks.runner import attack_generator, run_attacks, select_queries
from benchmark.datasets import SPC2Sampler, load_digits
from benchmark.embedding import embed_split
from benchmark.errors import BenchmarkError
from benchmark.losses import mine_random, triplet_loss
from benchmark.models import C2F2
from benchmark.pgd import PGDConfig, pgd
from benchmark.presets import PROFILES
from benchmark.registry import ATTACKS

SUITE = ("ca+", "ca-", "qa+", "qa-", "tma", "es", "ltm", "gtm", "gtt")
RANDOM_SELECTION = ("ca+", "ca-", "qa+", "qa-", "tma")  # the others select deterministically
N_QUERIES = 64
STEPS = 8
ROB28 = PROFILES["rob28"]
PGD = PGDConfig(ROB28.epsilon, ROB28.alpha, STEPS)


@pytest.fixture(scope="module")
def trained():
    """A C2F2 trained for a few dozen triplet steps on digits: R@1 far above chance (10 %)."""
    torch.manual_seed(0)
    bundle = load_digits()
    model = C2F2(embedding_dim=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    sampler = SPC2Sampler(bundle.train.labels, 32, generator)
    steps = 0
    while steps < 40:
        for index in sampler:
            embeddings = model(bundle.train.batch(index))
            triplets = mine_random(embeddings, bundle.train.labels[index], generator=generator)
            loss = triplet_loss(embeddings[triplets.anchor], embeddings[triplets.positive],
                                embeddings[triplets.negative])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if steps >= 40:
                break
    model.eval()
    gallery = Gallery(embed_split(model, bundle.test), bundle.test.labels)
    return bundle, model, gallery


@pytest.fixture(scope="module")
def suite_run(trained):
    """The whole suite once on 64 queries; counts every image the model sees."""
    bundle, model, gallery = trained
    seen: list[int] = []
    hook = model.register_forward_hook(lambda _m, inputs, _o: seen.append(len(inputs[0])))
    try:
        query_index = select_queries(len(bundle.test), N_QUERIES, seed=0)
        report = run_attacks(model, lambda idx: bundle.test.batch(idx), gallery,
                             [ATTACKS.create(name) for name in SUITE], PGD, query_index=query_index,
                             batch_size=32, seed=0, device="cpu", progress=False, return_images=True)
    finally:
        hook.remove()
    return report, query_index, seen


@pytest.mark.slow
def test_clean_model_retrieves(trained):
    bundle, _, gallery = trained
    everything = torch.arange(len(bundle.test))
    assert gallery.clean_recall_at_1(everything).mean() > 60.0


def test_registry_names_aliases_and_repr():
    assert set(SUITE) <= set(ATTACKS.names())
    assert ATTACKS.canonical("CA:pm=+:W=1") == "ca+"
    assert ATTACKS.canonical("QA:pm=-:M=1") == "qa-"
    assert repr(ATTACKS.create("ca-", W=3)) == "ca-(pm='-', W=3, neighbourhood=0.01)"
    assert repr(ATTACKS.create("gtt")) == "gtt(retain_k=4)"
    assert ATTACKS.create("es").metrics == ("ES:D", "ES:R", "ES:D-rel")
    with pytest.raises(BenchmarkError, match="W must be a positive integer"):
        ATTACKS.create("ca+", W=0)


@pytest.mark.slow
def test_perturbations_stay_in_the_ball_and_the_image_range(trained, suite_run):
    bundle, _, _ = trained
    report, query_index, _ = suite_run
    clean = bundle.test.batch(query_index)
    for name in SUITE:
        adversarial = report.images[name]
        assert adversarial.shape == clean.shape
        delta = (adversarial - clean).abs().amax()
        assert 0 < delta <= PGD.epsilon + 1e-6, name
        assert adversarial.min() >= 0 and adversarial.max() <= 1, name


@pytest.mark.slow
def test_each_attack_moves_its_value_its_own_way(trained, suite_run):
    _, _, gallery = trained
    report, query_index, _ = suite_run
    before, after = report.before, report.after
    clean_r1 = float(gallery.clean_recall_at_1(query_index).mean())
    # Clean values with the same selections.
    assert 25 < before["CA+"] < 75 and 25 < before["QA+"] < 75
    assert before["CA-"] < 5 and before["QA-"] < 5
    assert before["ES:D"] == 0 and before["GTT"] == 100
    assert before["ES:R"] == before["LTM"] == before["GTM"] == pytest.approx(clean_r1)
    # Each attack in its own direction (lower = success for +, higher for −).
    assert after["CA+"] < before["CA+"] - 20
    assert after["CA-"] > before["CA-"] + 10
    assert after["QA+"] < before["QA+"] - 20
    assert after["QA-"] > before["QA-"] + 10
    assert after["TMA"] > before["TMA"] + 0.05 and 1 - after["TMA"] < 0.6 * (1 - before["TMA"])
    assert after["ES:D"] > 0.15
    assert after["ES:R"] < before["ES:R"] - 20
    assert after["LTM"] < before["LTM"] - 20
    assert after["GTM"] < before["GTM"] - 20
    assert after["GTT"] < before["GTT"] - 20
    for key, value in after.items():
        assert (0 <= value <= 2) if key in ("TMA", "ES:D") else (0 <= value <= 100), key


@pytest.mark.slow
def test_report_bookkeeping_and_gallery_embedded_once(suite_run):
    report, query_index, seen = suite_run
    n_batches = -(-N_QUERIES // 32)
    assert report.n_queries == N_QUERIES and report.pgd_steps == STEPS
    assert set(report.seconds) == set(SUITE) and all(s > 0 for s in report.seconds.values())
    assert report.total_passes == len(SUITE) * n_batches * STEPS
    assert report.total_pass_images == len(SUITE) * N_QUERIES * STEPS
    assert report.attacks["ca-"] == "ca-(pm='-', W=1, neighbourhood=0.01)"
    # The model only ever sees attacked batches: STEPS PGD passes + 1 final embedding per batch.
    # Never the gallery (539 test images): that was embedded once, before, by the caller.
    assert max(seen) <= 32
    assert sum(seen) == len(SUITE) * N_QUERIES * (STEPS + 1)


@pytest.mark.slow
def test_zero_budget_changes_nothing_and_means_are_over_queries(trained):
    bundle, model, gallery = trained
    query_index = select_queries(len(bundle.test), 50, seed=3)
    report = run_attacks(model, lambda idx: bundle.test.batch(idx), gallery,
                         [ATTACKS.create(name) for name in SUITE], PGDConfig(0.0, ROB28.alpha, STEPS),
                         query_index=query_index, batch_size=32, seed=3, device="cpu", progress=False,
                         return_images=True)
    for name in SUITE:
        assert torch.equal(report.images[name], bundle.test.batch(query_index))
    assert report.total_passes == 0
    for key, value in report.before.items():
        # The gallery was embedded in batches of 256, the queries in 32: float noise only.
        assert report.after[key] == pytest.approx(value, abs=1e-3), key
    # Batches of 32 and 18: a mean of batch means would weigh the 18 more.
    assert report.before["ES:R"] == pytest.approx(float(gallery.clean_recall_at_1(query_index).mean()))


@pytest.mark.slow
def test_selections_are_seeded(trained):
    _, _, gallery = trained
    index = torch.arange(0, 200, 3)
    for name in SUITE:
        attack = ATTACKS.create(name)
        first = attack.select(index, gallery, attack_generator(0, attack))
        again = attack.select(index, gallery, attack_generator(0, attack))
        other = attack.select(index, gallery, attack_generator(1, attack))
        for key in first:
            assert torch.equal(first[key], again[key]), (name, key)
        if name in RANDOM_SELECTION:
            assert any(not torch.equal(first[key], other[key]) for key in first), name
    assert torch.equal(select_queries(539, 64, 0), select_queries(539, 64, 0))
    assert not torch.equal(select_queries(539, 64, 0), select_queries(539, 64, 1))
    assert torch.equal(select_queries(539, None, 0), torch.arange(539))


@pytest.mark.slow
def test_minus_selections_come_from_the_top_percent_without_self(trained):
    _, _, gallery = trained
    index = torch.arange(0, 539, 5)
    k = neighbourhood_size(len(gallery))
    dist = torch.cdist(gallery.embeddings[index], gallery.embeddings)
    dist[torch.arange(len(index)), index] = float("inf")
    top = dist.topk(k, dim=1, largest=False).indices
    assert torch.equal(gallery.nearest(index, k), top)
    for name, key in (("ca-", "queries"), ("qa-", "candidates")):
        attack = ATTACKS.create(name)
        chosen = attack.select(index, gallery, attack_generator(0, attack))[key]
        assert (chosen.unsqueeze(-1) == top.unsqueeze(1)).any(-1).all(), name
        assert not (chosen == index.unsqueeze(1)).any(), name


@pytest.mark.slow
def test_gtm_target_is_best_ranked_item_of_another_class(trained):
    _, _, gallery = trained
    index = torch.arange(539)
    selection = ATTACKS.create("gtm").select(index, gallery, torch.Generator())
    dist = torch.cdist(gallery.embeddings[index], gallery.embeddings)
    dist[index, index] = float("inf")
    predicted = gallery.labels[dist.argmin(dim=1)]
    target = selection["target"]
    assert torch.equal(selection["predicted"], predicted)
    assert (gallery.labels[target] != predicted).all()
    assert not (target == index).any()
    other = gallery.labels.unsqueeze(0) != predicted.unsqueeze(1)
    best_other = dist.masked_fill(~other, float("inf")).min(dim=1).values
    assert torch.allclose(dist[index, target], best_other, atol=1e-5)


@pytest.mark.slow
def test_ltm_positives_exclude_self(trained):
    _, _, gallery = trained
    index = torch.tensor([0, 7, 100, 538])
    selection = ATTACKS.create("ltm").select(index, gallery, torch.Generator())
    same = gallery.labels.unsqueeze(0) == gallery.labels[index].unsqueeze(1)
    assert not selection["positives"][torch.arange(4), index].any()
    expected = same.clone()
    expected[torch.arange(4), index] = False
    assert torch.equal(selection["positives"], expected)
    assert torch.equal(selection["negatives"], ~same)


@pytest.mark.slow
def test_benchmark_pgd_step(benchmark, trained):
    """One PGD step of the engine on a batch of 128 with the QA+ loss (c2f2)."""
    bundle, model, gallery = trained
    index = torch.arange(128)
    images = bundle.test.batch(index)
    attack = ATTACKS.create("qa+")
    selection = attack.select(index, gallery, attack_generator(0, attack))
    config = PGDConfig(ROB28.epsilon, ROB28.alpha, 1)
    adversarial = benchmark(pgd, images, lambda x: attack.loss(model(x), index, selection, gallery), config)
    assert (adversarial - images).abs().amax() <= config.epsilon + 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("name, count", [("ca+", {"W": 3}), ("ca-", {"W": 2}), ("qa+", {"M": 3}), ("qa-", {"M": 2})])
def test_several_queries_or_candidates(trained, name, count):
    """W, M > 1: one value per query, the rank averaged over the W queries / M candidates."""
    _, model, gallery = trained
    index = torch.arange(10)
    attack = ATTACKS.create(name, **count)
    selection = attack.select(index, gallery, attack_generator(0, attack))
    chosen = selection["queries" if name.startswith("ca") else "candidates"]
    assert chosen.shape == (10, next(iter(count.values())))
    clean = gallery.embeddings[index]
    value = attack.measure(clean, index, selection, gallery)[attack.metrics[0]]
    assert value.shape == (10,) and ((value >= 0) & (value <= 100)).all()
    # Brute force: per chosen item, the share of gallery items strictly closer.
    if name.startswith("ca"):
        ref = gallery.embeddings[chosen]  # the fixed queries; the candidate is ranked for each
        to_gallery = torch.cdist(ref, gallery.embeddings.unsqueeze(0).expand(10, -1, -1))
        to_target = (ref - clean.unsqueeze(1)).norm(dim=-1)
    else:
        to_gallery = torch.cdist(clean, gallery.embeddings).unsqueeze(1)
        to_target = torch.cdist(clean, gallery.embeddings).gather(1, chosen)
    expected = (to_gallery < to_target.unsqueeze(-1) - 1e-5).float().sum(-1).mean(-1) * 100 / len(gallery)
    assert torch.allclose(value, expected, atol=100 / len(gallery) + 1e-4)
    loss = attack.loss(model(torch.rand(10, 1, 28, 28)), index, selection, gallery)
    assert loss.dim() == 0 and torch.isfinite(loss)


@pytest.mark.slow
def test_example_attack_plugin_runs_on_the_suite_engine(trained):
    """examples/top10_shift_attack.py: one file, loaded as a plugin, attacks through the shared loop."""
    from pathlib import Path

    from benchmark.plugins import load_plugin_file, restore_registries, snapshot_registries

    bundle, model, gallery = trained
    snapshot = snapshot_registries()
    try:
        registered = load_plugin_file(Path(__file__).resolve().parents[1] / "examples" / "top10_shift_attack.py")
        assert [e.name for e in registered["attacks"]] == ["top10-shift"]
        attack = ATTACKS.create("top10-shift")
        assert attack.spec("R10").direction == "higher" and repr(attack) == "top10-shift(k=10)"
        query_index = select_queries(len(bundle.test), 32, seed=0)
        report = run_attacks(model, lambda idx: bundle.test.batch(idx), gallery, [attack], PGD,
                             query_index=query_index, batch_size=32, seed=0, device="cpu", progress=False)
        assert report.before["R10"] == pytest.approx(100.0)
        assert report.after["R10"] < 50.0
    finally:
        restore_registries(snapshot)


def test_gallery_distances_resolve_a_shrunk_embedding_cap():
    """Distances between unit vectors 1e-4 apart are kept (float64 expansion), not rounded to 0."""
    from attacks.base import gallery_distances

    torch.manual_seed(0)
    pole = torch.zeros(1, 64)
    pole[0, 0] = 1.0
    points = torch.nn.functional.normalize(pole + 1e-4 * torch.randn(50, 64), dim=1)
    exact = torch.cdist(points.double(), points.double(), compute_mode="donot_use_mm_for_euclid_dist")
    got = gallery_distances(points, points)
    off = ~torch.eye(50, dtype=torch.bool)
    assert (got[off] - exact[off]).abs().max() < 1e-6 * float(exact[off].mean()) + 1e-9
    assert (exact[off].argsort(dim=-1) == exact[off].argsort(dim=-1)).all()
    float32 = torch.cdist(points, points)  # the expansion in float32: garbage at this scale
    assert (float32[off] - exact[off].float()).abs().max() > 0.1 * float(exact[off].mean())
