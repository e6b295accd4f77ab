"""MNIST and Fashion-MNIST through torchvision's files (downloaded where a network exists)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import BenchmarkError
from ..registry import DATASETS
from .base import DatasetBundle, Split
from .cache import _MEMO, LOADER_VERSION, resolve_cache_dir


def _load_torchvision_idx(name: str, dataset_cls_name: str, data_root: str | None, download: bool,
                          cache_dir: str | os.PathLike | None) -> DatasetBundle:
    import torchvision.datasets as tvd

    dataset_cls = getattr(tvd, dataset_cls_name)
    layout = (f"torchvision's {dataset_cls_name} files <root>/{dataset_cls_name}/raw/"
              "{train,t10k}-{images-idx3,labels-idx1}-ubyte")
    if data_root is None or str(data_root) == "":
        # Downloadable: without --data-root, keep the download beside the dataset cache.
        root = resolve_cache_dir(cache_dir) / "torchvision"
    else:
        root = Path(data_root).expanduser().resolve()
    memo_key = ("bundle", name, str(root), LOADER_VERSION)
    if memo_key in _MEMO:
        return _MEMO[memo_key]

    def read(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            dataset = dataset_cls(str(root), train=train, download=False)
        except RuntimeError:
            if not download:
                raise BenchmarkError(f"dataset {name!r}: not found under {root} (downloads disabled); "
                                     f"pass --data-root holding {layout}") from None
            try:
                dataset = dataset_cls(str(root), train=train, download=True)
            except Exception as exc:  # any download failure becomes one clear message
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise BenchmarkError(f"dataset {name!r}: not found under {root} and download failed ({reason}); "
                                     f"pass --data-root holding {layout}") from None
        except (TypeError, ValueError) as exc:
            raise BenchmarkError(f"dataset {name!r}: malformed files under {root} ({exc}); expected {layout}") from None
        images = dataset.data
        if images.dim() != 3 or images.dtype != torch.uint8:
            raise BenchmarkError(f"dataset {name!r}: images under {root} are not N×H×W uint8; expected {layout}")
        return images.unsqueeze(1).contiguous(), dataset.targets.long()

    train_images, train_labels = read(True)
    test_images, test_labels = read(False)
    bundle = DatasetBundle(
        name, Split(train_images, train_labels), Split(test_images, test_labels),
        input_size=int(train_images.shape[-1]), in_channels=1, default_model="c2f2",
        split_description="standard torchvision split: 60,000 train / 10,000 test images, same 10 classes",
    )
    _MEMO[memo_key] = bundle
    return bundle


@DATASETS.register("mnist", description="MNIST via torchvision (--data-root or download): standard 60k/10k "
                                        "split, 10 classes, 1x28x28")
def load_mnist(data_root: str | None = None, *, download: bool = True,
               cache_dir: str | os.PathLike | None = None, **_: object) -> DatasetBundle:
    """Reads ``<root>/MNIST/raw/*-ubyte``; downloads only when they are missing and ``download`` is set."""
    return _load_torchvision_idx("mnist", "MNIST", data_root, download, cache_dir)


@DATASETS.register("fashion", aliases=("fashion-mnist",),
                   description="Fashion-MNIST via torchvision (--data-root or download): standard 60k/10k "
                               "split, 10 classes, 1x28x28")
def load_fashion(data_root: str | None = None, *, download: bool = True,
                 cache_dir: str | os.PathLike | None = None, **_: object) -> DatasetBundle:
    """Reads ``<root>/FashionMNIST/raw/*-ubyte``; downloads only when missing and ``download`` is set."""
    return _load_torchvision_idx("fashion", "FashionMNIST", data_root, download, cache_dir)
