"""The one attack loop (attacks.runner.attack_queries): the standard run, the audit's runs and the
convergence study's recordings share it; the transfer run is scored on the targets it was crafted
for; APGD's evaluations are counted; the random search stays in the ball; the audit's verdicts."""

from __future__ import annotations

import pytest
import torch

import attacks  # noqa: F401  (registers the suite)
from attacks.audit import AuditReport, AuditSpec, audit_runs, verdicts
from attacks.base import Gallery
from attacks.random_search import random_search
from attacks.runner import (
    Run,
    Surrogate,
    attack_generator,
    attack_queries,
    query_losses,
    retarget,
    run_attacks,
    select_queries,
)
from benchmark.datasets import load_digits
from benchmark.embedding import embed_split
from benchmark.errors import BenchmarkError
from benchmark.models import C2F2
from benchmark.pgd import PGDConfig, _apgd_checkpoints, apgd
from benchmark.presets import PROFILES
from benchmark.registry import ATTACKS

ROB28 = PROFILES["rob28"]


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return C2F2(embedding_dim=32).eval()


@pytest.fixture(scope="module")
def setup():
    bundle = load_digits()
    test = bundle.test.subset(torch.arange(120))
    model = _model(0)
    gallery = Gallery(embed_split(model, test), test.labels)
    return test, model, gallery, select_queries(len(test), 8, 0)


def _queries(setup, attack, runs, **kw):
    test, model, gallery, index = setup
    return attack_queries(model, lambda i: test.batch(i), gallery, attack, runs, query_index=index, batch_size=4,
                          seed=0, device="cpu", progress=False, **kw)


@pytest.mark.slow
def test_standard_run_and_audit_share_one_loop(setup):
    test, model, gallery, index = setup
    config = PGDConfig(ROB28.epsilon, ROB28.alpha, 2)
    # One attack of each kind: candidate (gallery-derived selection), query, embedding shift (two
    # values of opposite directions), translocation.
    suite = [ATTACKS.create(name) for name in ("ca-", "qa+", "es", "gtt")]
    report = run_attacks(model, lambda i: test.batch(i), gallery, suite, config, query_index=index, batch_size=4,
                         seed=0, device="cpu", progress=False)
    spec = AuditSpec(restarts=1, step_factor=2, random_queries=3)
    for attack in suite:
        outcome = _queries(setup, attack, audit_runs(config, spec, transfer=False))
        for key in attack.metrics:  # the audit's standard run IS the board's, bit for bit
            assert outcome.means["standard"][key] == report.after[key], key
            assert outcome.means["before"][key] == report.before[key], key


@pytest.mark.slow
def test_first_steps_of_a_long_fixed_step_run_are_the_short_run(setup):
    long = Run("fixed", PGDConfig(ROB28.epsilon, ROB28.alpha, 6), record=(2, 4, 6))
    for name in ("qa+", "es"):
        attack = ATTACKS.create(name)
        recorded = _queries(setup, attack, (long,)).recorded["fixed"]
        for steps in (2, 4):
            short = _queries(setup, attack, (Run("short", PGDConfig(ROB28.epsilon, ROB28.alpha, steps)),))
            for key in attack.metrics:
                assert torch.allclose(recorded[steps].last[key].double(), short.values["short"][key].double(),
                                      atol=1e-6), (name, steps, key)
        for key in attack.metrics:
            higher = attack.spec(key).higher_is_better
            sign = 1.0 if higher else -1.0  # lower "sign × value" is better for the attacker
            for a, b in ((2, 4), (4, 6)):
                assert (sign * recorded[b].best[key] <= sign * recorded[a].best[key] + 1e-9).all()
            assert (sign * recorded[6].best[key] <= sign * recorded[6].last[key] + 1e-9).all()
    attack = ATTACKS.create("qa+")  # APGD records its best iterate over its whole budget only
    schedule = _queries(setup, attack, (Run("apgd:6", PGDConfig(ROB28.epsilon, ROB28.alpha, 6), method="apgd",
                                            record=(6,)),))
    assert set(schedule.recorded["apgd:6"]) == {6}
    assert (schedule.recorded["apgd:6"].get(6).best["QA+"] <= schedule.values["apgd:6"]["QA+"]).all()


def test_recording_is_refused_where_it_means_nothing():
    with pytest.raises(BenchmarkError, match="only 8"):
        Run("a", PGDConfig(0.1, 0.01, 8), method="apgd", record=(4,))
    with pytest.raises(BenchmarkError, match="accepted 1..8"):
        Run("p", PGDConfig(0.1, 0.01, 8), record=(16,))
    with pytest.raises(BenchmarkError, match="method"):
        Run("x", PGDConfig(0.1, 0.01, 8), method="square")


def test_transfer_run_is_scored_on_the_surrogates_targets(setup):
    test, model, gallery, index = setup
    other = _model(1)
    surrogate = Surrogate(other, Gallery(embed_split(other, test), test.labels))
    config = PGDConfig(ROB28.epsilon, ROB28.alpha, 2)
    for name in ("ca-", "gtt"):  # CA− re-derives its distances on the scored gallery; GTT keeps indices
        attack = ATTACKS.create(name)
        outcome = _queries(setup, attack, (Run("transfer", config, surrogate=True),), surrogate=surrogate,
                           return_images=True)
        generator = attack_generator(0, attack)
        expected, white_box = [], []
        own = attack_generator(0, attack)
        for batch, images in zip(torch.split(index, 4), torch.split(outcome.images, 4)):
            crafted_for = attack.select(batch, surrogate.gallery, generator)
            with torch.no_grad():
                emb = model(images)
                expected.append(attack.measure(emb, batch, retarget(attack, crafted_for, gallery), gallery))
                white_box.append(attack.measure(emb, batch, attack.select(batch, gallery, own), gallery))
        for key in attack.metrics:
            assert torch.equal(outcome.values["transfer"][key], torch.cat([e[key] for e in expected])), name
        if name == "gtt":  # the surrogate's top-1 targets are not the white-box model's
            assert not torch.equal(outcome.values["transfer"]["GTT"], torch.cat([w["GTT"] for w in white_box]))


def test_apgd_counts_an_evaluation_per_reset():
    calls = 0

    def flat(x):  # never improves: every checkpoint halves the step and resets the iterate
        nonlocal calls
        calls += 1
        return (x * 0).sum()

    steps = 20
    apgd(torch.rand(2, 4), flat, PGDConfig(0.1, 0.01, steps))
    resets = len([c for c in _apgd_checkpoints(steps) if c < steps])
    assert resets > 0 and calls == steps + resets


def test_random_search_needs_no_gradient_and_stays_in_the_ball():
    torch.manual_seed(0)
    x0 = torch.rand(3, 1, 8, 8)
    target = torch.rand(3, 1, 8, 8)

    def losses(x):  # flat almost everywhere: every gradient is zero
        return (torch.round(x * 3) / 3 - target).abs().flatten(1).sum(1)

    out = random_search(x0, losses, 0.3, 60, generator=torch.Generator().manual_seed(1))
    again = random_search(x0, losses, 0.3, 60, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert (out - x0).abs().max() <= 0.3 + 1e-6 and out.min() >= 0 and out.max() <= 1
    start = random_search(x0, losses, 0.3, 1, generator=torch.Generator().manual_seed(1))  # Square's stripes
    assert (losses(out) < losses(start)).all()


def test_query_losses_are_each_querys_own(setup):
    test, model, gallery, index = setup
    attack = ATTACKS.create("qa+")
    batch = index[:4]
    selection = attack.select(batch, gallery, attack_generator(0, attack))
    with torch.no_grad():
        emb = model(test.batch(batch))
        per_query = query_losses(attack, emb, batch, selection, gallery)
        alone = attack.loss(emb[2:3], batch[2:3], {k: v[2:3] for k, v in selection.items()}, gallery)
    assert per_query.shape == (4,) and float(per_query[2]) == pytest.approx(float(alone))


def _report(**runs) -> AuditReport:
    report = AuditReport()
    for name, value in runs.items():
        setattr(report, name, {"v": value})
    return report


def test_more_steps_reports_an_unconverged_protocol_apart_from_masking():
    spec = AuditSpec(tolerance=2.0)
    score = lambda values: values["v"]  # noqa: E731  (the verdicts take any score function)
    drop = verdicts(_report(standard=30.0, strong=10.0, more_steps=20.0, large_epsilon=5.0), score, spec)
    assert drop["flag:unconverged"] == 1.0 and drop["flag:more_steps"] == 0.0 and drop["flagged"] == 0.0
    rise = verdicts(_report(standard=30.0, strong=29.0, more_steps=33.0, large_epsilon=5.0), score, spec)
    assert rise["flag:more_steps"] == 1.0 and rise["flagged"] == 1.0 and rise["flag:unconverged"] == 0.0
    steady = verdicts(_report(standard=30.0, strong=29.0, more_steps=29.0, large_epsilon=5.0), score, spec)
    assert steady["flag:unconverged"] == 0.0 and steady["flagged"] == 0.0


def test_gradient_free_worse_case_flags_masking():
    spec = AuditSpec(tolerance=2.0)
    score = lambda values: values["v"]  # noqa: E731
    base = dict(standard=40.0, strong=39.0, more_steps=39.0, large_epsilon=5.0, gradient_free=20.0)
    masked = verdicts(_report(**base, with_gradient_free=20.0), score, spec)
    assert masked["flag:gradient_free"] == 1.0 and masked["flagged"] == 1.0
    sound = verdicts(_report(**base, with_gradient_free=38.0), score, spec)
    assert sound["flag:gradient_free"] == 0.0 and sound["flagged"] == 0.0
