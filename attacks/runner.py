"""Running attacks on one model: the ONE attack loop, select on clean → measure → optimise → measure.

Every evaluation goes through :func:`attack_queries`: the board's standard run, and every run of the
attack-strength audit (restarts, more steps, the APGD schedule, large ε, transfer from a surrogate,
the gradient-free random search) and of the convergence study. Per batch of queries it draws the
attack's selection once, from the attack's own seeded generator, measures the clean values, then
makes each requested :class:`Run` on that batch and measures what it reached. The clean gallery is
embedded once by the caller and passed in. Values are kept per query (the audit takes per-query
worst cases) and the means are over queries: one float64 sum over every query's value, not means of
per-batch means (SPEC §4).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, NamedTuple

import torch
from tqdm.auto import tqdm

from benchmark.determinism import deterministic_kernels
from benchmark.errors import BenchmarkError
from benchmark.pgd import PGDConfig, apgd, pgd

from .base import Attack, Gallery
from .random_search import random_search

if TYPE_CHECKING:
    from benchmark.strong_eval import StrongSpec

FIXED = "fixed"  # the fixed-step run of a strong evaluation (benchmark.strong_eval.FIXED, a study's too)

METHODS = ("pgd", "apgd", "random_search")


def select_queries(n_test: int, budget: int | None, seed: int) -> torch.Tensor:
    """The test indices the attacks perturb: all of them when ``budget`` is None or at least
    ``n_test``, else a seeded random subset of ``budget`` indices (sorted)."""
    if n_test < 1:
        raise BenchmarkError("the test split is empty; there is nothing to attack")
    if budget is None or budget >= n_test:
        return torch.arange(n_test)
    if budget < 1:
        raise BenchmarkError(f"the attack query budget must be a positive integer or None, got {budget!r}")
    generator = torch.Generator().manual_seed(derive_seed(seed, "queries"))
    return torch.randperm(n_test, generator=generator)[:budget].sort().values


def derive_seed(seed: int, name: str) -> int:
    """A 63-bit seed from (seed, name), so each attack's draws do not depend on the attack order."""
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def attack_generator(seed: int, attack: Attack) -> torch.Generator:
    """The CPU generator an attack draws its selections (and any random start) from."""
    return torch.Generator().manual_seed(derive_seed(seed, attack.name))


@dataclass(frozen=True)
class Run:
    """One way of attacking every query of a batch.

    ``method``: ``pgd`` (the signed-gradient loop; ``config.random_start`` for a restart), ``apgd``
    (the adaptive schedule, ``config.steps`` iterations) or ``random_search`` (gradient-free,
    ``queries`` model evaluations per batch). ``stream``: the name of the generator its random
    draws come from (runs naming the same stream share one generator, in run order); ``None``: the
    attack's own selection generator, as the standard run. ``surrogate``: crafted on the
    surrogate model with the surrogate's own selections, and scored on the attacked model against
    those same targets (a transfer attack). ``record``: step counts at which to keep, per query,
    the best iterate (the value most favourable to the attacker over every point the run visited,
    the start included) and the iterate itself; with a fixed step the first k steps of a long run
    are the k-step run, so one run records a whole budget curve (``pgd`` only below its budget).
    """

    name: str
    config: PGDConfig
    method: str = "pgd"
    stream: str | None = None
    surrogate: bool = False
    queries: int = 0
    record: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BenchmarkError(f"unknown attack run method {self.method!r}; accepted: {', '.join(METHODS)}")
        if self.method == "random_search" and (int(self.queries) != self.queries or self.queries < 1):
            raise BenchmarkError(f"a random-search run needs queries ≥ 1, got {self.queries!r}")
        if self.record:
            if self.method == "random_search" or self.surrogate:
                raise BenchmarkError("best-iterate recording needs a white-box gradient run (pgd or apgd)")
            limit = self.config.steps
            bad = [k for k in self.record if not 1 <= k <= limit or (self.method != "pgd" and k != limit)]
            if bad:
                raise BenchmarkError(f"run {self.name!r} cannot record steps {bad}: accepted 1..{limit} for pgd, "
                                     f"only {limit} (its whole budget) for {self.method}")


@dataclass
class Surrogate:
    """The model a transfer attack is crafted on, with its own clean gallery of the same test split."""

    model: torch.nn.Module
    gallery: Gallery


@dataclass
class Recorded:
    """Per query, at one step count of a recording run: the best iterate so far and the iterate itself."""

    best: dict[str, torch.Tensor]
    last: dict[str, torch.Tensor]


@dataclass
class AttackOutcome:
    """One attack's runs on every query: per-query values (in query order) and the means.

    ``before`` holds the clean values with the same selections; ``values[run]`` what each run
    reached; ``means`` the means over queries of ``before`` (key ``"before"``) and of each run;
    ``recorded[run][k]`` the recordings of a run with ``record``; ``passes[run]`` the model
    evaluations (forward, plus backward for the gradient runs) over all batches and
    ``pass_images[run]`` the images they carried.
    """

    attack: Attack
    before: dict[str, torch.Tensor] = field(default_factory=dict)
    values: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    means: dict[str, dict[str, float]] = field(default_factory=dict)
    recorded: dict[str, dict[int, Recorded]] = field(default_factory=dict)
    passes: dict[str, int] = field(default_factory=dict)
    pass_images: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    images: torch.Tensor | None = None  # the first run's adversarial images, with return_images=True


def worse(a: torch.Tensor, b: torch.Tensor, higher_is_better: bool | None) -> torch.Tensor:
    """Elementwise the value more favourable to the attacker (lower when higher means robust);
    ``a`` when the direction is unknown."""
    if higher_is_better is None:
        return a
    return torch.minimum(a, b) if higher_is_better else torch.maximum(a, b)


def query_losses(attack: Attack, emb: torch.Tensor, index: torch.Tensor, selection: dict[str, torch.Tensor],
                 gallery: Gallery) -> torch.Tensor:
    """Each query's own loss, [B]: the attack's loss on the one-query slice of the batch (selection
    tensors are batch-first; any other selection value is passed whole)."""
    rows = len(index)
    losses = []
    for b in range(rows):
        part = {key: (value[b:b + 1] if torch.is_tensor(value) and value.dim() > 0 and len(value) == rows else value)
                for key, value in selection.items()}
        losses.append(attack.loss(emb[b:b + 1], index[b:b + 1], part, gallery).detach().double())
    return torch.stack(losses)


def retarget(attack: Attack, selection: dict[str, torch.Tensor], gallery: Gallery) -> dict[str, torch.Tensor]:
    """The same targets as ``selection`` (drawn on another model's gallery), with whatever the
    attack derived from that gallery recomputed on ``gallery`` (``Attack.retarget`` where defined)."""
    method = getattr(attack, "retarget", None)
    return method(selection, gallery) if callable(method) else selection


class _Tracker:
    """The best iterate per query over the points a recording run visits."""

    def __init__(self, attack: Attack, record: tuple[int, ...]) -> None:
        self.attack, self.record = attack, set(record)
        self.best: dict[str, torch.Tensor] | None = None
        self.snapshots: dict[int, Recorded] = {}

    def see(self, values: dict[str, torch.Tensor]) -> None:
        if self.best is None:
            self.best = {key: value.clone() for key, value in values.items()}
            return
        for key, value in values.items():
            self.best[key] = worse(self.best[key], value, self.attack.spec(key).higher_is_better)

    def snapshot(self, step: int, last: dict[str, torch.Tensor]) -> None:
        if step in self.record and self.best is not None:
            self.snapshots[step] = Recorded({k: v.clone() for k, v in self.best.items()},
                                            {k: v.clone() for k, v in last.items()})


@deterministic_kernels()
def attack_queries(
    model: torch.nn.Module,
    images_fn: Callable[[torch.Tensor], torch.Tensor],
    gallery: Gallery,
    attack: Attack,
    runs: Sequence[Run],
    *,
    query_index: torch.Tensor,
    batch_size: int,
    seed: int,
    device: torch.device | str,
    surrogate: Surrogate | None = None,
    progress: bool = True,
    return_images: bool = False,
    desc: str | None = None,
) -> AttackOutcome:
    """Make every run of ``runs`` with ``attack`` on the test queries ``query_index``.

    ``images_fn(index)`` gives the clean test images (float, [0, 1], CPU) for test indices. The
    caller puts the models in eval mode. Selections come from the attack's generator seeded by
    (``seed``, attack name), one draw per batch whatever the runs, so every run of one call, and
    every call with the same queries and batch size, attacks the same targets. A surrogate run
    draws the surrogate's selections from a fresh copy of that stream on the surrogate's gallery.
    """
    if batch_size < 1:
        raise BenchmarkError(f"attack batch size must be a positive integer, got {batch_size!r}")
    if not runs:
        raise BenchmarkError("attack_queries needs at least one run")
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise BenchmarkError(f"each run needs its own name; got {', '.join(names)}")
    if any(run.surrogate for run in runs) and surrogate is None:
        raise BenchmarkError("a transfer run needs a surrogate model")
    device = torch.device(device)
    query_index = query_index.long().cpu()
    generator = attack_generator(seed, attack)
    surrogate_generator = attack_generator(seed, attack) if surrogate is not None else None
    streams: dict[str, torch.Generator] = {}
    outcome = AttackOutcome(attack)
    before_parts: dict[str, list[torch.Tensor]] = {}
    run_parts: dict[str, dict[str, list[torch.Tensor]]] = {run.name: {} for run in runs}
    record_parts: dict[str, dict[int, list[Recorded]]] = {run.name: {} for run in runs if run.record}
    passes = {run.name: 0 for run in runs}
    pass_images = {run.name: 0 for run in runs}
    adversarial_batches: list[torch.Tensor] = []

    def add(parts: dict[str, list[torch.Tensor]], values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            parts.setdefault(key, []).append(value.detach())

    start = time.perf_counter()
    batches = torch.split(query_index, batch_size)
    for index in tqdm(batches, desc=desc or attack.name, leave=False, disable=not progress, unit="batch"):
        images = images_fn(index).to(device, non_blocking=True)
        index = index.to(gallery.device)
        with torch.no_grad():
            selection = attack.select(index, gallery, generator)
            before = attack.measure(gallery.embeddings[index], index, selection, gallery)
        add(before_parts, before)
        surrogate_selection = scored_selection = None
        if surrogate is not None:
            with torch.no_grad():
                surrogate_index = index.to(surrogate.gallery.device)
                surrogate_selection = attack.select(surrogate_index, surrogate.gallery, surrogate_generator)
                scored_selection = retarget(attack, surrogate_selection, gallery)
        for run in runs:
            if run.stream is None:
                run_generator = generator
            else:
                run_generator = streams.setdefault(run.stream, torch.Generator().manual_seed(
                    derive_seed(seed, f"{attack.name}:{run.stream}")))
            if run.surrogate:
                assert surrogate is not None and surrogate_selection is not None
                crafting = (surrogate.model, surrogate.gallery, index.to(surrogate.gallery.device),
                            surrogate_selection)
                scoring = scored_selection
            else:
                crafting, scoring = (model, gallery, index, selection), selection
            adversarial, count, tracker = _make_run(attack, run, images, crafting, run_generator)
            passes[run.name] += count
            pass_images[run.name] += count * len(index)
            with torch.no_grad():
                after = attack.measure(model(adversarial), index, scoring, gallery)
            add(run_parts[run.name], after)
            if tracker is not None:
                tracker.see(after)
                tracker.snapshot(run.config.steps, after)
                for step, recorded in tracker.snapshots.items():
                    record_parts[run.name].setdefault(step, []).append(recorded)
            if return_images and run is runs[0]:
                adversarial_batches.append(adversarial.cpu())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    outcome.seconds = time.perf_counter() - start
    missing = set(attack.metrics) - set(before_parts)
    for run in runs:
        missing |= set(attack.metrics) - set(run_parts[run.name])
    if missing:
        raise BenchmarkError(f"attack {attack.name!r} did not report {', '.join(sorted(missing))}")
    outcome.before = {key: torch.cat(before_parts[key]) for key in attack.metrics}
    outcome.values = {run: {key: torch.cat(parts[key]) for key in attack.metrics} for run, parts in run_parts.items()}
    # Every mean is the same float64 sum over the concatenated per-query values (query_mean), so the
    # standard run's means are the same bits whether they come from a plain run, the strong
    # evaluation's fixed run or an audit (batch-by-batch partial sums differ in the last bit).
    outcome.means = {"before": {key: query_mean(outcome.before[key]) for key in attack.metrics}}
    outcome.means.update({run: {key: query_mean(values[key]) for key in attack.metrics}
                          for run, values in outcome.values.items()})
    outcome.recorded = {
        run: {step: Recorded({key: torch.cat([r.best[key] for r in parts]) for key in attack.metrics},
                             {key: torch.cat([r.last[key] for r in parts]) for key in attack.metrics})
              for step, parts in steps.items()}
        for run, steps in record_parts.items()}
    outcome.passes, outcome.pass_images = passes, pass_images
    if return_images:
        outcome.images = torch.cat(adversarial_batches)
    return outcome


def _make_run(attack: Attack, run: Run, images: torch.Tensor, crafting: tuple, generator: torch.Generator
              ) -> tuple[torch.Tensor, int, _Tracker | None]:
    """Optimise one batch with ``run``: the adversarial images, the model evaluations it made and,
    for a recording run, its tracker (without the final point, which the caller measures)."""
    craft_model, craft_gallery, craft_index, craft_selection = crafting
    tracker = _Tracker(attack, run.record) if run.record else None
    passes = 0

    if run.method == "random_search":
        def losses(x: torch.Tensor) -> torch.Tensor:
            nonlocal passes
            passes += 1
            return query_losses(attack, craft_model(x), craft_index, craft_selection, craft_gallery)

        return random_search(images, losses, run.config.epsilon, run.queries, generator=generator), passes, None

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        nonlocal passes
        passes += 1
        emb = craft_model(x)
        if tracker is not None:
            # The iterate this forward sees is x_t, t = passes − 1: the t-step run's result.
            with torch.no_grad():
                values = attack.measure(emb.detach(), craft_index, craft_selection, craft_gallery)
            tracker.see(values)
            if run.method == "pgd":
                tracker.snapshot(passes - 1, values)
        return attack.loss(emb, craft_index, craft_selection, craft_gallery)

    if run.method == "apgd":
        return apgd(images, loss_fn, run.config), passes, tracker
    return pgd(images, loss_fn, run.config, generator=generator), passes, tracker


class BatchResult(NamedTuple):
    """One attacked batch: adversarial images, the selection and per-query values."""

    adversarial: torch.Tensor
    selection: dict[str, torch.Tensor]
    before: dict[str, torch.Tensor]
    after: dict[str, torch.Tensor]
    passes: int  # forward+backward passes PGD made on this batch


def attack_batch(model: torch.nn.Module, attack: Attack, images: torch.Tensor, index: torch.Tensor,
                 gallery: Gallery, pgd_config: PGDConfig, generator: torch.Generator) -> BatchResult:
    """Attack one batch of test images with the standard run (``images`` = clean test images at
    ``index``, on the model's device), drawing the selection from ``generator``: the body of
    :func:`attack_queries` for one batch and one run, for callers that manage their own batches."""
    index = index.to(gallery.device)
    with torch.no_grad():
        selection = attack.select(index, gallery, generator)
        before = attack.measure(gallery.embeddings[index], index, selection, gallery)
    run = Run("standard", pgd_config)
    adversarial, passes, _ = _make_run(attack, run, images, (model, gallery, index, selection), generator)
    with torch.no_grad():
        after = attack.measure(model(adversarial), index, selection, gallery)
    return BatchResult(adversarial, selection, before, after, passes)


@dataclass
class AttackReport:
    """Means over queries of every metric, before (clean, same selections) and after the attack.

    ``seconds``/``passes``/``attacks`` are keyed by attack name; ``before``/``after`` by metric
    key (``CA+``, ``ES:D``, ...). ``passes`` counts PGD forward+backward passes over batches and
    ``pass_images`` the images they carried (for the overhead ratio: time outside PGD).
    """

    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    passes: dict[str, int] = field(default_factory=dict)
    pass_images: dict[str, int] = field(default_factory=dict)
    attacks: dict[str, str] = field(default_factory=dict)  # name -> repr (all hyper-parameters)
    # With a strong evaluation: per metric key the mean of the per-query worst case over its runs,
    # and per attack the per-query values {"before"|"standard"|"strong": {key: tensor}} (query order).
    strong: dict[str, float] = field(default_factory=dict)
    query_values: dict[str, dict[str, dict[str, torch.Tensor]]] = field(default_factory=dict)
    n_queries: int = 0
    pgd_steps: int = 0
    pgd: str = ""
    images: dict[str, torch.Tensor] = field(default_factory=dict)  # only with return_images=True

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    @property
    def total_passes(self) -> int:
        return sum(self.passes.values())

    @property
    def total_pass_images(self) -> int:
        return sum(self.pass_images.values())


STANDARD = "standard"


def query_mean(values: torch.Tensor) -> float:
    """The mean over queries in float64 (the sum of per-query values, as :func:`attack_queries`)."""
    return float(values.detach().double().sum()) / max(len(values), 1)


def strong_runs(config: PGDConfig, spec: StrongSpec) -> tuple[Run, ...]:
    """The runs of one strong evaluation (:mod:`benchmark.strong_eval`) at ``config``'s ε and α. The
    first is the fixed-step run, recording the standard step count ``config.steps`` (its iterate
    there is the standard run's) and its own length (best iterate); then the random restarts and
    one APGD run per budget, each recording its best iterate."""
    length = max(spec.fixed_steps, config.steps)
    runs = [Run(FIXED, replace(config, steps=length), record=tuple(sorted({config.steps, length})))]
    restart = replace(config, steps=max(spec.restart_steps, 1), random_start=True)
    runs += [Run(f"restart:{i + 1}", restart, stream="strong-restarts", record=(restart.steps,))
             for i in range(spec.restarts)]
    runs += [Run(f"apgd:{k}", replace(config, steps=k), method="apgd", record=(k,)) for k in spec.apgd_budgets]
    return tuple(runs)


def strong_values(outcome: AttackOutcome, standard_steps: int
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per query, from an :func:`attack_queries` call with :func:`strong_runs`: the standard values
    (the fixed run's iterate at ``standard_steps``) and the strong values (per value, the most
    attacker-favourable over every run's best iterate)."""
    standard = dict(outcome.recorded[FIXED][standard_steps].last)
    strong: dict[str, torch.Tensor] = {}
    for key in outcome.attack.metrics:
        direction = outcome.attack.spec(key).higher_is_better
        for steps in outcome.recorded.values():
            best = steps[max(steps)].best[key]
            strong[key] = worse(strong[key], best, direction) if key in strong else best
    return standard, strong


def run_attacks(
    model: torch.nn.Module,
    images_fn: Callable[[torch.Tensor], torch.Tensor],
    gallery: Gallery,
    attacks: Sequence[Attack],
    pgd: PGDConfig,
    *,
    query_index: torch.Tensor,
    batch_size: int,
    seed: int,
    device: torch.device | str,
    progress: bool = True,
    return_images: bool = False,
    strong: StrongSpec | None = None,
) -> AttackReport:
    """The board's evaluation: every attack's standard run (:func:`attack_queries` with one PGD run
    at ``pgd``) on the test queries ``query_index``, and the means over queries.

    With ``strong`` (:class:`benchmark.strong_eval.StrongSpec`), each attack makes the strong
    evaluation's runs in the same call instead: the standard values are its fixed-step run's
    iterate at ``pgd.steps`` (the same numbers as a separate standard run), ``report.strong`` the
    means of the per-query worst case over its runs, and ``report.query_values`` keeps the per-query
    values (clean, standard, strong) for rank intervals.

    ``gallery`` holds the clean embeddings of the whole test split, computed once by the caller
    (this function never embeds the gallery). The model is put in eval mode for the run and its
    previous mode is restored. Each attack draws from its own generator seeded by
    (``seed``, attack name), so its selections do not depend on which attacks run before it.
    """
    if batch_size < 1:
        raise BenchmarkError(f"attack batch size must be a positive integer, got {batch_size!r}")
    names = [attack.name for attack in attacks]
    if len(set(names)) != len(names):
        raise BenchmarkError(f"each attack may run once per suite; got {', '.join(names)}")
    query_index = query_index.long().cpu()
    report = AttackReport(n_queries=len(query_index), pgd_steps=pgd.steps, pgd=repr(pgd))
    was_training = model.training
    model.eval()
    runs = strong_runs(pgd, strong) if strong is not None else (Run(STANDARD, pgd),)
    try:
        for attack in attacks:
            outcome = attack_queries(model, images_fn, gallery, attack, runs,
                                     query_index=query_index, batch_size=batch_size, seed=seed, device=device,
                                     progress=progress, return_images=return_images)
            report.seconds[attack.name] = outcome.seconds
            report.before.update(outcome.means["before"])
            if strong is not None:
                standard, worst = strong_values(outcome, pgd.steps)
                report.after.update({key: query_mean(value) for key, value in standard.items()})
                report.strong.update({key: query_mean(value) for key, value in worst.items()})
                report.query_values[attack.name] = {"before": outcome.before, "standard": standard, "strong": worst}
            else:
                report.after.update(outcome.means[STANDARD])
            report.passes[attack.name] = sum(outcome.passes.values())
            report.pass_images[attack.name] = sum(outcome.pass_images.values())
            report.attacks[attack.name] = repr(attack)
            if return_images:
                report.images[attack.name] = outcome.images
    finally:
        model.train(was_training)
    return report
