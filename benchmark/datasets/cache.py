"""Dataset caches: an in-process memo for every loader, a disk cache for loaders that decode image files.

Decoding image files is slow, so loaders that read image files keep the decoded tensors in a
disk cache (``~/.cache/rrb/datasets``, or ``$RRB_CACHE_DIR``, or ``cache_dir=``) keyed by the
dataset, its resolved data root, a hash of the file listing and :data:`LOADER_VERSION`; and every
loader keeps what it loaded in an in-process memo so a matrix run in one process loads once.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from ..atomic import atomic_write

# Bump whenever decoding or splitting changes, so stale disk caches are not reused.
LOADER_VERSION = 1
CACHE_ENV_VAR = "RRB_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/rrb/datasets")


_MEMO: dict[tuple, object] = {}  # bundles (in-memory loaders) and tensor dicts (load_cached)


def clear_dataset_memo() -> None:
    """Forget every dataset loaded in this process (the disk cache is untouched)."""
    _MEMO.clear()


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The disk-cache folder: ``cache_dir`` if given, else ``$RRB_CACHE_DIR``, else ``~/.cache/rrb/datasets``."""
    chosen = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE_DIR
    return Path(chosen).expanduser()


def file_listing_hash(root: Path, paths: Iterable[Path]) -> str:
    """sha256 over (name relative to ``root``, size, mtime) of every file in ``paths`` (folders walked)."""
    lines: list[str] = []
    for path in paths:
        if path.is_dir():
            for folder, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    full = os.path.join(folder, name)
                    st = os.stat(full)
                    lines.append(f"{os.path.relpath(full, root)}\t{st.st_size}\t{st.st_mtime_ns}")
        elif path.exists():
            st = path.stat()
            lines.append(f"{os.path.relpath(path, root)}\t{st.st_size}\t{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


Tensors = dict[str, torch.Tensor]
_CACHE_FIELDS = ("train_images", "train_labels", "test_images", "test_labels")


def _read_cache(path: Path, key: str) -> Tensors | None:
    """The cached tensors, or None when the file is missing, unreadable or for another key."""
    if not path.exists():
        return None
    try:
        # mmap: a 224-px dataset is gigabytes; pages are read as batches touch them.
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(payload, dict) or payload.get("key") != key:
            raise ValueError("the file holds another dataset key")
        tensors = {name: payload[name] for name in _CACHE_FIELDS}
        for split in ("train", "test"):
            images, labels = tensors[f"{split}_images"], tensors[f"{split}_labels"]
            if images.dtype != torch.uint8 or images.dim() != 4 or labels.dim() != 1 or len(images) != len(labels):
                raise ValueError(f"malformed {split} tensors")
        return tensors
    except Exception as exc:  # any unreadable cache is rebuilt, never fatal
        warnings.warn(f"ignoring unreadable dataset cache {path} ({exc}); decoding again", stacklevel=3)
        return None


def _write_cache(path: Path, key: str, tensors: Tensors) -> None:
    """Write atomically so a crash never leaves a half-written cache; a failure only costs a decode."""
    try:
        atomic_write(path, lambda tmp: torch.save({"key": key, "loader_version": LOADER_VERSION, **tensors}, tmp),
                     fsync=False)
    except OSError as exc:
        warnings.warn(f"could not write dataset cache {path} ({exc}); the next run decodes again", stacklevel=3)


def load_cached(name: str, root: Path, listing: Iterable[Path], decode: Callable[[], Tensors], *,
                params: str = "", cache_dir: str | os.PathLike | None = None) -> Tensors:
    """Decoded train/test tensors of a file-backed dataset, from the memo, the disk cache or ``decode``.

    ``decode`` returns a dict with ``train_images``/``test_images`` (uint8 N×C×H×W) and
    ``train_labels``/``test_labels`` (int64). The key is ``name``, the resolved ``root``, a hash of
    the files in ``listing``, ``params`` (loader settings) and :data:`LOADER_VERSION`.
    Plugin datasets may use this too.
    """
    key = "|".join((name, str(root), file_listing_hash(root, listing), params, f"v{LOADER_VERSION}"))
    memo_key = ("tensors", key)
    if memo_key in _MEMO:
        return _MEMO[memo_key]  # type: ignore[return-value]
    path = resolve_cache_dir(cache_dir) / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"
    tensors = _read_cache(path, key)
    if tensors is None:
        tensors = decode()
        tensors = {field: tensors[field] for field in _CACHE_FIELDS}
        tensors["train_labels"] = tensors["train_labels"].long()
        tensors["test_labels"] = tensors["test_labels"].long()
        _write_cache(path, key, tensors)
    _MEMO[memo_key] = tensors
    return tensors
