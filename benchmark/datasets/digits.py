"""scikit-learn's bundled 8x8 digits, resized to 28x28: the embedded default dataset."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..registry import DATASETS
from .base import DatasetBundle, Split, stratified_split, to_uint8
from .cache import _MEMO, LOADER_VERSION


@DATASETS.register("digits", aliases=("sklearn-digits",),
                   description="scikit-learn's bundled 8x8 digits (embedded default): 1797 images, 10 classes, "
                               "stratified 70/30 split, 1x28x28")
def load_digits(data_root: str | None = None, **_: object) -> DatasetBundle:
    memo_key = ("bundle", "digits", LOADER_VERSION)
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = to_uint8(F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False))
    labels = torch.from_numpy(digits.target.astype(np.int64))
    train_idx, test_idx = stratified_split(digits.target, 0.3, seed=0)
    bundle = DatasetBundle(
        "digits",
        Split(images[train_idx], labels[train_idx]),
        Split(images[test_idx], labels[test_idx]),
        input_size=28, in_channels=1, default_model="c2f2",
        split_description="stratified 70/30 by image (seed 0), same 10 classes in train and test",
    )
    _MEMO[memo_key] = bundle
    return bundle
