"""The attack-strength audit: is the standard evaluation strong enough for this model?

Robustness leaderboards in image classification learned that a defense can look robust only
because its evaluation was weak (few steps, one start, a fixed step size) or because its
gradients are masked. The audit re-attacks a trained model, on the same queries with the same
selections as the standard evaluation, in several stronger ways, and runs three sanity checks
from the adversarial-evaluation literature (Carlini et al., "On evaluating adversarial
robustness", 2019; Croce & Hein, "Reliable evaluation ... AutoAttack", 2020):

Strong evaluation, per attack, at the profile's ε; per query and per reported value, the worst
case (the value most favourable to the attacker, by the value's declared direction) over

* the standard run (zero start, the profile's steps and α): the audit never reports weaker
  attacks than the board's;
* ``restarts`` runs from a uniform random start in the ε-ball;
* one run with ``step_factor``× the steps at the same α;
* one run with the adaptive, momentum step-size schedule of APGD (:func:`benchmark.pgd.apgd`)
  for ``step_factor``× the steps.

Sanity checks (each pass or flag, from the means of one extra run each):

* **large ε**: at ε = ``large_epsilon`` (the whole pixel range by default) the attacks must
  succeed: ERS ≤ ``large_epsilon_max_ers``;
* **more steps**: ``step_factor``× the steps must not make the model look more robust: ERS of
  that run ≤ standard ERS + ``tolerance``;
* **transfer**: attacks crafted on a surrogate (the natural-training model of the same dataset
  and seed) with the surrogate's own gradients and selections must not beat the white-box
  attack: transfer ERS ≥ standard ERS − ``tolerance``. A transfer attack stronger than the
  white-box one means the white-box gradients are uninformative (masked).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
from tqdm.auto import tqdm

from benchmark.errors import BenchmarkError
from benchmark.pgd import PGDConfig, apgd, pgd

from .base import Attack, Gallery
from .runner import attack_generator, derive_seed


@dataclass(frozen=True)
class AuditSpec:
    """The audit's budget and thresholds (part of the audit's id, recorded with its rows)."""

    restarts: int = 2
    step_factor: int = 4
    large_epsilon: float = 1.0
    large_epsilon_max_ers: float = 20.0  # ES:D and TMA keep a few points even when every attack succeeds
    tolerance: float = 2.0  # ERS points of noise allowed in the more-steps and transfer checks
    version: int = 1

    def __post_init__(self) -> None:
        if self.restarts < 0 or self.step_factor < 1:
            raise BenchmarkError(f"audit needs restarts ≥ 0 and step_factor ≥ 1, got {self.restarts}, "
                                 f"{self.step_factor}")
        if not 0 < self.large_epsilon <= 1:
            raise BenchmarkError(f"audit large_epsilon must be in (0, 1], got {self.large_epsilon}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Surrogate:
    """The model a transfer attack is crafted on, with its own clean gallery of the same test split."""

    model: torch.nn.Module
    gallery: Gallery


RUNS = ("standard", "restart", "more_steps", "apgd")  # the runs the strong value is the worst case of


@dataclass
class AuditReport:
    """Means over queries per value: clean, standard, strong (worst case) and each check's run."""

    before: dict[str, float] = field(default_factory=dict)
    standard: dict[str, float] = field(default_factory=dict)
    strong: dict[str, float] = field(default_factory=dict)
    more_steps: dict[str, float] = field(default_factory=dict)
    large_epsilon: dict[str, float] = field(default_factory=dict)
    transfer: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    # Per value: which run gave the worst case how often (share of queries), for the report.
    worst_from: dict[str, dict[str, float]] = field(default_factory=dict)


def worse(a: torch.Tensor, b: torch.Tensor, higher_is_better: bool | None) -> torch.Tensor:
    """Elementwise the value more favourable to the attacker (lower when higher means robust)."""
    if higher_is_better is None:
        return a
    return torch.minimum(a, b) if higher_is_better else torch.maximum(a, b)


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

    Selections come from each attack's own seeded generator, drawn batch by batch exactly as the
    standard run (``attacks.runner``) draws them, so the standard run here reproduces the board's
    values and the strong values are per-query worst cases over the same targets.
    """
    device = torch.device(device)
    query_index = query_index.long().cpu()
    report = AuditReport()
    was_training = model.training
    model.eval()
    if surrogate is not None:
        surrogate.model.eval()
    try:
        for attack in attacks:
            start = time.perf_counter()
            _audit_one(model, images_fn, gallery, attack, config, spec, query_index, batch_size, seed, device,
                       surrogate, progress, report)
            report.seconds[attack.name] = time.perf_counter() - start
    finally:
        model.train(was_training)
    return report


def _audit_one(model, images_fn, gallery, attack: Attack, config: PGDConfig, spec: AuditSpec,
               query_index: torch.Tensor, batch_size: int, seed: int, device: torch.device,
               surrogate: Surrogate | None, progress: bool, report: AuditReport) -> None:
    generator = attack_generator(seed, attack)  # the standard run's stream: the same selections
    # The surrogate selects on its own gallery with a fresh copy of the same stream.
    surrogate_generator = attack_generator(seed, attack)
    restart_generator = torch.Generator().manual_seed(derive_seed(seed, f"{attack.name}:audit-restarts"))
    longer = replace(config, steps=config.steps * spec.step_factor)
    large = PGDConfig(spec.large_epsilon, 2.5 * spec.large_epsilon / max(config.steps, 1), config.steps)
    sums: dict[str, dict[str, torch.Tensor]] = {}
    origin_counts: dict[str, dict[str, float]] = {key: {run: 0.0 for run in RUNS} for key in attack.metrics}

    def add(kind: str, values: dict[str, torch.Tensor]) -> None:
        bucket = sums.setdefault(kind, {})
        for key, value in values.items():
            total = value.detach().double().sum()
            bucket[key] = bucket[key] + total if key in bucket else total

    for index in tqdm(torch.split(query_index, batch_size), desc=f"audit {attack.name}", leave=False,
                      disable=not progress, unit="batch"):
        images = images_fn(index).to(device)
        index_dev = index.to(gallery.device)
        with torch.no_grad():
            selection = attack.select(index_dev, gallery, generator)
            before = attack.measure(gallery.embeddings[index_dev], index_dev, selection, gallery)
        add("before", before)

        def loss_fn(x: torch.Tensor, selection=selection, index_dev=index_dev) -> torch.Tensor:
            return attack.loss(model(x), index_dev, selection, gallery)

        def measure(x: torch.Tensor, selection=selection, index_dev=index_dev) -> dict[str, torch.Tensor]:
            with torch.no_grad():
                return attack.measure(model(x), index_dev, selection, gallery)

        runs = {"standard": [measure(pgd(images, loss_fn, config))]}
        runs["restart"] = [measure(pgd(images, loss_fn, replace(config, random_start=True),
                                       generator=restart_generator)) for _ in range(spec.restarts)]
        runs["more_steps"] = [measure(pgd(images, loss_fn, longer))]
        runs["apgd"] = [measure(apgd(images, loss_fn, longer))]
        add("standard", runs["standard"][0])
        add("more_steps", runs["more_steps"][0])
        strong = {}
        for key in attack.metrics:
            direction = attack.spec(key).higher_is_better
            value = runs["standard"][0][key]
            origin = torch.zeros(len(value), dtype=torch.long, device=value.device)
            for position, run in enumerate(RUNS):
                for result in runs[run]:
                    candidate = worse(value, result[key], direction)
                    origin = torch.where(candidate != value, torch.full_like(origin, position), origin)
                    value = candidate
            strong[key] = value
            for position, run in enumerate(RUNS):
                origin_counts[key][run] += float((origin == position).sum())
        add("strong", strong)
        large_loss = loss_fn
        add("large_epsilon", measure(pgd(images, large_loss, large)))
        if surrogate is not None:
            with torch.no_grad():
                surrogate_selection = attack.select(index.to(surrogate.gallery.device), surrogate.gallery,
                                                    surrogate_generator)

            def surrogate_loss(x: torch.Tensor, s=surrogate_selection, i=index) -> torch.Tensor:
                i = i.to(surrogate.gallery.device)
                return attack.loss(surrogate.model(x), i, s, surrogate.gallery)

            add("transfer", measure(pgd(images, surrogate_loss, config)))
    n = len(query_index)
    for kind, target in (("before", report.before), ("standard", report.standard), ("strong", report.strong),
                         ("more_steps", report.more_steps), ("large_epsilon", report.large_epsilon),
                         ("transfer", report.transfer)):
        for key, total in sums.get(kind, {}).items():
            target[key] = float(total) / n
    missing = set(attack.metrics) - set(report.strong)
    if missing:
        raise BenchmarkError(f"attack {attack.name!r} did not report {', '.join(sorted(missing))}")
    for key, counts in origin_counts.items():
        report.worst_from[key] = {run: count / n for run, count in counts.items()}


def verdicts(report: AuditReport, ers: Callable[[dict[str, float]], float], spec: AuditSpec) -> dict[str, float]:
    """The audit's numbers: ERS of each run, the drop, and the three checks as flags (1 = flagged)."""
    out = {"ERS:standard": ers(report.standard), "ERS:strong": ers(report.strong),
           "ERS:more_steps": ers(report.more_steps), "ERS:large_epsilon": ers(report.large_epsilon)}
    out["drop"] = out["ERS:standard"] - out["ERS:strong"]
    out["flag:large_epsilon"] = float(out["ERS:large_epsilon"] > spec.large_epsilon_max_ers)
    out["flag:more_steps"] = float(out["ERS:more_steps"] > out["ERS:standard"] + spec.tolerance)
    if report.transfer:
        out["ERS:transfer"] = ers(report.transfer)
        out["flag:transfer"] = float(out["ERS:transfer"] < out["ERS:standard"] - spec.tolerance)
    flags = [v for k, v in out.items() if k.startswith("flag:")]
    out["flagged"] = float(any(v > 0 for v in flags))
    if any(not math.isfinite(v) for v in out.values()):
        raise BenchmarkError("the audit produced a non-finite score")
    return out
