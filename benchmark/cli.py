"""The ``rrb`` command line.

Every error a user can cause is a BenchmarkError: printed as one line, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .errors import BenchmarkError
from .stopping import exit_interrupted, handle_stop_signals

DEFAULT_RESULTS = "results"
DEFAULT_REPORTS = "reports"
INTERRUPTED = "rrb: interrupted; finished cells are kept, re-run the same command to resume"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2) like our own errors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise BenchmarkError(f"{self.prog}: {message} (see '{self.prog} --help')")


MAX_SEED = 2**32 - 1  # benchmark.matrix.MAX_SEED: what every seeded generator accepts
MAX_THREADS = 1024  # --threads and --workers: far above any machine this runs on, below absurd


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer seed, 0 to {MAX_SEED}, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _join(values) -> str:
    return ",".join(str(v) for v in values)


def _csv(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to {MAX_THREADS}, got {text!r}")
    return value


def _queries(text: str) -> int | str:
    if text.strip().lower() == "all":
        return "all"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text!r}")
    return value


def _seeds(text: str) -> list[int]:
    return [_seed(t) for t in _csv(text)]


def _precision(text: str) -> str:
    from .precision import check_precision

    try:
        return check_precision(text)
    except BenchmarkError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _common(p: argparse.ArgumentParser, *, results: bool = True) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help="load a plugin file that registers defenses or attacks (repeatable)")
    p.add_argument("--data-root", default=None, help="folder holding the dataset files (see README)")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--precision", type=_precision, default="float32",
                   help="float32 (default) or bf16: the convolutional trunk under bfloat16 autocast, head and "
                        "normalisation in float32; part of the cell's id (README: Performance)")
    if results:
        p.add_argument("--results", default=DEFAULT_RESULTS, help="results directory (default: results)")


def _cell_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits", help="dataset name (rrb list datasets); default digits")
    p.add_argument("--defense", default="nt", help="defense name (rrb list defenses); default nt")
    p.add_argument("--defense-param", action="append", default=[], metavar="[DEFENSE:]NAME=VALUE",
                   help="override a hyper-parameter of the defense, e.g. gamma=0.05 or ga:gamma=0.05 (repeatable)")
    p.add_argument("--preset", default="quick", help="smoke, quick (default) or paper")
    p.add_argument("--seed", type=_seed, default=0, help=f"integer from 0 to {MAX_SEED} (default 0)")
    p.add_argument("--profile", default="auto", help="auto (default), rob28 or rob224")
    p.add_argument("--model", default=None, help="model name (default: the dataset's)")
    p.add_argument("--weights", default=None, help="ImageNet weights for resnet18: a local .pth file or 'imagenet'")
    p.add_argument("--attention-lambda", type=_non_negative_float, default=None,
                   help="λ of collapseness, a finite number >= 0 (default per dataset)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rrb", description="Adversarial robustness benchmark for image retrieval")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("list", help="list datasets, models, attacks, defenses or presets")
    p.add_argument("kind", choices=["datasets", "models", "attacks", "defenses", "presets", "profiles"])
    p.add_argument("pattern", nargs="?", default="*", help="glob pattern on names")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py")

    p = sub.add_parser("train", help="train one model and print its benign retrieval metrics")
    _cell_args(p)
    _common(p)
    p.add_argument("--retrain", action="store_true", help="train even when a checkpoint exists")

    p = sub.add_parser("attack", help="run the attack suite on a trained cell; print raw values, ERS and ARS")
    _cell_args(p)
    _common(p)
    p.add_argument("--attacks", type=_csv, default=None, metavar="A,B,...",
                   help="attacks to run (default: the whole ERS suite; rrb list attacks)")
    p.add_argument("--queries", type=_queries, default=None, metavar="N|all",
                   help="test queries each attack perturbs (default: the preset's; 'all': every test image)")
    _strong_arg(p)

    p = sub.add_parser("run", help="run a datasets x defenses x seeds matrix into the results store (resumable)")
    _matrix_args(p)
    p.add_argument("--defenses", type=_csv, default=None, metavar="A,B,...",
                   help="defenses of the matrix (default: every built-in defense; rrb list defenses)")
    p.add_argument("--defense-param", action="append", default=[], metavar="[DEFENSE:]NAME=VALUE",
                   help="override one defense's hyper-parameter, e.g. ga:gamma=0.05; NAME=VALUE alone when "
                        "--defenses names one defense (repeatable)")
    p.add_argument("--attacks", type=_csv, default=None, metavar="A,B,...",
                   help="attacks of every cell (default: the whole ERS suite; rrb list attacks)")
    p.add_argument("--leaderboard", default=None, metavar="DIR",
                   help="render the leaderboards into DIR when the matrix is done")
    p.add_argument("--threads", type=_threads, default=None, metavar="N",
                   help="torch CPU threads per cell (default: all for local, 1 per Dask worker); "
                        "CPU numbers are reproduced bit for bit only with the same count")
    p.add_argument("--audit", action="store_true",
                   help="then audit every cell: strong evaluation (restarts, 4x steps, APGD) and the "
                        "gradient-masking sanity checks; stored beside the cells, resumable")

    p = sub.add_parser("results", help="print the results store: one line per entry and seed, or the rows")
    p.add_argument("--results", default=DEFAULT_RESULTS, help="results directory (default: results)")
    p.add_argument("--dataset", default=None, help="only this dataset's rows")
    p.add_argument("--format", default="table", choices=["table", "csv", "json"],
                   help="table (default: one line per entry and seed), csv or json (every row)")

    p = sub.add_parser("leaderboard", help="render HTML and Markdown leaderboards from the results store")
    p.add_argument("--results", default=DEFAULT_RESULTS, help="results directory (default: results)")
    p.add_argument("--out", default=DEFAULT_REPORTS, help="output folder (default: reports)")
    p.add_argument("--dataset", default=None, help="only this dataset's leaderboards")

    p = sub.add_parser("study", help="convergence study of a stored cell: per query the best and last iterate "
                                     "at each PGD budget, the APGD schedule and random restarts (resumable)")
    _cell_args(p)
    _common(p)
    from .study import StudySpec

    study = StudySpec()
    p.add_argument("--budgets", type=_csv, default=None, metavar="K,K,...",
                   help=f"increasing PGD step counts the fixed-step run records (default {_join(study.budgets)}; "
                        "add 512 where 128 to 256 still moves ERS)")
    p.add_argument("--restarts", type=_count, default=study.restarts, metavar="R",
                   help=f"random-start runs, 0 or more (default {study.restarts})")
    p.add_argument("--restart-budget", type=_count, default=None, metavar="K",
                   help=f"steps of each random-start run (default {study.restart_steps}; at most the longest budget)")
    p.add_argument("--apgd-budgets", type=_csv, default=None, metavar="K,K,...",
                   help=f"one APGD-schedule run per budget (default {_join(study.apgd_budgets)})")
    p.add_argument("--no-apgd", action="store_true", help="leave out the APGD-schedule runs")
    p.add_argument("--threads", type=_threads, default=None, metavar="N",
                   help="torch CPU threads: the count the cell was run with (it is part of a CPU cell's id)")

    p = sub.add_parser("verify", help="check every stored file against the store's manifest (MANIFEST.sha256)")
    p.add_argument("--results", default=DEFAULT_RESULTS, help="results directory (default: results)")
    p.add_argument("--record", action="store_true",
                   help="enter the files that have no entry yet (a store written before manifests existed) and "
                        "forget entries whose file is gone; a changed file is never accepted")

    p = sub.add_parser("submit", help="validate a plugin defense, run the standard matrix for it, "
                                      "re-render the leaderboards")
    p.add_argument("plugin_file_or_name", metavar="FILE_OR_NAME",
                   help="a plugin .py file, or the name of an installed plugin (rrb.defenses entry point)")
    _matrix_args(p)
    p.add_argument("--out", default=DEFAULT_REPORTS, help="leaderboard folder to re-render (default: reports)")
    p.add_argument("--no-audit", action="store_true",
                   help="skip the attack-strength audit (a plugin then enters the boards marked unaudited)")
    return parser


def _matrix_args(p: argparse.ArgumentParser) -> None:
    """Options shared by the commands that run a matrix (``run``, ``submit``)."""
    p.add_argument("--datasets", type=_csv, default=["digits"], metavar="A,B,...",
                   help="datasets of the matrix (rrb list datasets); default digits")
    p.add_argument("--seeds", type=_seeds, default=[0], metavar="0,1,...",
                   help=f"integer seeds from 0 to {MAX_SEED} (default 0)")
    p.add_argument("--preset", default="quick", help="smoke, quick (default) or paper")
    p.add_argument("--profile", default="auto", help="auto (default), rob28 or rob224")
    p.add_argument("--executor", default="local", choices=["local", "dask"],
                   help="local (default: cells one after another here) or dask")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="Dask scheduler address (tcp://HOST:PORT); default: a LocalCluster on this machine")
    p.add_argument("--workers", type=_threads, default=None,
                   help=f"LocalCluster worker processes, 1 to {MAX_THREADS} (default 2)")
    _strong_arg(p)
    _common(p)


def _strong_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-strong", action="store_true",
                   help="the standard 32-step run only, without the strong evaluation the boards rank by "
                        "(another cell id; README: Ranking)")


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        handle_stop_signals()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        from .datasets.base import dataset_progress

        with _one_line_warnings(), dataset_progress(not getattr(args, "quiet", False)):
            return COMMANDS[args.command](args)
    except BenchmarkError as exc:
        print(f"rrb: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        if argv is None:
            exit_interrupted()
        return 130


class _one_line_warnings:
    """The store's warnings (a corrupt or tampered file left out) as one ``rrb: warning:`` line each,
    instead of Python's two-line warning format."""

    def __enter__(self) -> None:
        import warnings

        from .store import CorruptCellWarning

        self.previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, CorruptCellWarning):
                print(f"rrb: warning: {message}", file=sys.stderr)
            else:
                self.previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show

    def __exit__(self, *exc: object) -> None:
        import warnings

        warnings.showwarning = self.previous


def _load_plugins(paths: list[str]) -> None:
    from .plugins import load_plugins

    load_plugins(paths)


def cmd_list(args: argparse.Namespace) -> int:
    from .registry import REGISTRIES

    _load_plugins(args.plugin)
    if args.kind == "profiles":
        from .presets import PROFILES

        for profile in PROFILES.values():
            print(f"{profile.name:<12} v{profile.version}  {profile.description}")
        return 0
    entries = REGISTRIES[args.kind].entries(args.pattern)
    width = max((len(e.name) for e in entries), default=8) + 2
    for entry in entries:
        aliases = f" (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""
        origin = "" if not entry.is_plugin else f" [{entry.source}]"
        print(f"{entry.name:<{width}}{entry.description}{aliases}{origin}")
    return 0


def _check_plugins(cell) -> None:
    """Validate the plugin defense and plugin attacks a cell uses (as rrb submit does), before any work."""
    from .validation import check_plugins_in_use

    check_plugins_in_use([cell.defense_name], list(cell.attack_names), seed=cell.config.seed)


class _plugin_failures:
    """Third-party code failing mid-run becomes one line naming the plugin, not a traceback."""

    def __init__(self, cell) -> None:
        self.cell = cell

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        from .tasks import plugin_names

        if exc is None or isinstance(exc, (BenchmarkError, KeyboardInterrupt)) or not isinstance(exc, Exception):
            return False
        plugins = plugin_names(self.cell)
        if not plugins:
            return False
        raise BenchmarkError(f"{plugins} failed: {type(exc).__name__}: {exc}") from exc


def _cell_config(args: argparse.Namespace, **overrides):
    from .cell import CellConfig

    params = tuple(sorted(_cell_defense_params(args.defense, args.defense_param).items()))
    values = dict(dataset=args.dataset, defense=args.defense, seed=args.seed, preset=args.preset,
                  profile=args.profile, model=args.model, defense_params=params,
                  attention_lambda=args.attention_lambda, data_root=args.data_root, weights=args.weights,
                  device=args.device, precision=args.precision)
    values.update(overrides)
    return CellConfig(**values)


def _check_results_dir(path: str, *, create: bool = True) -> Path:
    """Writable (created when missing) for commands that write; for ``rrb attack``, which only reads a
    checkpoint, a missing folder is left to the missing-checkpoint message that names ``rrb train``."""
    from .store import check_results_dir, readable_results_dir

    if create:
        return check_results_dir(path)
    return readable_results_dir(path) if Path(path).exists() else Path(path)


def _preset_text(preset) -> str:
    name = preset.name if preset.version == 1 else f"{preset.name} v{preset.version}"
    return name if preset.faithful else f"{name} (REDUCED training adversary: a test, not a ranking)"


def _fmt(value: float) -> str:
    return f"{value:.4f}"


def cmd_train(args: argparse.Namespace) -> int:
    from .cell import benign_metrics, resolve, train_or_load
    from .embedding import embed_split

    _load_plugins(args.plugin)
    cell = resolve(_cell_config(args))
    _check_plugins(cell)
    results = _check_results_dir(args.results)
    print(f"train {cell.entry} on {cell.bundle.name} ({len(cell.bundle.train)} train / {len(cell.bundle.test)} test "
          f"images), model {cell.model_name}, preset {_preset_text(cell.preset)}, seed {cell.config.seed}, "
          f"device {cell.device}", file=sys.stderr)
    with _plugin_failures(cell):
        trained = train_or_load(cell, results, progress=not args.quiet, retrain=args.retrain)
        gallery = embed_split(trained.model, cell.bundle.test, device=cell.device)
        metrics = benign_metrics(cell, trained.model, gallery)
    h = trained.history
    status = "loaded checkpoint" if trained.loaded else "trained"
    print(f"{status}: {cell.checkpoint_path(results)}")
    print(f"train seconds: {h.train_seconds:.1f} ({h.seconds_per_epoch:.2f} s/epoch, {h.steps} steps, "
          f"{h.pgd_steps} PGD steps/batch)  collapsed: {h.collapsed}")
    print("test  " + "  ".join(f"{k}={_fmt(metrics[k])}" for k in ("R@1", "R@2", "mAP", "mAP@R", "mAP@10", "NMI")))
    print(f"train R@1={_fmt(metrics['train:R@1'])}")
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    from .cell import evaluate_cell, resolve
    from .robustness_scores import ARS_KEYS, ERS_KEYS

    _load_plugins(args.plugin)
    cell = resolve(_cell_config(args, attacks=tuple(args.attacks) if args.attacks else None,
                                strong=not args.no_strong))
    _check_plugins(cell)
    results = _check_results_dir(args.results, create=False)
    path = cell.checkpoint_path(results)
    trained = cell.load_checkpoint(path) if path.exists() else None
    if trained is None:
        command = ["rrb train", f"--dataset {cell.bundle.name}", f"--defense {cell.defense_name}",
                   f"--preset {cell.preset.name}", f"--seed {cell.config.seed}"]
        command += [f"--defense-param {k}={v}" for k, v in cell.config.defense_params]
        if cell.config.data_root:
            command.append(f"--data-root {cell.config.data_root}")
        if args.results != DEFAULT_RESULTS:
            command.append(f"--results {args.results}")
        command += [f"--plugin {p}" for p in args.plugin]
        if path.exists():
            raise BenchmarkError(f"checkpoint {path} cannot be loaded (truncated, corrupt, or written for another "
                                 "configuration); accepted: a checkpoint `rrb train` wrote for this cell. Train it "
                                 f"again: {' '.join(command)} --retrain")
        raise BenchmarkError(f"no trained model for this cell at {path}; train it first: {' '.join(command)}")
    print(f"attack {cell.entry} on {cell.bundle.name}: profile {cell.profile.id} (eps {cell.profile.epsilon:.4f}, "
          f"alpha {cell.profile.alpha:.4f}, {cell.profile.steps} steps), preset {_preset_text(cell.preset)}", file=sys.stderr)
    with _plugin_failures(cell):
        out = evaluate_cell(cell, trained, progress=not args.quiet, queries=args.queries)
    rows = out.rows
    attacked = int(rows["attack_queries"].iloc[0])
    print(f"queries attacked: {attacked} of {len(cell.bundle.test)} test images")
    adversarial = rows[rows["variant"] == "adversarial"]
    clean = rows[rows["variant"] == "clean"].set_index("metric")["value"]
    strong = rows[rows["variant"] == "strong"].set_index("metric")["value"]
    print(f"{'attack':<8}{'metric':<13}{'clean':>10}{'attacked':>10}" + (f"{'strong':>10}" if len(strong) else "")
          + f"{'seconds':>10}")
    for _, row in adversarial.iterrows():
        print(f"{row['attack']:<8}{row['metric']:<13}{clean[row['metric']]:>10.3f}{row['value']:>10.3f}"
              + (f"{strong[row['metric']]:>10.3f}" if len(strong) else "") + f"{row['attack_seconds']:>10.1f}")
    scores = rows[rows["attack"] == "score"].set_index("metric")["value"]
    benign = rows[rows["attack"] == "benign"].set_index("metric")["value"]
    print(f"R@1={benign['R@1']:.4f}  R@1(float32 faiss index)={benign['R@1:faiss-f32']:.4f}  "
          f"spread={benign['spread:mean_distance']:.4g}  "
          + "  ".join(f"{k}={scores[k]:.1f}" for k in ("ERS:strong", "ERS", "ERS:RobRank", "ARS") if k in scores))
    if "ERS" not in scores:
        print(f"(ERS needs all of {', '.join(ERS_KEYS)}; ARS needs {', '.join(ARS_KEYS)})")
    return 0


def _cell_defense_params(defense: str, items: list[str]) -> dict[str, str]:
    """The ``--defense-param`` items of a one-defense command (``NAME=VALUE`` or ``DEFENSE:NAME=VALUE``
    naming that defense, or one of its aliases)."""
    from .defense_api import parse_defense_params
    from .plugins import load_builtins
    from .registry import DEFENSES

    by_defense = parse_defense_params(items, [defense])
    if any(name != defense for name in by_defense):
        load_builtins()
        others = sorted({name for name in by_defense if DEFENSES.canonical(name) != DEFENSES.canonical(defense)})
        if others:
            raise BenchmarkError(f"--defense-param names defense {others[0]!r}, but this command runs {defense!r}; "
                                 f"accepted: NAME=VALUE or {defense}:NAME=VALUE")
    return {name: value for params in by_defense.values() for name, value in params.items()}


def _matrix_defense_params(args: argparse.Namespace) -> dict[str, dict[str, str]]:
    """The ``--defense-param`` items of a matrix command as {defense: {name: value}}."""
    from .defense_api import parse_defense_params

    return parse_defense_params(getattr(args, "defense_param", []), getattr(args, "defenses", None))


def _summary_line(summary) -> str:
    return "rrb: " + summary.describe()


def _split_for_plugins(args: argparse.Namespace) -> tuple[list[str] | None, list[str]]:
    """With ``--plugin``: the defenses this process runs (built-in or installed, no plugin file
    loaded) and those a child process runs with the plugin files. A plugin attack puts every
    defense in the child, since each cell then runs it."""
    from .plugins import load_builtins
    from .registry import ATTACKS, DEFENSES

    load_builtins()
    if any(a not in ATTACKS for a in args.attacks or ()):
        return [], list(args.defenses) if args.defenses else list(_builtin_defenses())
    if not args.defenses:
        return None, []  # the default matrix: the built-ins only
    here = [d for d in args.defenses if d in DEFENSES]
    return (here or []), [d for d in args.defenses if d not in DEFENSES]


def _builtin_defenses() -> list[str]:
    from .matrix import builtin_defense_names

    return builtin_defense_names()


def cmd_run(args: argparse.Namespace) -> int:
    from .matrix import run_matrix
    from .results_listing import format_results
    from .store import check_results_dir, load_results

    audit = _audit_spec() if args.audit else None
    lines, ids = [], set()
    here, apart = (args.defenses, []) if not args.plugin else _split_for_plugins(args)
    if args.plugin:
        from .isolation import plugin_file_hashes, run_apart

        hashes = plugin_file_hashes(args.plugin)  # exists, .py, compiles: checked before any work
        if not apart:
            print("rrb: note: the --plugin files are not loaded: no defense or attack of this matrix comes from "
                  "them (name their defenses with --defenses, their attacks with --attacks)", file=sys.stderr)
    if apart:
        if Path(args.results).exists():
            check_results_dir(args.results)
        request = {"command": "run", "results": args.results,
                   "matrix": _matrix_request(args, apart, _matrix_options(args, args.plugin, audit=audit))}
        outcome = run_apart(request, args.results, hashes)
        lines.append(f"rrb: plugin cells (run apart, {len(outcome.stored)} stored after checking their rows): "
                     + outcome.summary)
        ids |= set(outcome.cell_ids)
    if here is None or here:
        summary = run_matrix(args.datasets, here, args.seeds, _matrix_options(args, [], audit=audit))
        lines.insert(0, _summary_line(summary))
        ids |= {c.cell_id for c in summary.cells} | set(summary.cell_ids)
    for line in lines:
        print(line, file=sys.stderr)
    frame = load_results(args.results)
    frame = frame[frame["cell_id"].isin(ids)]
    sys.stdout.write(format_results(frame, "table"))
    if args.leaderboard:
        _render(args.results, args.leaderboard)
    else:
        print(f"rrb: render the leaderboards with: rrb leaderboard --results {args.results}", file=sys.stderr)
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from .results_listing import format_results
    from .store import load_results, readable_results_dir

    results = readable_results_dir(args.results)  # reading needs no write access
    frame = load_results(results, dataset=args.dataset)
    if args.dataset and frame.empty:
        present = sorted(p.name for p in (results / "cells").glob("*") if p.is_dir())
        raise BenchmarkError(f"no results in {args.results} for dataset {args.dataset!r}; datasets with results "
                             f"there: {', '.join(present) or 'none'}")
    sys.stdout.write(format_results(frame, args.format))
    return 0


def _render(results: str, out: str, dataset: str | None = None) -> list[Path]:
    from .report import render_from_store
    from .store import readable_results_dir, require_untampered

    require_untampered(readable_results_dir(results))
    written = render_from_store(readable_results_dir(results), Path(out), dataset=dataset)
    pages = [p for p in written if p.suffix == ".html" and p.name != "index.html"]
    print(f"rrb: wrote {len(pages)} leaderboard(s) ({len(written)} files) to {out}; open {Path(out) / 'index.html'}",
          file=sys.stderr)
    return written


def cmd_leaderboard(args: argparse.Namespace) -> int:
    _render(args.results, args.out, args.dataset)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit status 0 when every recorded file matches, 1 when some file changed or vanished."""
    from . import store

    results = store.readable_results_dir(args.results)
    if args.record:
        results = store.check_results_dir(results, create=False)
        with store.manifest_lock(results):
            check = store._check_store(results)
            adopt, refused = [], []
            for name in check.unrecorded:
                path = results / name
                if name.startswith(store.TELEMETRY_DIR):
                    problem = None
                elif name.startswith(store.QUERIES_DIR):
                    problem = store.queries_problem(path)
                else:
                    problem = store.read_cell_file(path).problem
                (refused if problem else adopt).append((name, problem))
            store.record_files(results, [results / n for n, _ in adopt], forget=check.missing)
        for name, _ in adopt:
            print(f"recorded    {name}")
        for name in check.missing:
            print(f"forgot      {name} (no such file)")
        for name, problem in refused:
            print(f"not recorded {name}: {problem}")
    check = store.check_store(results)
    for name in check.tampered:
        print(f"TAMPERED    {name}: its sha256 differs from {store.MANIFEST_NAME}; `rrb run` recomputes its cell")
    for name in check.missing:
        print(f"MISSING     {name}: recorded in {store.MANIFEST_NAME} but not on disk")
    for name in check.unrecorded:
        print(f"unrecorded  {name}: no entry in {store.MANIFEST_NAME} (adopt it with `rrb verify --record`)")
    print(f"rrb: {len(check.ok)} file(s) match {store.manifest_path(results)}, {len(check.tampered)} tampered, "
          f"{len(check.missing)} missing, {len(check.unrecorded)} unrecorded", file=sys.stderr)
    return 0 if check.clean else 1


def _audit_spec():
    from attacks.audit import AuditSpec

    return AuditSpec()


def _matrix_options(args: argparse.Namespace, plugins: list[str], *, audit):
    """The run_matrix options of a matrix command (``rrb run``, ``rrb submit``)."""
    from .matrix import MatrixOptions

    return MatrixOptions(preset=args.preset, profile=args.profile, results_dir=args.results, executor=args.executor,
                         scheduler=args.scheduler, workers=args.workers, data_root=args.data_root,
                         device=args.device, defense_params=_matrix_defense_params(args),
                         plugins=tuple(str(Path(p).expanduser().resolve()) for p in plugins),
                         progress=not args.quiet, attacks=getattr(args, "attacks", None),
                         threads=getattr(args, "threads", None), audit=audit, precision=args.precision,
                         strong=not args.no_strong)


def _matrix_request(args: argparse.Namespace, defenses: list[str] | None, options) -> dict:
    """The matrix a child process (benchmark.isolation) runs: its datasets, defenses, seeds and options."""
    return {"datasets": args.datasets, "defenses": defenses, "seeds": args.seeds, "options": options.to_json()}


def _board_has_builtins(results: str, datasets: list[str], preset: str) -> list[str]:
    """The datasets of ``datasets`` whose board at ``preset`` would hold no built-in entry."""
    from .store import load_results

    frame = load_results(results)
    lonely = []
    for dataset in datasets:
        rows = frame[(frame["dataset"] == dataset) & (frame["preset"] == preset)]
        if not (~rows["is_plugin"]).any():
            lonely.append(dataset)
    return lonely


def cmd_submit(args: argparse.Namespace) -> int:
    """Validate a plugin defense, run the standard matrix for it and re-render the leaderboards.

    A plugin file is imported, validated and run in a child process on a scratch copy of the store
    (benchmark.isolation); this process validates the rows it returns and stores them. A broken
    plugin ends with one line (exit status 2) and the results directory as it was.
    """
    from .isolation import plugin_file_hashes, run_apart
    from .results_listing import format_results
    from .store import check_results_dir, load_results

    target = Path(args.plugin_file_or_name)
    audit = None if args.no_audit else _audit_spec()
    if target.suffix == ".py" or target.is_file():
        hashes = plugin_file_hashes([*args.plugin, str(target)])
        if Path(args.results).exists():
            check_results_dir(args.results)
        request = {"command": "submit", "plugin": str(target.expanduser().resolve()), "results": args.results,
                   "extra_plugins": [str(Path(p).expanduser().resolve()) for p in args.plugin],
                   "matrix": _matrix_request(args, None, _matrix_options(args, args.plugin, audit=audit))}
        outcome = run_apart(request, args.results, hashes)
        name, summary_line, ids = outcome.entry, "rrb: " + outcome.summary, set(outcome.cell_ids)
        print(f"rrb: stored {len(outcome.stored)} cell(s) and {len(outcome.audits)} audit(s) the plugin run "
              f"returned, after checking their rows", file=sys.stderr)
    else:  # an installed plugin: imported by every rrb process, like any installed package
        from .matrix import run_matrix
        from .validation import validate_defense

        _load_plugins(args.plugin)
        checked = validate_defense(args.plugin_file_or_name, seed=args.seeds[0])
        name = checked.entry.name
        print(checked.describe(), file=sys.stderr)
        check_results_dir(args.results)
        try:
            summary = run_matrix(args.datasets, [name], args.seeds, _matrix_options(args, args.plugin, audit=audit))
        except (BenchmarkError, KeyboardInterrupt):
            raise
        except Exception as exc:  # third-party code failing mid-training: one line, not a traceback
            raise BenchmarkError(f"plugin defense {name!r} failed while its matrix ran: "
                                 f"{type(exc).__name__}: {exc}; cells finished before it are kept") from exc
        summary_line, ids = _summary_line(summary), {c.cell_id for c in summary.cells} | set(summary.cell_ids)
    print(summary_line, file=sys.stderr)
    frame = load_results(args.results)
    sys.stdout.write(format_results(frame[frame["cell_id"].isin(ids)], "table"))
    _render(args.results, args.out)
    print(f"rrb: {name} is on the leaderboards in {args.out} (marked as a plugin); its rows are in "
          f"{Path(args.results) / 'cells'} (see: rrb results --results {args.results})", file=sys.stderr)
    lonely = _board_has_builtins(args.results, args.datasets, args.preset)
    if lonely:
        print(f"rrb: note: {args.results} holds no built-in cells for {', '.join(lonely)} at preset {args.preset}, "
              f"so that board ranks {name} alone; to rank it beside the built-ins run `rrb run --datasets "
              f"{','.join(lonely)} --preset {args.preset} --seeds {','.join(map(str, args.seeds))} --results "
              f"{args.results} --leaderboard {args.out}` (they are computed once), or submit into the reference "
              "store (the default --results results, preset quick)", file=sys.stderr)
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from .study import StudySpec, run_study, study_curves

    _load_plugins(args.plugin)
    default = StudySpec()

    def steps(option: str, values: list[str] | None, fallback: tuple[int, ...]) -> tuple[int, ...]:
        try:
            return tuple(int(b) for b in values) if values else fallback
        except ValueError:
            raise BenchmarkError(f"{option} must be increasing positive integers, got {','.join(values)}") from None

    budgets = steps("--budgets", args.budgets, default.budgets)
    apgd = () if args.no_apgd else steps("--apgd-budgets", args.apgd_budgets, default.apgd_budgets)
    restart_budget = args.restart_budget if args.restart_budget is not None else min(default.restart_budget,
                                                                                      budgets[-1])
    spec = StudySpec(budgets=budgets, restarts=args.restarts, restart_budget=restart_budget, apgd_budgets=apgd)
    rows = run_study(_cell_config(args, threads=args.threads), _check_results_dir(args.results), spec,
                     progress=not args.quiet)
    curves = study_curves(rows)
    print(curves.pivot_table(index=["run", "iterate"], columns="budget", values="ERS", sort=False).round(2)
          .to_string())
    return 0


COMMANDS = {"study": cmd_study, "list": cmd_list, "train": cmd_train, "attack": cmd_attack, "run": cmd_run, "results": cmd_results,
            "leaderboard": cmd_leaderboard, "submit": cmd_submit, "verify": cmd_verify}


if __name__ == "__main__":
    sys.exit(main())
