"""Where the registries get filled: the built-ins (imported in one place) and third-party plugins.

* :func:`load_builtins` imports the modules whose import registers the built-in datasets, models,
  presets, attacks and defenses. It is the only place the project imports them for that purpose.
* Installed plugins come through Python entry points, one group per kind (``rrb.defenses``,
  ``rrb.attacks``, ``rrb.datasets``, ``rrb.models``); :func:`load_entry_points` runs the first
  time a registry is asked for a name (this module installs itself as
  :attr:`benchmark.registry.Registry.before_lookup`).
* A plugin file (``--plugin file.py``) is imported by :func:`load_plugin_file`, all or nothing.

Everything a plugin registers is marked with where it came from (``plugin:<path>`` or
``entrypoint:<distribution>``) and the sha256 of its file, which enters the cell id. A plugin that
fails to import, registers something invalid or shadows a built-in is rolled back completely
(:func:`snapshot_registries` / :func:`restore_registries`) so it never leaves half a registration.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BenchmarkError
from .registry import BUILTIN, REGISTRIES, Entry, Registry

# The modules whose import registers the built-ins, in dependency order.
BUILTIN_MODULES = ("benchmark.datasets", "benchmark.models", "benchmark.presets", "attacks", "defenses")
PLUGIN_MODULE_PREFIX = "rrb_plugin_"


def load_builtins() -> None:
    """Import the modules whose import registers the built-ins (idempotent, cheap after the first call)."""
    for name in BUILTIN_MODULES:
        importlib.import_module(name)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def defining_file_hash(obj: Any) -> str | None:
    """sha256 of the source file that defines ``obj`` (a class or function), when there is one."""
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    filename = getattr(module, "__file__", None) if module is not None else None
    if not filename or not Path(filename).is_file():
        return None
    return file_sha256(Path(filename))


@dataclass(frozen=True)
class RegistrySnapshot:
    """The contents of every registry at one moment (see :func:`snapshot_registries`)."""

    state: dict[str, tuple[dict[str, Entry], dict[str, str], bool, dict[str, str]]]
    plugin_modules: frozenset[str]


def snapshot_registries() -> RegistrySnapshot:
    """Remember what every registry holds, to undo a plugin that fails (or a test's plugins)."""
    state = {kind: (dict(reg._entries), dict(reg._aliases), reg._entry_points_loaded,
                    dict(reg._entry_point_errors))
             for kind, reg in REGISTRIES.items()}
    return RegistrySnapshot(state, frozenset(m for m in sys.modules if m.startswith(PLUGIN_MODULE_PREFIX)))


def restore_registries(snapshot: RegistrySnapshot) -> None:
    """Put every registry back as it was at ``snapshot``; forget plugin files imported since."""
    for kind, reg in REGISTRIES.items():
        entries, aliases, loaded, errors = snapshot.state[kind]
        reg._entries, reg._aliases = dict(entries), dict(aliases)
        reg._entry_points_loaded, reg._entry_point_errors = loaded, dict(errors)
    for module in [m for m in sys.modules if m.startswith(PLUGIN_MODULE_PREFIX)]:
        if module not in snapshot.plugin_modules:
            del sys.modules[module]


def load_entry_points(registry: Registry) -> None:
    """Register what installed packages expose under ``registry``'s entry-point group.

    Built-ins first, so a plugin cannot claim a built-in name. An entry point names either a
    class that registers itself on import (decorated with ``@DEFENSES.register("name")``; the
    registered name wins) or an undecorated class (or other callable), registered here under the
    entry point's own name. Whatever the import registers, in any registry, is marked
    ``entrypoint:<distribution>`` with the sha256 of the module file that defines it. A package
    that fails to load (import error, a name that shadows a built-in, a module that registers
    nothing) is skipped with one warning on stderr and its partial registrations are rolled back,
    so it cannot hide the built-ins; asking for its name later repeats the reason.
    """
    registry._entry_points_loaded = True
    load_builtins()
    if not registry.entry_point_group:
        return
    for ep in importlib.metadata.entry_points(group=registry.entry_point_group):
        _load_one_entry_point(registry, ep)


def _load_one_entry_point(registry: Registry, ep: importlib.metadata.EntryPoint) -> None:
    dist = getattr(ep.dist, "name", None) or "unknown"
    where = f"entry point {ep.name!r} = {ep.value!r} in group {registry.entry_point_group!r} (package {dist})"
    snapshot = snapshot_registries()
    previous = {kind: reg._current_source for kind, reg in REGISTRIES.items()}
    for reg in REGISTRIES.values():
        reg._current_source = (f"entrypoint:{dist}", None)
    try:
        before = {kind: set(reg._entries) for kind, reg in REGISTRIES.items()}
        obj = ep.load()
        if not any(set(reg._entries) - before[kind] for kind, reg in REGISTRIES.items()):
            # The entry point names an object that did not register itself.
            if inspect.ismodule(obj) or not callable(obj):
                raise BenchmarkError(
                    f"it names {type(obj).__name__} {ep.value!r}, which registered nothing; point it at "
                    f"the {registry.kind} class (module:Class), or register the class in that module")
            # A class whose module was imported (and registered) before, then rolled back,
            # keeps the name its decorator gave it.
            own = vars(obj).get("registry_name") if inspect.isclass(obj) else None
            registry.add(own if isinstance(own, str) else ep.name, obj)
        for kind, reg in REGISTRIES.items():
            for name in set(reg._entries) - before[kind]:
                entry = reg._entries[name]
                entry.source_hash = entry.source_hash or defining_file_hash(entry.obj)
    except Exception as exc:  # a broken third-party package must not hide the built-ins
        restore_registries(snapshot)
        cause = str(exc) if isinstance(exc, BenchmarkError) else f"{type(exc).__name__}: {exc}"
        message = f"{where} failed to load, skipped: {cause}"
        registry._entry_point_errors[registry._key(ep.name)] = message
        print(f"rrb: warning: {message}", file=sys.stderr)
    finally:
        for kind, reg in REGISTRIES.items():
            reg._current_source = previous[kind]


Registry.before_lookup = load_entry_points


def load_plugin_file(path: str | Path) -> dict[str, list[Entry]]:
    """Import a plugin file; return the entries it registered, per registry kind.

    Anything the file registers is marked ``plugin:<path>`` with the file's hash. Loading the
    same file again in one process returns what it registered the first time. Import errors and
    registrations the registry refuses (a name that shadows a built-in or is taken) become one
    ``BenchmarkError`` naming the file and the cause, and nothing the file registered is kept.
    """
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"plugin file {str(path)!r} does not exist (expected a .py file)")
    if path.suffix != ".py":
        raise BenchmarkError(f"plugin file {str(path)!r} is not a .py file")
    load_builtins()
    for reg in REGISTRIES.values():
        reg.load_entry_points()  # installed plugins first: a file cannot silently take their names
    digest = file_sha256(path)
    module_name = f"{PLUGIN_MODULE_PREFIX}{digest[:12]}"
    if module_name in sys.modules:  # the same file loaded twice in one process
        already = {kind: [e for e in reg._entries.values() if e.source_hash == digest]
                   for kind, reg in REGISTRIES.items()}
        if any(already.values()):
            return already
        del sys.modules[module_name]  # its registrations were rolled back since: import it afresh
    snapshot = snapshot_registries()
    before = {kind: set(reg._entries) for kind, reg in REGISTRIES.items()}
    previous = {kind: reg._current_source for kind, reg in REGISTRIES.items()}
    source = (f"plugin:{path.resolve()}", digest)
    for reg in REGISTRIES.values():
        reg._current_source = source
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except BenchmarkError as exc:
        restore_registries(snapshot)
        raise BenchmarkError(f"plugin {str(path)!r}: {exc}") from None
    except KeyboardInterrupt:
        restore_registries(snapshot)
        raise
    except (Exception, SystemExit) as exc:  # a plugin calling sys.exit() must not end rrb silently
        restore_registries(snapshot)
        raise BenchmarkError(
            f"plugin {str(path)!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        for kind, reg in REGISTRIES.items():
            reg._current_source = previous[kind]
    return {kind: [reg._entries[n] for n in reg._entries if n not in before[kind]]
            for kind, reg in REGISTRIES.items()}


def load_plugins(paths: list[str] | tuple[str, ...] = ()) -> None:
    """The built-ins, then each plugin file (the ``--plugin`` option of every command)."""
    load_builtins()
    for path in paths:
        load_plugin_file(path)


__all__ = ["BUILTIN", "BUILTIN_MODULES", "PLUGIN_MODULE_PREFIX", "RegistrySnapshot", "defining_file_hash",
           "file_sha256", "load_builtins", "load_entry_points", "load_plugin_file", "load_plugins",
           "restore_registries", "snapshot_registries"]
