"""One registry mechanism for datasets, models, attacks, defenses and presets.

Modelled on the idea of timm's model registry: a decorator registers an object under a
canonical name plus aliases, ``names()``/``entries()`` list what exists with a one-line
description, and an unknown name fails with a message listing the known ones.

This module is the ground floor: it imports nothing of the project but its error type. The
registries are filled from above: importing the built-in modules registers them
(:func:`benchmark.plugins.load_builtins` is the one place that does), and
:mod:`benchmark.plugins` loads third-party plugins (Python entry points, one group per kind, or
``--plugin file.py``). It installs :attr:`Registry.before_lookup`, so the first lookup of a kind
loads the built-ins and that kind's entry points before answering.
"""

from __future__ import annotations

import fnmatch
import inspect
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

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

    # Called once per registry before its first lookup (set by benchmark.plugins: load the
    # built-ins, then this kind's entry points). A class attribute, so the registry needs no import.
    before_lookup: ClassVar[Callable[[Registry], None] | None] = None

    def load_entry_points(self) -> None:
        """Run the lookup hook once (built-ins and installed plugins of this kind)."""
        hook = type(self).before_lookup
        if self._entry_points_loaded or hook is None:
            return
        self._entry_points_loaded = True
        hook(self)

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
