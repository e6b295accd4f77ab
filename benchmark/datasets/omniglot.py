"""Omniglot (zip archives or extracted folders): class-disjoint halves, strokes bright on dark, 28x28."""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import BenchmarkError
from ..registry import DATASETS
from .base import DatasetBundle, Split, _progress, _root_path, _thread_count
from .cache import Tensors, load_cached

OMNIGLOT_SIZE = 28


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


# What a damaged archive or image raises: a CRC mismatch or bad header (BadZipFile), a corrupt deflate
# stream (zlib.error), a truncated member (EOFError), an undecodable image (PIL's OSError subclasses,
# ValueError, SyntaxError from its header parsers), a compression method zipfile lacks, an encrypted
# member (RuntimeError).
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, SyntaxError, NotImplementedError,
            RuntimeError)


def _where(item: _OmniglotImage) -> str:
    return str(item.source / item.member) if item.source.is_dir() else f"{item.member!r} in archive {item.source}"


def _damaged(item: _OmniglotImage, what: str, exc: BaseException) -> BenchmarkError:
    unidentified = type(exc).__name__ == "UnidentifiedImageError"
    kind = "corrupt compressed data" if isinstance(exc, zlib.error) else type(exc).__name__
    cause = "not a recognised image file" if unidentified else f"{kind}: {exc}"
    return BenchmarkError(f"dataset 'omniglot': {what} {_where(item)} ({cause}); "
                          f"expected intact PNG images: replace the damaged file (re-download the archive)")


def _decode_one(item: _OmniglotImage, data: bytes | Path) -> np.ndarray:
    try:
        return _decode_omniglot_png(data)
    except FileNotFoundError as exc:
        raise _damaged(item, "missing image", exc) from None
    except _DAMAGED as exc:
        raise _damaged(item, "cannot decode image", exc) from None


def _decode_omniglot_images(items: list[_OmniglotImage]) -> torch.Tensor:
    """N×1×28×28 uint8, strokes bright on dark. Zip members are read without extracting.

    A damaged archive member (CRC mismatch, corrupt stream) or an undecodable image is one
    BenchmarkError naming it; nothing is cached then.
    """
    blobs: list[bytes | Path] = []
    archives: dict[Path, zipfile.ZipFile] = {}
    try:
        for item in items:
            if item.source.is_dir():
                blobs.append(item.source / item.member)
            else:
                try:
                    if item.source not in archives:
                        archives[item.source] = zipfile.ZipFile(item.source)
                    blobs.append(archives[item.source].read(item.member))
                except _DAMAGED as exc:
                    raise _damaged(item, "cannot read member", exc) from None
    finally:
        for archive in archives.values():
            archive.close()
    out = np.empty((len(items), 1, OMNIGLOT_SIZE, OMNIGLOT_SIZE), dtype=np.uint8)
    with ThreadPoolExecutor(_thread_count()) as pool:
        decoded = pool.map(_decode_one, items, blobs, chunksize=64)
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
