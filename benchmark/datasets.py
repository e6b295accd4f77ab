"""Datasets: every loader returns images in [0, 1] (stored as uint8) with integer labels.

No mean/std normalisation happens here; models do it inside ``forward``.

Decoding image files is slow, so loaders that read image files keep the decoded tensors in a
disk cache (``~/.cache/rrb/datasets``, or ``$RRB_CACHE_DIR``, or ``cache_dir=``) keyed by the
dataset, its resolved data root, a hash of the file listing and :data:`LOADER_VERSION`; and every
loader keeps what it loaded in an in-process memo so a matrix run in one process loads once.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import BenchmarkError
from .registry import DATASETS

# Bump whenever decoding or splitting changes, so stale disk caches are not reused.
LOADER_VERSION = 1
CACHE_ENV_VAR = "RRB_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/rrb/datasets")

OMNIGLOT_SIZE = 28
RGB_STORED_SIZE = 256  # REFERENCE §5.2: Resize(256, 256) ...
RGB_CROP_SIZE = 224  # ... then a 224 crop (random + flip for training, centre for test)


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


# --------------------------------------------------------------------------------------------
# Caches: an in-process memo for every loader, a disk cache for loaders that decode image files.

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


_CACHE_FIELDS = ("train_images", "train_labels", "test_images", "test_labels")
Tensors = dict[str, torch.Tensor]


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
    """Write atomically (temp file + os.replace) so a crash never leaves a half-written cache."""
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            torch.save({"key": key, "loader_version": LOADER_VERSION, **tensors}, handle)
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as exc:
        warnings.warn(f"could not write dataset cache {path} ({exc}); the next run decodes again", stacklevel=3)
    finally:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)


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


def _progress(iterable: Iterable, total: int, desc: str) -> Iterator:
    from tqdm.auto import tqdm

    return iter(tqdm(iterable, total=total, desc=desc, leave=False, unit="img"))


# --------------------------------------------------------------------------------------------
# digits (embedded default)

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


# --------------------------------------------------------------------------------------------
# Omniglot

OMNIGLOT_LAYOUT = ("Omniglot archives images_background*.zip / images_evaluation.zip (e.g. "
                   "images_background_small1.zip, images_background_small2.zip) or extracted folders "
                   "<root>/<archive>/<Alphabet>/characterNN/*.png")


@dataclass(frozen=True)
class _OmniglotImage:
    alphabet: str
    character: str
    file_name: str
    source: Path  # a zip archive or an extracted archive folder
    member: str  # the name inside the zip, or the path relative to the folder


def _is_omniglot_source(path: Path) -> bool:
    stem = path.name[:-4] if path.suffix == ".zip" else path.name
    return stem.startswith(("images_background", "images_evaluation")) and (path.is_dir() or path.suffix == ".zip")


def _omniglot_sources(root: Path) -> list[Path]:
    """Archives and extracted archive folders under ``root`` (or torchvision's ``root/omniglot-py``)."""
    sources: list[Path] = []
    for folder in (root, root / "omniglot-py"):
        if folder.is_dir():
            sources.extend(sorted(p for p in folder.iterdir() if _is_omniglot_source(p)))
    return sources


def _omniglot_listing(sources: list[Path]) -> list[_OmniglotImage]:
    """Every image of every source, deduplicated by (alphabet, character, file name).

    The small1 and small2 archives both hold Greek and Latin: the same files, kept once.
    """
    seen: dict[tuple[str, str, str], _OmniglotImage] = {}
    for source in sources:
        if source.is_dir():
            members = [p.relative_to(source).as_posix() for p in source.glob("*/*/*.png")]
        else:
            try:
                with zipfile.ZipFile(source) as archive:
                    names = archive.namelist()
            except (OSError, zipfile.BadZipFile) as exc:
                raise BenchmarkError(f"dataset 'omniglot': cannot read archive {source} ({exc})") from exc
            members = [n for n in names if n.endswith(".png")]
        for member in sorted(members):
            parts = member.split("/")
            if len(parts) < 3:
                continue
            alphabet, character, file_name = parts[-3:]
            seen.setdefault((alphabet, character, file_name),
                            _OmniglotImage(alphabet, character, file_name, source, member))
    return [seen[k] for k in sorted(seen)]


def _decode_omniglot_png(data: bytes | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        # PIL's bilinear resize filters over the whole footprint (antialiased), like torchvision's Resize.
        small = image.convert("L").resize((OMNIGLOT_SIZE, OMNIGLOT_SIZE), Image.BILINEAR)
    return 255 - np.asarray(small, dtype=np.uint8)  # black strokes on white → bright strokes on dark


def _decode_omniglot_images(items: list[_OmniglotImage]) -> torch.Tensor:
    """N×1×28×28 uint8, strokes bright on dark. Zip members are read without extracting."""
    blobs: list[bytes | Path] = []
    archives: dict[Path, zipfile.ZipFile] = {}
    try:
        for item in items:
            if item.source.is_dir():
                blobs.append(item.source / item.member)
            else:
                if item.source not in archives:
                    archives[item.source] = zipfile.ZipFile(item.source)
                blobs.append(archives[item.source].read(item.member))
    finally:
        for archive in archives.values():
            archive.close()
    out = np.empty((len(items), 1, OMNIGLOT_SIZE, OMNIGLOT_SIZE), dtype=np.uint8)
    with ThreadPoolExecutor(_thread_count()) as pool:
        decoded = pool.map(_decode_omniglot_png, blobs, chunksize=64)
        for i, image in enumerate(_progress(decoded, len(blobs), "decoding omniglot")):
            out[i, 0] = image
    return torch.from_numpy(out)


@DATASETS.register("omniglot",
                   description="Omniglot characters from the zip archives or extracted folders in --data-root "
                               "(small1+small2: 242 classes / 4840 images); class-disjoint halves, 1x28x28")
def load_omniglot(data_root: str | None = None, *, cache_dir: str | os.PathLike | None = None,
                  **_: object) -> DatasetBundle:
    """Union of every Omniglot archive found; sorted (alphabet, character) classes, first half train.

    With an odd number of characters the extra one goes to training. Labels are consecutive
    integers in that sorted order (train 0..k-1, test k..n-1).
    """
    root = _root_path("omniglot", data_root, OMNIGLOT_LAYOUT)
    sources = _omniglot_sources(root)
    if not sources:
        raise BenchmarkError(f"dataset 'omniglot': no Omniglot archive in {root}; expected {OMNIGLOT_LAYOUT}")

    def decode() -> Tensors:
        items = _omniglot_listing(sources)
        if not items:
            raise BenchmarkError(f"dataset 'omniglot': no PNG images in {', '.join(map(str, sources))}; "
                                 f"expected {OMNIGLOT_LAYOUT}")
        classes = sorted({(item.alphabet, item.character) for item in items})
        class_index = {cls: i for i, cls in enumerate(classes)}
        labels = torch.tensor([class_index[(item.alphabet, item.character)] for item in items])
        images = _decode_omniglot_images(items)
        is_train = labels < (len(classes) + 1) // 2
        return {"train_images": images[is_train], "train_labels": labels[is_train],
                "test_images": images[~is_train], "test_labels": labels[~is_train]}

    tensors = load_cached("omniglot", root, sources, decode, params=f"size={OMNIGLOT_SIZE}", cache_dir=cache_dir)
    n_train = int(torch.unique(tensors["train_labels"]).numel())
    n_test = int(torch.unique(tensors["test_labels"]).numel())
    return DatasetBundle(
        "omniglot",
        Split(tensors["train_images"], tensors["train_labels"]),
        Split(tensors["test_images"], tensors["test_labels"]),
        input_size=OMNIGLOT_SIZE, in_channels=1, default_model="c2f2",
        split_description=f"class-disjoint: characters sorted by (alphabet, character), first {n_train} "
                          f"train, last {n_test} test",
    )


# --------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST through torchvision

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


# --------------------------------------------------------------------------------------------
# CUB-200-2011, Cars-196, Stanford Online Products: RGB, stored 256×256, 224 crops

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


class SPC2Sampler:
    """Batches of ``batch_pairs`` pairs, 2 images of one class each, laid out [c1, c1, c2, c2, ...].

    Each epoch visits every image of a class with two or more images once as the first of a
    pair (RobRank's SPC-2 dataset: item i is image i plus a random other image of its class), in
    an order drawn from ``generator``. As in RobRank, pairs are drawn independently: two pairs of
    one batch may share a class. Everything random comes from ``generator``, so the same seed
    gives the same batches. The last incomplete batch of an epoch is dropped.
    """

    def __init__(self, labels: torch.Tensor, batch_pairs: int, generator: torch.Generator):
        if batch_pairs < 1:
            raise BenchmarkError(f"SPC-2 batches need at least one pair, got batch_pairs={batch_pairs}")
        self.labels = labels.long().cpu()
        self.batch_pairs = batch_pairs
        self.generator = generator
        classes, counts = torch.unique(self.labels, return_counts=True)
        if int((counts >= 2).sum()) < 2:
            raise BenchmarkError("SPC-2 batches need at least two classes with two or more images each")
        # Images grouped by class: class c's members are members[start[c] : start[c] + count[c]].
        order = torch.sort(self.labels, stable=True).indices
        self._members = order
        starts = torch.cumsum(counts, 0) - counts
        position_of = torch.empty_like(order)
        position_of[order] = torch.arange(len(order))
        class_of = torch.searchsorted(classes, self.labels)
        self._start = starts[class_of]  # per image: where its class begins in _members
        self._count = counts[class_of]  # per image: how many images its class has
        self._rank = position_of - self._start  # per image: its place within its class
        self.eligible = torch.nonzero(self._count >= 2).flatten()

    def __len__(self) -> int:
        return max(1, len(self.eligible) // self.batch_pairs)

    def __iter__(self) -> Iterator[torch.Tensor]:
        order = self.eligible[torch.randperm(len(self.eligible), generator=self.generator)]
        for b in range(len(self)):
            firsts = order[b * self.batch_pairs:(b + 1) * self.batch_pairs]
            count = self._count[firsts]
            # A uniform other member: skip 1 + k places (k < count - 1) cyclically within the class.
            skip = 1 + (torch.rand(len(firsts), generator=self.generator) * (count - 1)).long().clamp_max(count - 2)
            partners = self._members[self._start[firsts] + (self._rank[firsts] + skip) % count]
            yield torch.stack((firsts, partners), dim=1).flatten()
