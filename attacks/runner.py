"""Running the attack suite on one model: select on clean → PGD → measure, batch by batch.

Every attack goes through the one PGD loop of ``benchmark.pgd``; the clean gallery is embedded
once by the caller and passed in. Values are accumulated per query (sums and counts), so the
reported means are over queries, not means of per-batch means (SPEC §4).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from benchmark.errors import BenchmarkError
from benchmark.pgd import PGDConfig, pgd

from .base import Attack, Gallery


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


class BatchResult(NamedTuple):
    """One attacked batch: adversarial images, the selection and per-query values."""

    adversarial: torch.Tensor
    selection: dict[str, torch.Tensor]
    before: dict[str, torch.Tensor]
    after: dict[str, torch.Tensor]
    passes: int  # forward+backward passes PGD made on this batch


def attack_batch(model: torch.nn.Module, attack: Attack, images: torch.Tensor, index: torch.Tensor,
                 gallery: Gallery, pgd_config: PGDConfig, generator: torch.Generator) -> BatchResult:
    """Attack one batch of test images (``images`` = clean test images at ``index``, on the model's
    device). Selection and "before" use the clean gallery embeddings; only PGD and the final
    measurement call the model."""
    index = index.to(gallery.device)
    with torch.no_grad():
        selection = attack.select(index, gallery, generator)
        before = attack.measure(gallery.embeddings[index], index, selection, gallery)
    passes = 0

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        nonlocal passes
        passes += 1
        return attack.loss(model(x), index, selection, gallery)

    adversarial = pgd(images, loss_fn, pgd_config, generator=generator)
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
) -> AttackReport:
    """Run every attack on the test queries ``query_index`` and return the means over queries.

    ``images_fn(index)`` gives the clean test images (float, [0, 1], CPU) for test indices;
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
    device = torch.device(device)
    query_index = query_index.long().cpu()
    pgd_config = pgd
    report = AttackReport(n_queries=len(query_index), pgd_steps=pgd_config.steps, pgd=repr(pgd_config))
    was_training = model.training
    model.eval()
    try:
        for attack in attacks:
            _run_one(model, images_fn, gallery, attack, pgd_config, query_index, batch_size, seed, device,
                     progress, return_images, report)
    finally:
        model.train(was_training)
    return report


def _run_one(model, images_fn, gallery: Gallery, attack: Attack, pgd_config: PGDConfig,
             query_index: torch.Tensor, batch_size: int, seed: int, device: torch.device,
             progress: bool, return_images: bool, report: AttackReport) -> None:
    generator = attack_generator(seed, attack)
    sums_before: dict[str, torch.Tensor] = {}
    sums_after: dict[str, torch.Tensor] = {}
    passes = pass_images = 0
    adversarial_batches = []
    start = time.perf_counter()
    batches = torch.split(query_index, batch_size)
    for index in tqdm(batches, desc=attack.name, leave=False, disable=not progress, unit="batch"):
        images = images_fn(index).to(device, non_blocking=True)
        result = attack_batch(model, attack, images, index, gallery, pgd_config, generator)
        passes += result.passes
        pass_images += result.passes * len(index)
        for sums, values in ((sums_before, result.before), (sums_after, result.after)):
            for key, value in values.items():
                # Per-query sums in float64 on the device: no host sync inside the loop.
                total = value.detach().double().sum()
                sums[key] = sums[key] + total if key in sums else total
        if return_images:
            adversarial_batches.append(result.adversarial.cpu())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    report.seconds[attack.name] = time.perf_counter() - start
    missing = set(attack.metrics) - set(sums_after)
    if missing:
        raise BenchmarkError(f"attack {attack.name!r} did not report {', '.join(sorted(missing))}")
    n = len(query_index)
    for key in attack.metrics:
        report.before[key] = float(sums_before[key]) / n
        report.after[key] = float(sums_after[key]) / n
    report.passes[attack.name] = passes
    report.pass_images[attack.name] = pass_images
    report.attacks[attack.name] = repr(attack)
    if return_images:
        report.images[attack.name] = torch.cat(adversarial_batches)
