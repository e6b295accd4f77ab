"""The attack-strength audit: is the standard evaluation strong enough for this model?

Robustness leaderboards in image classification learned that a defense can look robust only
because its evaluation was weak (few steps, one start, a fixed step size) or because its
gradients are masked. The audit re-attacks a trained model, on the same queries with the same
selections as the standard evaluation, in several stronger ways, and runs sanity checks from the
adversarial-evaluation literature (Carlini et al., "On evaluating adversarial robustness", 2019;
Croce & Hein, "Reliable evaluation ... AutoAttack", 2020). Every run goes through the one attack
loop of :mod:`attacks.runner` (:func:`~attacks.runner.attack_queries`), the loop the board's
standard run uses, so the audit's standard run IS the board's.

Strong evaluation, per attack, at the profile's ε; per query and per reported value (every key the
attack lists in ``metrics``, by its declared direction), the worst case (the value most
favourable to the attacker) over

* the standard run (zero start, the profile's steps and α): the audit never reports weaker
  attacks than the board's;
* ``restarts`` runs from a uniform random start in the ε-ball;
* one run with ``step_factor``× the steps at the same α;
* one run with the adaptive, momentum step-size schedule of APGD (:func:`benchmark.pgd.apgd`)
  for ``step_factor``× the steps.

Checks (each pass or flag, from the means of one extra run each). Gradient masking (``flagged``):

* **large ε**: at ε = ``large_epsilon`` (the whole pixel range by default) the attacks must
  succeed: ERS ≤ ``large_epsilon_max_ers``;
* **more steps**: ``step_factor``× the steps must not make the model look more robust: ERS of
  that run ≤ standard ERS + ``tolerance``;
* **transfer**: attacks crafted on a surrogate (the natural-training model of the same dataset
  and seed) with the surrogate's own gradients and selections, scored on the audited model
  against those same targets, must not beat the white-box attack: transfer ERS ≥ standard ERS −
  ``tolerance``. A transfer attack stronger than the white-box one means the white-box gradients
  are uninformative (masked);
* **gradient-free**: a random search (:mod:`attacks.random_search`, ``random_queries`` model
  evaluations per batch, no gradient) on the same ranking losses must not find worse cases than
  the gradient ensemble: the ERS of the per-query worst case over the strong evaluation and the
  random search ≥ strong ERS − ``tolerance``.

Not masking, but reported beside it (``flag:unconverged``, not part of ``flagged``): when
``step_factor``× the steps LOWERS ERS by more than ``tolerance``, the RobRank protocol (its fixed
32 steps) is unreliable for this entry, and its standard ERS overstates the robustness.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch

from benchmark.errors import BenchmarkError
from benchmark.pgd import PGDConfig

from .base import Attack, Gallery
from .runner import AttackOutcome, Run, Surrogate, attack_queries, query_mean, worse

__all__ = ["AuditReport", "AuditSpec", "STRONG_RUNS", "Surrogate", "audit_runs", "run_audit", "verdicts", "worse"]


@dataclass(frozen=True)
class AuditSpec:
    """The audit's budget and thresholds (part of the audit's id, recorded with its rows)."""

    restarts: int = 2
    step_factor: int = 4
    large_epsilon: float = 1.0
    large_epsilon_max_ers: float = 20.0  # ES:D and TMA keep a few points even when every attack succeeds
    tolerance: float = 2.0  # ERS points of noise allowed in the more-steps, transfer and gradient-free checks
    random_queries: int = 200  # model evaluations of the gradient-free random search, per batch
    version: int = 2

    def __post_init__(self) -> None:
        if self.restarts < 0 or self.step_factor < 1:
            raise BenchmarkError(f"audit needs restarts ≥ 0 and step_factor ≥ 1, got {self.restarts}, "
                                 f"{self.step_factor}")
        if not 0 < self.large_epsilon <= 1:
            raise BenchmarkError(f"audit large_epsilon must be in (0, 1], got {self.large_epsilon}")
        if self.random_queries < 0:
            raise BenchmarkError(f"audit random_queries must be ≥ 0 (0: no gradient-free check), "
                                 f"got {self.random_queries}")

    def to_dict(self) -> dict:
        return asdict(self)


# The run families the strong value is the worst case of (restarts are "restart:1", "restart:2", ...).
STRONG_RUNS = ("standard", "restart", "more_steps", "apgd")


def audit_runs(config: PGDConfig, spec: AuditSpec, *, transfer: bool) -> tuple[Run, ...]:
    """Every run of an audit, in the order each batch makes them."""
    longer = replace(config, steps=config.steps * spec.step_factor)
    large = PGDConfig(spec.large_epsilon, 2.5 * spec.large_epsilon / max(config.steps, 1), config.steps)
    runs = [Run("standard", config)]
    runs += [Run(f"restart:{i + 1}", replace(config, random_start=True), stream="audit-restarts")
             for i in range(spec.restarts)]
    runs += [Run("more_steps", longer), Run("apgd", longer, method="apgd"), Run("large_epsilon", large)]
    if transfer:
        runs.append(Run("transfer", config, surrogate=True))
    if spec.random_queries:
        runs.append(Run("gradient_free", config, method="random_search", stream="audit-random-search",
                        queries=spec.random_queries))
    return tuple(runs)


@dataclass
class AuditReport:
    """Means over queries per value: clean, standard, strong (worst case), each check's run, and the
    worst case of the strong evaluation and the gradient-free run (``with_gradient_free``)."""

    before: dict[str, float] = field(default_factory=dict)
    standard: dict[str, float] = field(default_factory=dict)
    strong: dict[str, float] = field(default_factory=dict)
    more_steps: dict[str, float] = field(default_factory=dict)
    large_epsilon: dict[str, float] = field(default_factory=dict)
    transfer: dict[str, float] = field(default_factory=dict)
    gradient_free: dict[str, float] = field(default_factory=dict)
    with_gradient_free: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    # Per value: which run gave the worst case how often (share of queries), for the report.
    worst_from: dict[str, dict[str, float]] = field(default_factory=dict)


def family(run: str) -> str:
    """``restart:2`` → ``restart``; other run names are their own family."""
    return run.split(":", 1)[0]


def strong_values(outcome: AttackOutcome) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, float]]]:
    """Per query and value, the worst case over the strong runs; and per value the share of queries
    whose worst case each run family gave (the first run reaching it is credited)."""
    strong, shares = {}, {}
    n = max(len(next(iter(outcome.before.values()))), 1) if outcome.before else 1
    runs = [run for run in outcome.values if family(run) in STRONG_RUNS]
    for key in outcome.attack.metrics:
        direction = outcome.attack.spec(key).higher_is_better
        value = outcome.values["standard"][key]
        origin = torch.zeros(len(value), dtype=torch.long, device=value.device)
        for position, run in enumerate(runs):
            candidate = worse(value, outcome.values[run][key], direction)
            origin = torch.where(candidate != value, torch.full_like(origin, position), origin)
            value = candidate
        strong[key] = value
        counts = {name: 0.0 for name in STRONG_RUNS}
        for position, run in enumerate(runs):
            counts[family(run)] += float((origin == position).sum())
        shares[key] = {name: count / n for name, count in counts.items()}
    return strong, shares


def run_audit(
    model: torch.nn.Module,
    images_fn: Callable[[torch.Tensor], torch.Tensor],
    gallery: Gallery,
    attacks: Sequence[Attack],
    config: PGDConfig,
    spec: AuditSpec,
    *,
    query_index: torch.Tensor,
    batch_size: int,
    seed: int,
    device: torch.device | str,
    surrogate: Surrogate | None = None,
    progress: bool = True,
) -> AuditReport:
    """Audit ``model`` with ``attacks`` on ``query_index`` (see the module docstring).

    Selections come from each attack's own seeded generator, drawn batch by batch by the same loop
    as the standard run (:func:`attacks.runner.attack_queries`), so the standard run here
    reproduces the board's values and the strong values are per-query worst cases over the same
    targets.
    """
    report = AuditReport()
    runs = audit_runs(config, spec, transfer=surrogate is not None)
    was_training = model.training
    model.eval()
    if surrogate is not None:
        surrogate.model.eval()
    try:
        for attack in attacks:
            start = time.perf_counter()
            outcome = attack_queries(model, images_fn, gallery, attack, runs, query_index=query_index,
                                     batch_size=batch_size, seed=seed, device=device, surrogate=surrogate,
                                     progress=progress, desc=f"audit {attack.name}")
            _collect(outcome, report)
            report.seconds[attack.name] = time.perf_counter() - start
    finally:
        model.train(was_training)
    return report


def _collect(outcome: AttackOutcome, report: AuditReport) -> None:
    report.before.update(outcome.means["before"])
    for run, target in (("standard", report.standard), ("more_steps", report.more_steps),
                        ("large_epsilon", report.large_epsilon), ("transfer", report.transfer),
                        ("gradient_free", report.gradient_free)):
        if run in outcome.means:
            target.update(outcome.means[run])
    strong, shares = strong_values(outcome)
    report.strong.update({key: query_mean(value) for key, value in strong.items()})
    report.worst_from.update(shares)
    if "gradient_free" in outcome.values:
        for key, value in strong.items():
            direction = outcome.attack.spec(key).higher_is_better
            report.with_gradient_free[key] = query_mean(worse(value, outcome.values["gradient_free"][key], direction))


def verdicts(report: AuditReport, ers: Callable[[dict[str, float]], float], spec: AuditSpec) -> dict[str, float]:
    """The audit's numbers: ERS of each run, the drop, the masking checks as flags (1 = flagged, any
    of them sets ``flagged``) and ``flag:unconverged`` (more steps lower ERS by more than the
    tolerance: the fixed-budget protocol is unreliable for this entry; not a masking flag)."""
    out = {"ERS:standard": ers(report.standard), "ERS:strong": ers(report.strong),
           "ERS:more_steps": ers(report.more_steps), "ERS:large_epsilon": ers(report.large_epsilon)}
    out["drop"] = out["ERS:standard"] - out["ERS:strong"]
    out["flag:large_epsilon"] = float(out["ERS:large_epsilon"] > spec.large_epsilon_max_ers)
    out["flag:more_steps"] = float(out["ERS:more_steps"] > out["ERS:standard"] + spec.tolerance)
    if report.transfer:
        out["ERS:transfer"] = ers(report.transfer)
        out["flag:transfer"] = float(out["ERS:transfer"] < out["ERS:standard"] - spec.tolerance)
    if report.gradient_free:
        out["ERS:gradient_free"] = ers(report.gradient_free)
        out["ERS:strong_with_gradient_free"] = ers(report.with_gradient_free)
        out["flag:gradient_free"] = float(out["ERS:strong_with_gradient_free"] < out["ERS:strong"] - spec.tolerance)
    flags = [v for k, v in out.items() if k.startswith("flag:")]
    out["flagged"] = float(any(v > 0 for v in flags))
    # Reported after "flagged" on purpose: an unconverged protocol is not gradient masking.
    out["flag:unconverged"] = float(out["ERS:more_steps"] < out["ERS:standard"] - spec.tolerance)
    if any(not math.isfinite(v) for v in out.values()):
        raise BenchmarkError("the audit produced a non-finite score")
    return out
