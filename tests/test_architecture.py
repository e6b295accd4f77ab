"""Imports go one way: no module-level import circle in the project, and the registry on the ground floor."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmark", "attacks", "defenses")


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def module_level_imports(name: str, path: Path, modules: dict[str, Path], *, deferred: bool = True) -> set[str]:
    """Project modules ``name`` imports, at module level and (``deferred``) inside functions too: an
    import deferred into a function still makes the two modules depend on each other. Imports under
    ``TYPE_CHECKING`` count too: a module that names another's type depends on it, and a circle
    through annotations is a circle a reader has to follow. ``benchmark.plugins`` imports the
    built-in packages by name (``BUILTIN_MODULES``); those count as imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
            elif deferred and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.With,
                                                ast.For, ast.While)):
                visit(node.body)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:  # ``from pkg import submodule`` imports the submodule
                    if f"{target}.{alias.name}" in modules:
                        found.add(f"{target}.{alias.name}")
                if target in modules:
                    found.add(target)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    if name == "benchmark.plugins":
        from benchmark.plugins import BUILTIN_MODULES

        found.update(BUILTIN_MODULES)
    found.discard(name)
    return found


def test_no_import_circle() -> None:
    modules = project_modules()
    graph = {name: module_level_imports(name, path, modules) for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def dfs(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                dfs(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            dfs(name, [name])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_registry_imports_nothing_of_the_project() -> None:
    modules = project_modules()
    assert module_level_imports("benchmark.registry", modules["benchmark.registry"], modules) <= {"benchmark.errors"}
    code = ("import sys; import benchmark.registry; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('benchmark', 'attacks', 'defenses')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['benchmark', 'benchmark.errors', 'benchmark.registry']"


def test_builtins_are_imported_in_one_place() -> None:
    """Only benchmark/plugins.py imports the built-in packages to fill the registries."""
    offenders = []
    for name, path in project_modules().items():
        if name == "benchmark.plugins":
            continue
        text = path.read_text(encoding="utf-8")
        if "import_builtins" in text or "load_builtins()" in text and "from .plugins import" not in text \
                and "from ..plugins import" not in text:
            offenders.append(name)
    assert not offenders, offenders
