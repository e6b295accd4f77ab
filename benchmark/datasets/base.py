"""The data types every loader returns, and the helpers loaders share.

Every loader returns images in [0, 1] (stored as uint8) with integer labels in a
:class:`DatasetBundle` of two :class:`Split` objects. No mean/std normalisation happens here;
models do it inside ``forward``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import BenchmarkError


@dataclass
class Split:
    """Images (uint8, N×C×H×W) and labels of one split.

    ``crop`` is the model input size when the stored images are larger (224 crops of 256×256
    images): training batches are random crops with horizontal flips, test batches the centre
    crop (REFERENCE §5.2). Without ``crop`` stored images are the model input.
    """

    images: torch.Tensor
    labels: torch.Tensor
    crop: int | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError("Split.images must be a uint8 tensor of shape N×C×H×W")
        self.labels = self.labels.long()
        if len(self.images) != len(self.labels):
            raise ValueError("Split.images and Split.labels differ in length")
        if self.crop is not None and self.crop > min(self.images.shape[-2:]):
            raise ValueError(f"Split.crop={self.crop} exceeds the stored image size {tuple(self.images.shape[-2:])}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(torch.unique(self.labels).numel())

    def batch(self, index: torch.Tensor, *, train: bool = False,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """Float images in [0, 1] for ``index`` (augmented for training when ``crop`` is set).

        Crops are cut from the uint8 images before the float conversion so only the crop is
        converted. Training crops and flips are drawn from ``generator`` (offsets first, then flips).
        """
        images = self.images[index]
        if self.crop is None:
            return images.float().div_(255.0)
        height, width = images.shape[-2:]
        if not train:
            top, left = (height - self.crop) // 2, (width - self.crop) // 2
            return images[..., top:top + self.crop, left:left + self.crop].float().div_(255.0)
        n = len(images)
        tops = torch.randint(0, height - self.crop + 1, (n,), generator=generator).tolist()
        lefts = torch.randint(0, width - self.crop + 1, (n,), generator=generator).tolist()
        flips = (torch.rand(n, generator=generator) < 0.5).tolist()
        out = torch.empty(n, images.shape[1], self.crop, self.crop)
        # A slice per image: a gather over n×C×crop×crop indices would cost more than it saves.
        for i, (top, left, flip) in enumerate(zip(tops, lefts, flips)):
            patch = images[i, :, top:top + self.crop, left:left + self.crop]
            out[i] = patch.flip(-1) if flip else patch
        return out.div_(255.0)

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index], self.crop)


@dataclass
class DatasetBundle:
    """Train and test splits plus what the rest of the pipeline needs to know about them.

    Bundles come from an in-process memo and may be shared between callers: treat them as
    read-only.
    """

    name: str
    train: Split
    test: Split
    input_size: int  # model input side (28 or 224)
    in_channels: int
    default_model: str  # "c2f2" or "resnet18"
    split_description: str  # written on the leaderboard

    @property
    def num_test_classes(self) -> int:
        return self.test.num_classes


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats to uint8."""
    return x.clamp(0, 1).mul(255).round().to(torch.uint8)


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of uint8 N×C×H×W images."""
    resized = F.interpolate(images.float() / 255.0, size=(size, size), mode="bilinear",
                            align_corners=False, antialias=True)
    return to_uint8(resized)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class split by image (same classes in train and test), fixed seed."""
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))



def _root_path(name: str, data_root: str | os.PathLike | None, layout: str) -> Path:
    """The resolved data root, or a BenchmarkError saying ``--data-root`` is needed and what layout."""
    if data_root is None or str(data_root) == "":
        raise BenchmarkError(f"dataset {name!r} needs --data-root: a folder holding {layout}")
    root = Path(data_root).expanduser().resolve()
    if not root.is_dir():
        raise BenchmarkError(f"dataset {name!r}: data root {root} is not a folder; expected a folder holding {layout}")
    return root


def _require_file(name: str, path: Path, layout: str) -> Path:
    if not path.is_file():
        raise BenchmarkError(f"dataset {name!r}: missing file {path}; expected {layout}")
    return path


def _thread_count() -> int:
    return max(1, min(8, os.cpu_count() or 1))


_SHOW_PROGRESS = [True]


class dataset_progress:
    """``with dataset_progress(False):`` hides the loaders' decoding bars (``rrb ... --quiet``)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __enter__(self) -> None:
        self.previous = _SHOW_PROGRESS[0]
        _SHOW_PROGRESS[0] = self.enabled

    def __exit__(self, *exc: object) -> None:
        _SHOW_PROGRESS[0] = self.previous


def _progress(iterable: Iterable, total: int, desc: str) -> Iterator:
    from tqdm.auto import tqdm

    return iter(tqdm(iterable, total=total, desc=desc, leave=False, unit="img", disable=not _SHOW_PROGRESS[0]))
