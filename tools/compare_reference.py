"""Side by side with the reference: RobRank's own attack code and ours on the same model and queries.

Times the standard ERS suite (CA+, CA-, QA+, QA-, TMA, ES, LTM, GTM, GTT at the profile's epsilon,
step and 32 steps) twice in one process, on the same trained cell, the same clean gallery and the
same query images, with the same torch thread count:

* **reference**: ``robrank.attacks.advrank.AdvRank`` from a RobRank checkout (``--robrank PATH``,
  imported from there, never copied here), metric ``N`` (normalised Euclidean), one call per attack
  and query batch, as its launcher makes them;
* **ours**: :func:`attacks.runner.run_attacks`, the standard run alone (no strong evaluation).

The two rounds alternate (reference, ours, reference, ours, ...) ``--rounds`` times, so slow drift
of the machine falls on both; the minimum per side is reported, with the per-attack times, the
ratio, and each side's values after the attack (their own candidate draws, so equal only up to
sampling noise). The reference keeps its own conventions (random candidate selection per call,
cdist to the whole gallery); nothing of it is changed, only imported without its package
``__init__`` (which pulls in pytorch-lightning and the training code the attacks do not need).

Example (after ``rrb run`` stored the cell; a missing checkpoint is retrained with the cell's
thread count and checked against the stored weight hash)::

    python tools/compare_reference.py --robrank ../robrank --dataset digits --defense nt --threads 2
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
import types
from pathlib import Path

import torch

# The rob28/rob224 suite in RobRank's launcher syntax, with the names our registry gives the same attacks.
REFERENCE_SUITE = (
    ("CA+", "CA", {"pm": "+", "W": 1}),
    ("CA-", "CA", {"pm": "-", "W": 1}),
    ("QA+", "QA", {"pm": "+", "M": 1}),
    ("QA-", "QA", {"pm": "-", "M": 1}),
    ("TMA", "TMA", {}),
    ("ES", "ES", {}),
    ("LTM", "LTM", {}),
    ("GTM", "GTM", {}),
    ("GTT", "GTT", {}),
)


def import_reference(checkout: Path):
    """``AdvRank`` from a RobRank checkout, without running ``robrank/__init__.py``."""
    package_dir = checkout / "robrank"
    if not (package_dir / "attacks" / "advrank.py").is_file():
        raise SystemExit(f"{checkout} is not a RobRank checkout: {package_dir / 'attacks' / 'advrank.py'} is missing")
    for name, path in (("robrank", package_dir), ("robrank.attacks", package_dir / "attacks")):
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module
    try:
        return importlib.import_module("robrank.attacks.advrank").AdvRank
    except ImportError as exc:
        raise SystemExit(f"cannot import RobRank's attack code ({exc}); it needs termcolor, rich, pygments, scipy "
                         "and pytest besides torch: pip install termcolor rich pygments scipy pytest") from exc


class _ReferenceView(torch.nn.Module):
    """Our model as RobRank's attack sees it: ``forward`` gives the embedding; ``dataset`` names the
    dataset family its semantics-preserving terms would read (the ERS suite uses none)."""

    def __init__(self, model: torch.nn.Module, dataset: str) -> None:
        super().__init__()
        self.inner = model
        self.dataset = dataset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--robrank", required=True, type=Path, help="path to a RobRank checkout")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--defense", default="nt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads for both sides (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per side (default 2)")
    parser.add_argument("--results", default="results")
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args(argv)

    from attacks.runner import run_attacks
    from benchmark.cell import CellConfig, resolve, train_or_load
    from benchmark.registry import ATTACKS

    AdvRank = import_reference(args.robrank.resolve())
    torch.set_num_threads(args.threads)
    cell = resolve(CellConfig(dataset=args.dataset, defense=args.defense, seed=args.seed, preset=args.preset,
                              threads=args.threads, data_root=args.data_root, device="cpu"))
    trained = train_or_load(cell, Path(args.results), progress=False)
    model = trained.model.eval()
    profile = cell.profile
    gallery = cell.clean_gallery(model)  # the process already runs with the cell's thread count
    query_index = cell.query_index()
    batches = [query_index[i:i + cell.preset.attack_batch]
               for i in range(0, len(query_index), cell.preset.attack_batch)]
    images = [cell.bundle.test.batch(b) for b in batches]
    labels = [cell.bundle.test.labels[b] for b in batches]
    candi = (gallery.embeddings, gallery.labels)
    view = _ReferenceView(model, "mnist" if profile.name == "rob28" else "cub").eval()
    ours_suite = [ATTACKS.create(name) for name in cell.attack_names]

    def reference_round() -> tuple[dict[str, float], dict[str, dict]]:
        seconds, values = {}, {}
        torch.manual_seed(args.seed)
        for name, kind, params in REFERENCE_SUITE:
            attacker = AdvRank(view, eps=profile.epsilon, alpha=profile.alpha, pgditer=profile.steps,
                               attack_type=kind, metric="N", device="cpu", **params)
            start = time.perf_counter()
            summaries = [attacker(x, y, candi)[3] for x, y in zip(images, labels)]
            seconds[name] = time.perf_counter() - start
            values[name] = {k: statistics.fmean(s[k] for s in summaries) for k in summaries[0]}
        return seconds, values

    def ours_round() -> tuple[dict[str, float], dict[str, float]]:
        report = run_attacks(model, lambda idx: cell.bundle.test.batch(idx), gallery, ours_suite,
                             profile.pgd_config(), query_index=query_index, batch_size=cell.preset.attack_batch,
                             seed=cell.config.seed, device="cpu", progress=False)
        return dict(report.seconds), dict(report.after)

    print(f"{cell.entry} seed {args.seed} on {cell.bundle.name} ({cell.preset.name} v{cell.preset.version}, "
          f"{profile.id}): {len(query_index)} queries in batches of {cell.preset.attack_batch}, gallery "
          f"{len(gallery.labels)}, {args.threads} threads, torch {torch.__version__}, {args.rounds} alternating rounds")
    ref_times, our_times = [], []
    ref_values = our_values = None
    for round_ in range(args.rounds):
        seconds, ref_values = reference_round()
        ref_times.append(seconds)
        seconds, our_values = ours_round()
        our_times.append(seconds)
        print(f"round {round_ + 1}: reference {sum(ref_times[-1].values()):.1f} s, "
              f"ours {sum(our_times[-1].values()):.1f} s", flush=True)

    print(f"\n{'attack':<6} {'reference s':>12} {'ours s':>8} {'ratio':>6}")
    ours_names = [a.name for a in ours_suite]
    for (name, _, _), our_name in zip(REFERENCE_SUITE, ours_names):
        ref = min(t[name] for t in ref_times)
        ours = min(t[our_name] for t in our_times)
        print(f"{name:<6} {ref:>12.2f} {ours:>8.2f} {ref / ours:>6.2f}")
    ref_total = min(sum(t.values()) for t in ref_times)
    our_total = min(sum(t.values()) for t in our_times)
    print(f"{'suite':<6} {ref_total:>12.2f} {our_total:>8.2f} {ref_total / our_total:>6.2f}")
    print("\nvalues after the attack (last round; each side draws its own candidates)")
    print("reference:", {k: {m: round(v, 4) for m, v in d.items()} for k, d in ref_values.items()})
    print("ours:     ", {k: round(v, 4) for k, v in our_values.items()})
    # GTM's target differs by design (REFERENCE §2.6: RobRank uses a position inside the subset of
    # other-label items as a gallery index); our loop with that index shows whether this is all of it.
    bug_compatible = run_attacks(model, lambda idx: cell.bundle.test.batch(idx), gallery, [_reference_index_gtm()],
                                 profile.pgd_config(), query_index=query_index, batch_size=cell.preset.attack_batch,
                                 seed=cell.config.seed, device="cpu", progress=False)
    print(f"GTM with RobRank's target index (our loop): {bug_compatible.after['GTM']:.4f}; "
          f"reference {ref_values['GTM']}; ours (correct index) {our_values['GTM']:.4f}")
    return 0


def _reference_index_gtm():
    """Our GTM with RobRank's target index: the nearest other-label item's position among the
    other-label items (gallery order), used as a gallery index (REFERENCE §2.6, the index bug)."""
    from attacks.misrank import GreedyTop1MisrankAttack

    class ReferenceIndexGTM(GreedyTop1MisrankAttack):
        def select(self, index, gallery, generator):
            selection = super().select(index, gallery, generator)
            other = gallery.labels.unsqueeze(0) != selection["predicted"].unsqueeze(1)
            position = other.long().cumsum(1).gather(1, selection["target"].unsqueeze(1)).squeeze(1) - 1
            return {**selection, "target": position}

    return ReferenceIndexGTM()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
