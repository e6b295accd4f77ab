"""Implementation versions of the built-in defenses and attacks, and the code fingerprints that keep
them honest.

A cell's id hashes everything that decides its numbers. Settings are easy to hash; the code is
not: after a fix to a defense, the matrix would otherwise skip that defense's stale cells. So every
defense and attack class declares ``version`` (a ClassVar int), and the cell id includes the
defense's version and the version of every attack of the suite (plugins enter by file hash).

The versions are only worth something if they move when the code does. :func:`fingerprint` hashes
the code a built-in's numbers depend on: its own module, the project modules it imports from the
``defenses``/``attacks`` packages (transitively), and the shared numeric core of its kind
(the trainer and its telemetry, losses, distances, collapseness, PGD loop, model and the training
budget of the presets for defenses; the PGD loop, the attack runner, distances, the benign
retrieval metrics, the gallery's spread, the attack profiles and the strong evaluation's ensemble for attacks: every stored
evaluation number then follows the code).
Source is normalised through the AST with docstrings dropped, so comments, docstrings and
formatting do not count. ``implementation_versions.json`` beside this module (package data, so an
installed copy checks itself and nothing here touches the tests folder) records (version,
fingerprint) per built-in, and ``tests/test_versions.py`` fails when a fingerprint changes while
the recorded version does not. After changing a built-in:

* if its numbers change, bump its ``version`` and run ``python -m benchmark.versions --write``;
* if they do not (a refactor), run ``python -m benchmark.versions --write --numbers-unchanged``,
  which records the new fingerprint under the same version, so existing cells stay valid.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RECORD = Path(__file__).resolve().parent / "implementation_versions.json"

# The shared code every built-in of a kind runs through (paths relative to the repository root).
SHARED = {
    "defense": ("benchmark/trainer.py", "benchmark/defense_api.py", "benchmark/losses.py", "benchmark/distances.py",
                "benchmark/pgd.py", "benchmark/models.py", "benchmark/presets.py", "benchmark/telemetry.py",
                "benchmark/collapseness.py"),
    "attack": ("benchmark/pgd.py", "attacks/runner.py", "attacks/base.py", "benchmark/distances.py",
               "benchmark/retrieval_metrics.py", "benchmark/shrinkage.py", "benchmark/embedding.py",
               "benchmark/presets.py", "benchmark/strong_eval.py"),
}
FOLLOWED_PACKAGES = ("defenses", "attacks")  # imports inside these are followed transitively
NUMERIC_CORE = ("benchmark.losses", "benchmark.distances", "benchmark.pgd", "benchmark.telemetry",
                "benchmark.collapseness", "benchmark.defense_api", "benchmark.models")


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def normalised_source(path: Path) -> str:
    """The module's AST without docstrings: comment, docstring and layout changes do not count."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    return ast.dump(_strip_docstrings(tree), include_attributes=False)


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    for candidate in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def _project_imports(path: Path, package: str) -> list[str]:
    """Absolute names of the project modules ``path`` imports that the fingerprint follows."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            names = [name] + [f"{name}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for candidate in names:
            if (candidate.split(".")[0] in FOLLOWED_PACKAGES or candidate in NUMERIC_CORE) and _module_file(candidate):
                out.append(candidate)
    return out


def dependency_files(module: str, kind: str) -> list[Path]:
    """The files whose code decides the numbers of a built-in defined in ``module``."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            continue
        seen[name] = path
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        if name.split(".")[0] in FOLLOWED_PACKAGES and path.name != "__init__.py":
            todo.extend(_project_imports(path, package))
    files = {p.resolve() for p in seen.values() if p.name != "__init__.py"}
    files |= {(ROOT / rel).resolve() for rel in SHARED[kind]}
    return sorted(files)


def fingerprint(cls: type, kind: str) -> str:
    """sha256 over the normalised code of every file :func:`dependency_files` names."""
    digest = hashlib.sha256()
    for path in dependency_files(cls.__module__, kind):
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(normalised_source(path).encode())
    return digest.hexdigest()


def builtin_implementations() -> dict[str, dict[str, Any]]:
    """``{"defense:hm": {"version": 1, "fingerprint": "..."}, "attack:ca+": {...}, ...}`` for every built-in."""
    from .plugins import load_builtins
    from .registry import ATTACKS, DEFENSES

    load_builtins()
    out: dict[str, dict[str, Any]] = {}
    for kind, registry in (("defense", DEFENSES), ("attack", ATTACKS)):
        for entry in registry.entries():
            if entry.is_plugin:
                continue
            out[f"{kind}:{entry.name}"] = {"version": int(getattr(entry.obj, "version", 1)),
                                           "fingerprint": fingerprint(entry.obj, kind)}
    return dict(sorted(out.items()))


def read_record(path: Path = RECORD) -> dict[str, dict[str, Any]]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def stale_entries(current: dict[str, dict[str, Any]], recorded: dict[str, dict[str, Any]]) -> list[str]:
    """Problems: code changed under an unchanged version, or a record out of date."""
    problems = []
    for key, now in current.items():
        before = recorded.get(key)
        if before is None:
            problems.append(f"{key}: not recorded (run `python -m benchmark.versions --write`)")
        elif now["fingerprint"] != before["fingerprint"] and now["version"] == before["version"]:
            problems.append(f"{key}: its code changed but its version is still {now['version']}: bump `version` "
                            "if its numbers change, then `python -m benchmark.versions --write` (add "
                            "--numbers-unchanged if they do not)")
        elif now["version"] != before["version"]:
            problems.append(f"{key}: version {now['version']} but {before['version']} recorded "
                            "(run `python -m benchmark.versions --write`)")
    for key in recorded:
        if key not in current:
            problems.append(f"{key}: recorded but no longer built in (run `python -m benchmark.versions --write`)")
    return problems


def write_record(numbers_unchanged: bool = False, path: Path = RECORD) -> list[str]:
    """Record the current versions and fingerprints; refuses a changed fingerprint under an
    unchanged version unless ``numbers_unchanged`` says the change keeps every number."""
    current, recorded = builtin_implementations(), read_record(path)
    refused = [key for key, now in current.items()
               if key in recorded and now["fingerprint"] != recorded[key]["fingerprint"]
               and now["version"] == recorded[key]["version"] and not numbers_unchanged]
    if refused:
        return refused
    path.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.versions",
                                     description="check or record the built-ins' implementation versions")
    parser.add_argument("--write", action="store_true", help=f"record the current state in {RECORD}")
    parser.add_argument("--numbers-unchanged", action="store_true",
                        help="with --write: accept changed code under unchanged versions (a refactor)")
    args = parser.parse_args(argv)
    if args.write:
        refused = write_record(args.numbers_unchanged)
        if refused:
            print("refused: code changed under an unchanged version for " + ", ".join(refused)
                  + "; bump their `version` (numbers change) or pass --numbers-unchanged (they do not)",
                  file=sys.stderr)
            return 2
        print(f"recorded {RECORD}")
        return 0
    problems = stale_entries(builtin_implementations(), read_record())
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
