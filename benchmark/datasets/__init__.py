"""Datasets: one module per family, the shared types, the cache and the SPC-2 sampler.

Importing this package registers every built-in dataset in ``benchmark.registry.DATASETS``:
``digits`` (embedded default), ``omniglot``, ``mnist``, ``fashion``, ``cub``, ``cars``, ``sop``.
"""

from __future__ import annotations

import os

from ..registry import DATASETS

# isort: off
# Registration order is the order `rrb list datasets` shows: the embedded default first.
from . import digits, omniglot, mnist, rgb  # noqa: F401  (registers the built-in datasets)
# isort: on
from .base import DatasetBundle, Split, resize_uint8, stratified_split, to_uint8
from .cache import (
    CACHE_ENV_VAR,
    DEFAULT_CACHE_DIR,
    LOADER_VERSION,
    clear_dataset_memo,
    file_listing_hash,
    load_cached,
    resolve_cache_dir,
)
from .digits import load_digits
from .mnist import load_fashion, load_mnist
from .omniglot import load_omniglot
from .rgb import load_cars, load_cub, load_sop
from .sampler import SPC2Sampler


def load_dataset(name: str, data_root: str | os.PathLike | None = None, *,
                 cache_dir: str | os.PathLike | None = None, **kwargs: object) -> DatasetBundle:
    """Load a registered dataset by name.

    ``cache_dir`` overrides where decoded tensors are cached (else ``$RRB_CACHE_DIR``, else
    ``~/.cache/rrb/datasets``); it is passed on only when given, so plugin loaders need not take it.
    """
    entry = DATASETS.get(name)
    if cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    return entry.obj(data_root=data_root, **kwargs)


__all__ = ["CACHE_ENV_VAR", "DEFAULT_CACHE_DIR", "LOADER_VERSION", "DatasetBundle", "SPC2Sampler", "Split",
           "clear_dataset_memo", "file_listing_hash", "load_cached", "load_cars", "load_cub", "load_dataset",
           "load_digits", "load_fashion", "load_mnist", "load_omniglot", "load_sop", "resize_uint8",
           "resolve_cache_dir", "stratified_split", "to_uint8"]
