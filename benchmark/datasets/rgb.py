"""CUB-200-2011, Cars-196 and Stanford Online Products: RGB, stored 256x256, 224 crops (REFERENCE §5.2)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..errors import BenchmarkError
from ..registry import DATASETS
from .base import DatasetBundle, Split, _progress, _require_file, _root_path, _thread_count
from .cache import Tensors, load_cached

RGB_STORED_SIZE = 256  # REFERENCE §5.2: Resize(256, 256) ...
RGB_CROP_SIZE = 224  # ... then a 224 crop (random + flip for training, centre for test)


def _decode_rgb_file(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            # Resize((256, 256)) on a PIL image is PIL's bilinear resize: the same call here.
            resized = image.convert("RGB").resize((RGB_STORED_SIZE, RGB_STORED_SIZE), Image.BILINEAR)
    except FileNotFoundError:
        raise BenchmarkError(f"image file {path} listed in the dataset's index is missing") from None
    except OSError as exc:
        raise BenchmarkError(f"cannot decode image file {path} ({exc})") from None
    return np.asarray(resized, dtype=np.uint8)


def _decode_rgb_images(paths: list[Path], desc: str) -> torch.Tensor:
    """N×3×256×256 uint8, decoded by a thread pool (PIL releases the GIL while decoding)."""
    # Preallocated: stacking a list would double the peak memory of a multi-gigabyte dataset.
    out = np.empty((len(paths), 3, RGB_STORED_SIZE, RGB_STORED_SIZE), dtype=np.uint8)
    with ThreadPoolExecutor(_thread_count()) as pool:
        decoded = pool.map(_decode_rgb_file, paths, chunksize=16)
        for i, image in enumerate(_progress(decoded, len(paths), desc)):
            out[i] = image.transpose(2, 0, 1)
    return torch.from_numpy(out)


def _rgb_bundle(name: str, tensors: Tensors, split_description: str) -> DatasetBundle:
    return DatasetBundle(
        name,
        Split(tensors["train_images"], tensors["train_labels"], crop=RGB_CROP_SIZE),
        Split(tensors["test_images"], tensors["test_labels"], crop=RGB_CROP_SIZE),
        input_size=RGB_CROP_SIZE, in_channels=3, default_model="resnet18",
        split_description=split_description,
    )


def _split_by_class(name: str, root: Path, paths: list[Path], class_ids: np.ndarray, is_train: np.ndarray,
                    listing: list[Path], cache_dir: str | os.PathLike | None) -> Tensors:
    """Decode (or fetch from cache) ``paths``; labels are the class ids mapped to 0..C-1 in sorted order."""

    def decode() -> Tensors:
        if not is_train.any() or is_train.all():
            raise BenchmarkError(f"dataset {name!r}: the index under {root} yields an empty train or test split")
        _, labels = np.unique(class_ids, return_inverse=True)
        images = _decode_rgb_images(paths, f"decoding {name}")
        labels_t = torch.from_numpy(labels.astype(np.int64).reshape(-1))
        train = torch.from_numpy(is_train)
        return {"train_images": images[train], "train_labels": labels_t[train],
                "test_images": images[~train], "test_labels": labels_t[~train]}

    return load_cached(name, root, listing, decode, params=f"size={RGB_STORED_SIZE}", cache_dir=cache_dir)


def _read_columns(name: str, path: Path, n_columns: int, layout: str, skip_header: bool = False) -> list[list[str]]:
    rows = []
    lines = path.read_text().splitlines()[1 if skip_header else 0:]
    for number, line in enumerate(lines, start=2 if skip_header else 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) < n_columns:
            raise BenchmarkError(f"dataset {name!r}: {path} line {number} has {len(fields)} columns, "
                                 f"expected {n_columns}; expected {layout}")
        rows.append(fields)
    return rows


CUB_LAYOUT = ("CUB_200_2011/images.txt, CUB_200_2011/image_class_labels.txt and CUB_200_2011/images/... "
              "(the official CUB-200-2011 release)")


@DATASETS.register("cub", aliases=("cub200", "cub-200-2011"),
                   description="CUB-200-2011 from --data-root (official layout): classes 1-100 train, 101-200 "
                               "test, 3x224x224 crops of 256x256")
def load_cub(data_root: str | None = None, *, cache_dir: str | os.PathLike | None = None,
             **_: object) -> DatasetBundle:
    """Zero-shot split of REFERENCE §5.2: ``train_test_split.txt`` is ignored, classes ≤ 100 train."""
    root = _root_path("cub", data_root, CUB_LAYOUT)
    # Accept the CUB_200_2011 folder itself as the root as well as its parent.
    base = root if (root / "images.txt").is_file() and not (root / "CUB_200_2011").is_dir() else root / "CUB_200_2011"
    images_txt = _require_file("cub", base / "images.txt", CUB_LAYOUT)
    labels_txt = _require_file("cub", base / "image_class_labels.txt", CUB_LAYOUT)
    paths_by_id = {row[0]: row[1] for row in _read_columns("cub", images_txt, 2, CUB_LAYOUT)}
    class_rows = _read_columns("cub", labels_txt, 2, CUB_LAYOUT)
    missing = [row[0] for row in class_rows if row[0] not in paths_by_id]
    if missing:
        raise BenchmarkError(f"dataset 'cub': image id {missing[0]} of {labels_txt} is not in {images_txt}")
    paths = [base / "images" / paths_by_id[row[0]] for row in class_rows]
    class_ids = np.array([int(row[1]) for row in class_rows], dtype=np.int64)
    tensors = _split_by_class("cub", root, paths, class_ids, class_ids <= 100,
                              [images_txt, labels_txt, base / "images"], cache_dir)
    return _rgb_bundle("cub", tensors, "class-disjoint (REFERENCE §5.2): classes 1-100 train, 101-200 test")


CARS_LAYOUT = ("cars_annos.mat (fields relative_im_path, class) with the images at the paths it lists "
               "relative to the root, car_ims/... (the official Cars-196 release)")


@DATASETS.register("cars", aliases=("cars196", "cars-196"),
                   description="Stanford Cars-196 from --data-root (cars_annos.mat + car_ims/): classes 1-98 "
                               "train, 99-196 test, 3x224x224 crops of 256x256")
def load_cars(data_root: str | None = None, *, cache_dir: str | os.PathLike | None = None,
              **_: object) -> DatasetBundle:
    """Zero-shot split of REFERENCE §5.2: labels ≤ 98 train, 99-196 test; the ``test`` flag is ignored."""
    import scipy.io

    root = _root_path("cars", data_root, CARS_LAYOUT)
    annos_path = _require_file("cars", root / "cars_annos.mat", CARS_LAYOUT)
    try:
        annotations = np.atleast_1d(scipy.io.loadmat(annos_path, squeeze_me=True)["annotations"])
        rel_paths = [str(p) for p in annotations["relative_im_path"]]
        class_ids = np.array([int(c) for c in annotations["class"]], dtype=np.int64)
    except (KeyError, ValueError, TypeError, OSError) as exc:
        raise BenchmarkError(f"dataset 'cars': cannot read the annotations of {annos_path} ({exc}); "
                             f"expected {CARS_LAYOUT}") from None
    paths = [root / p for p in rel_paths]
    image_dirs = sorted({root / Path(p).parts[0] for p in rel_paths if len(Path(p).parts) > 1})
    tensors = _split_by_class("cars", root, paths, class_ids, class_ids <= 98, [annos_path, *image_dirs], cache_dir)
    return _rgb_bundle("cars", tensors, "class-disjoint (REFERENCE §5.2): classes 1-98 train, 99-196 test")


SOP_LAYOUT = ("Ebay_train.txt and Ebay_test.txt (header line; columns image_id class_id super_class_id path, "
              "paths relative to the root) with the images they list (the official Stanford Online Products release)")


@DATASETS.register("sop", aliases=("stanford-online-products",),
                   description="Stanford Online Products from --data-root (Ebay_train.txt / Ebay_test.txt): "
                               "official class-disjoint split, 3x224x224 crops of 256x256")
def load_sop(data_root: str | None = None, *, cache_dir: str | os.PathLike | None = None,
             **_: object) -> DatasetBundle:
    """Train on the classes of ``Ebay_train.txt``, test on those of ``Ebay_test.txt`` (REFERENCE §5.2)."""
    root = _root_path("sop", data_root, SOP_LAYOUT)
    train_txt = _require_file("sop", root / "Ebay_train.txt", SOP_LAYOUT)
    test_txt = _require_file("sop", root / "Ebay_test.txt", SOP_LAYOUT)
    train_rows = _read_columns("sop", train_txt, 4, SOP_LAYOUT, skip_header=True)
    test_rows = _read_columns("sop", test_txt, 4, SOP_LAYOUT, skip_header=True)
    rows = train_rows + test_rows
    paths = [root / row[3] for row in rows]
    class_ids = np.array([int(row[1]) for row in rows], dtype=np.int64)
    is_train = np.arange(len(rows)) < len(train_rows)
    image_dirs = sorted({root / Path(row[3]).parts[0] for row in rows if len(Path(row[3]).parts) > 1})
    tensors = _split_by_class("sop", root, paths, class_ids, is_train, [train_txt, test_txt, *image_dirs], cache_dir)
    return _rgb_bundle("sop", tensors, "class-disjoint (REFERENCE §5.2): Ebay_train.txt classes train, "
                                       "Ebay_test.txt classes test")


# --------------------------------------------------------------------------------------------
