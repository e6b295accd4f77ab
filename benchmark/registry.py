"""One registry mechanism for datasets, models, attacks, defenses and presets.

Modelled on the idea of timm's model registry: a decorator registers an object under a
canonical name plus aliases, ``names()``/``entries()`` list what exists with a one-line
description, and an unknown name fails with a message listing the known ones. Third-party
plugins arrive through Python entry points (one group per kind) or a ``--plugin file.py``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.metadata
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BenchmarkError

BUILTIN = "builtin"


@dataclass
class Entry:
    """One registered object with its names and where it came from."""

    name: str
    obj: Any
    description: str
    aliases: tuple[str, ...] = ()
    source: str = BUILTIN  # "builtin", "entrypoint:<dist>" or "plugin:<path>"
    source_hash: str | None = None  # sha256 of the plugin file, when there is one

    @property
    def is_plugin(self) -> bool:
        return self.source != BUILTIN


@dataclass
class Registry:
    """Name → object registry of one kind (``dataset``, ``model``, ``attack``, ...)."""

    kind: str
    entry_point_group: str | None = None
    _entries: dict[str, Entry] = field(default_factory=dict)
    _aliases: dict[str, str] = field(default_factory=dict)
    _entry_points_loaded: bool = False
    # Entry points of this group that failed to load: entry point name -> why (shown on lookup).
    _entry_point_errors: dict[str, str] = field(default_factory=dict)
    # Set while a plugin module executes so that what it registers is marked as a plugin.
    _current_source: tuple[str, str | None] = (BUILTIN, None)

    @staticmethod
    def _key(name: str) -> str:
        return name.strip().lower().replace("_", "-")

    def register(self, name: str, *, aliases: tuple[str, ...] | list[str] = (),
                 description: str | None = None) -> Callable[[Any], Any]:
        """Decorator: register ``obj`` under ``name`` and ``aliases``."""

        def decorator(obj: Any) -> Any:
            self.add(name, obj, aliases=aliases, description=description)
            return obj

        return decorator

    def add(self, name: str, obj: Any, *, aliases=(), description: str | None = None) -> Entry:
        key = self._key(name)
        if not key:
            raise BenchmarkError(f"a {self.kind} needs a non-empty name")
        taken = [k for k in (key, *map(self._key, aliases)) if k in self._entries or k in self._aliases]
        source, source_hash = self._current_source
        if taken:
            existing = self._entries.get(self._aliases.get(taken[0], taken[0]))
            if existing is not None and existing.obj is obj:
                return existing  # re-import of the same module: harmless
            if existing is not None and not existing.is_plugin and source != BUILTIN:
                raise BenchmarkError(
                    f"plugin {self.kind} name {taken[0]!r} shadows the built-in {self.kind} "
                    f"{existing.name!r}; choose another name"
                )
            raise BenchmarkError(f"{self.kind} name {taken[0]!r} is already registered")
        if description is None:
            doc = inspect.getdoc(obj) or ""
            description = doc.strip().splitlines()[0] if doc.strip() else ""
        entry = Entry(key, obj, description, tuple(self._key(a) for a in aliases), source, source_hash)
        self._entries[key] = entry
        for alias in entry.aliases:
            self._aliases[alias] = key
        if hasattr(obj, "__dict__") and not isinstance(obj, type(sys)):
            try:
                obj.registry_name = key
            except (AttributeError, TypeError):
                pass
        return entry

    def remove(self, name: str) -> None:
        """Forget a registration (used to roll back a plugin that failed validation)."""
        key = self.canonical(name)
        entry = self._entries.pop(key)
        for alias in entry.aliases:
            self._aliases.pop(alias, None)

    def load_entry_points(self) -> None:
        """Register what installed packages expose under this kind's entry-point group.

        An entry point names either a class that registers itself on import (decorated with
        ``@DEFENSES.register("name")``; the registered name wins) or an undecorated class (or
        other callable), registered here under the entry point's own name. Whatever the import
        registers, in any registry, is marked ``entrypoint:<distribution>`` with the sha256 of the
        module file that defines it. A package that fails to load (import error, a name that
        shadows a built-in, a module that registers nothing) is skipped with one warning on
        stderr and its partial registrations are rolled back, so it cannot hide the built-ins;
        asking for its name later repeats the reason.
        """
        if self._entry_points_loaded or not self.entry_point_group:
            return
        self._entry_points_loaded = True
        import_builtins()  # built-ins first, so a plugin cannot claim a built-in name
        for ep in importlib.metadata.entry_points(group=self.entry_point_group):
            self._load_one_entry_point(ep)

    def _load_one_entry_point(self, ep: importlib.metadata.EntryPoint) -> None:
        dist = getattr(ep.dist, "name", None) or "unknown"
        where = f"entry point {ep.name!r} = {ep.value!r} in group {self.entry_point_group!r} (package {dist})"
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
                        f"the {self.kind} class (module:Class), or register the class in that module")
                # A class whose module was imported (and registered) before, then rolled back,
                # keeps the name its decorator gave it.
                own = vars(obj).get("registry_name") if inspect.isclass(obj) else None
                self.add(own if isinstance(own, str) else ep.name, obj)
            for kind, reg in REGISTRIES.items():
                for name in set(reg._entries) - before[kind]:
                    entry = reg._entries[name]
                    entry.source_hash = entry.source_hash or _defining_file_hash(entry.obj)
        except Exception as exc:  # a broken third-party package must not hide the built-ins
            restore_registries(snapshot)
            cause = str(exc) if isinstance(exc, BenchmarkError) else f"{type(exc).__name__}: {exc}"
            message = f"{where} failed to load, skipped: {cause}"
            self._entry_point_errors[self._key(ep.name)] = message
            print(f"rrb: warning: {message}", file=sys.stderr)
        finally:
            for kind, reg in REGISTRIES.items():
                reg._current_source = previous[kind]

    def canonical(self, name: str) -> str:
        key = self._key(name)
        if key in self._entries:
            return key
        if key in self._aliases:
            return self._aliases[key]
        self.load_entry_points()
        if key in self._entries:
            return key
        if key in self._aliases:
            return self._aliases[key]
        if key in self._entry_point_errors:
            raise BenchmarkError(self._entry_point_errors[key])
        known = ", ".join(self.names()) or "(none)"
        raise BenchmarkError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}")

    def get(self, name: str) -> Entry:
        return self._entries[self.canonical(name)]

    def __contains__(self, name: str) -> bool:
        key = self._key(name)
        return key in self._entries or key in self._aliases

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name).obj(*args, **kwargs)

    def names(self, pattern: str = "*") -> list[str]:
        self.load_entry_points()
        return [n for n in self._entries if fnmatch.fnmatch(n, pattern)]

    def entries(self, pattern: str = "*") -> list[Entry]:
        return [self._entries[n] for n in self.names(pattern)]

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries())


DATASETS = Registry("dataset", "rrb.datasets")
MODELS = Registry("model", "rrb.models")
ATTACKS = Registry("attack", "rrb.attacks")
DEFENSES = Registry("defense", "rrb.defenses")
PRESETS = Registry("preset")
REGISTRIES = {"datasets": DATASETS, "models": MODELS, "attacks": ATTACKS, "defenses": DEFENSES,
              "presets": PRESETS}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _defining_file_hash(obj: Any) -> str | None:
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


PLUGIN_MODULE_PREFIX = "rrb_plugin_"


def plugin_module_name(path: str | Path) -> str:
    """The ``sys.modules`` name a plugin file is imported under (from its content hash)."""
    return f"{PLUGIN_MODULE_PREFIX}{file_sha256(Path(path))[:12]}"


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
    import_builtins()
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


def import_builtins() -> None:
    """Import the modules whose import registers the built-ins."""
    import attacks  # noqa: F401
    import defenses  # noqa: F401

    from . import datasets, models, presets  # noqa: F401
