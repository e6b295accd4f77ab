"""The one atomic file write of the project: temp file in the target folder, flush, ``os.replace``.

A reader never sees a half-written file: it sees the old one or the new one. Used for cell,
telemetry and audit files and the manifest (:mod:`benchmark.store`), checkpoints
(:mod:`benchmark.checkpoints`), study files (:mod:`benchmark.study`) and the dataset cache.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def temp_prefix(path: Path) -> str:
    """Temp files of ``path`` are ``.<name>.<random>.tmp`` beside it (hidden, and easy to glob)."""
    return f".{Path(path).name}."


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, fsync: bool = True) -> Path:
    """Call ``write(temp_path)`` to fill a temp file beside ``path``, then replace ``path`` with it.

    ``fsync`` flushes the file to disk before the rename (the store's completion point must survive
    a power cut; a cache need not). The temp file is removed if anything fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared results folder must stay readable by others
        if fsync:
            handle = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(handle)
            finally:
                os.close(handle)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
