"""Dataset loaders, the decoded-tensor cache and the SPC-2 sampler.

File-backed loaders are exercised on tiny fixtures written in each data set's official layout;
Omniglot also on the real small1+small2 archives in ../shared/data when they are there.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from benchmark import datasets
from benchmark.datasets import SPC2Sampler, Split, clear_dataset_memo, load_dataset, omniglot, rgb
from benchmark.errors import BenchmarkError
from benchmark.registry import DATASETS

OMNIGLOT_SMALL = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot-small"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test starts with an empty memo and a private disk cache (never ~/.cache)."""
    cache = tmp_path / "default-cache"
    monkeypatch.setenv(datasets.CACHE_ENV_VAR, str(cache))
    clear_dataset_memo()
    yield cache
    clear_dataset_memo()


def noise_image(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def assert_class_disjoint_rgb(bundle, n_train: int, n_test: int, n_train_classes: int, n_test_classes: int):
    assert bundle.input_size == 224 and bundle.in_channels == 3 and bundle.default_model == "resnet18"
    assert bundle.train.images.shape == (n_train, 3, 256, 256)
    assert bundle.test.images.shape == (n_test, 3, 256, 256)
    assert bundle.train.images.dtype == torch.uint8
    assert bundle.train.crop == bundle.test.crop == 224
    train_classes = set(bundle.train.labels.tolist())
    test_classes = set(bundle.test.labels.tolist())
    assert len(train_classes) == n_train_classes and len(test_classes) == n_test_classes
    assert not train_classes & test_classes
    assert sorted(train_classes | test_classes) == list(range(n_train_classes + n_test_classes))
    # Test batches: centre crops, deterministic.
    index = torch.arange(len(bundle.test))
    test_batch = bundle.test.batch(index, train=False)
    assert test_batch.shape == (n_test, 3, 224, 224) and test_batch.dtype == torch.float32
    assert torch.equal(test_batch, bundle.test.images[:, :, 16:240, 16:240].float() / 255)
    # Training batches: random crops + flips drawn from the generator.
    index = torch.arange(len(bundle.train))
    first = bundle.train.batch(index, train=True, generator=torch.Generator().manual_seed(0))
    again = bundle.train.batch(index, train=True, generator=torch.Generator().manual_seed(0))
    other = bundle.train.batch(index, train=True, generator=torch.Generator().manual_seed(1))
    assert first.shape == (n_train, 3, 224, 224)
    assert 0.0 <= first.min() and first.max() <= 1.0
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


# ----------------------------------------------------------------------------------- digits

def test_digits_shapes_range_and_stratified_split():
    bundle = load_dataset("digits")
    assert bundle.name == "digits" and bundle.input_size == 28 and bundle.in_channels == 1
    assert len(bundle.train) + len(bundle.test) == 1797
    for split in (bundle.train, bundle.test):
        assert split.images.shape[1:] == (1, 28, 28) and split.images.dtype == torch.uint8
        assert split.images.max() > 200  # strokes reach near-white, not a blank rescale
        assert split.crop is None
    assert set(bundle.train.labels.tolist()) == set(bundle.test.labels.tolist()) == set(range(10))
    assert abs(len(bundle.test) / 1797 - 0.3) < 0.01
    train_counts = torch.bincount(bundle.train.labels, minlength=10).float()
    test_counts = torch.bincount(bundle.test.labels, minlength=10).float()
    assert torch.all((test_counts / (train_counts + test_counts) - 0.3).abs() < 0.03)
    batch = bundle.test.batch(torch.arange(5))
    assert batch.shape == (5, 1, 28, 28) and 0 <= batch.min() and batch.max() <= 1
    assert load_dataset("sklearn-digits") is bundle  # memo: one load per process


def test_registry_lists_every_dataset_with_a_description():
    for name in ("digits", "omniglot", "mnist", "fashion", "cub", "cars", "sop"):
        entry = DATASETS.get(name)
        assert entry.name == name and entry.description
    assert DATASETS.canonical("fashion-mnist") == "fashion"


# ----------------------------------------------------------------------------------- omniglot

@pytest.mark.skipif(not OMNIGLOT_SMALL.is_dir(), reason=f"Omniglot small archives not found at {OMNIGLOT_SMALL}")
def test_omniglot_small_archives(tmp_path):
    bundle = load_dataset("omniglot", OMNIGLOT_SMALL, cache_dir=tmp_path / "cache")
    assert bundle.input_size == 28 and bundle.in_channels == 1 and bundle.default_model == "c2f2"
    assert len(bundle.train) + len(bundle.test) == 4840
    assert bundle.train.num_classes == 121 and bundle.test.num_classes == 121
    assert len(bundle.train) == len(bundle.test) == 2420  # 20 drawings per character
    assert set(bundle.train.labels.tolist()) == set(range(121))
    assert set(bundle.test.labels.tolist()) == set(range(121, 242))
    for split in (bundle.train, bundle.test):
        assert split.images.shape[1:] == (1, 28, 28) and split.images.dtype == torch.uint8
        assert split.images.float().mean() < 60  # mostly dark background
        assert split.images.max() > 200  # bright strokes
    # Border pixels are background: dark after inversion.
    assert bundle.train.images[:, :, 0, :].float().mean() < 20


def write_omniglot_png(path: Path, stroke_rows: slice) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.ones((105, 105), dtype=bool)  # white background
    pixels[stroke_rows, 20:85] = False  # black stroke
    Image.fromarray(pixels).convert("1").save(path)


def make_omniglot_folders(root: Path) -> None:
    """Two extracted archives that share alphabet B, as small1 and small2 share Greek and Latin."""
    layout = {
        "images_background_small1": [("Alpha", "character01"), ("Alpha", "character02"), ("Beta", "character01")],
        "images_background_small2": [("Beta", "character01"), ("Gamma", "character01")],
    }
    for archive, characters in layout.items():
        for alphabet, character in characters:
            for drawer in range(1, 4):
                write_omniglot_png(root / archive / alphabet / character / f"0{drawer}_{drawer:02d}.png",
                                   slice(40, 60))


def test_omniglot_extracted_folders_union_dedup_and_split(tmp_path):
    root = tmp_path / "omniglot"
    make_omniglot_folders(root)
    (root / "unrelated").mkdir()
    bundle = load_dataset("omniglot", root)
    # 4 distinct characters × 3 drawings; Beta/character01 is in both archives but counted once.
    assert len(bundle.train) == 6 and len(bundle.test) == 6
    assert bundle.train.labels.tolist() == [0, 0, 0, 1, 1, 1]  # Alpha/character01, Alpha/character02
    assert bundle.test.labels.tolist() == [2, 2, 2, 3, 3, 3]  # Beta/character01, Gamma/character01
    image = bundle.train.images[0, 0]
    assert image.shape == (28, 28)
    assert image[14, 14] > 200 and image[2, 2] < 20  # the black stroke became bright on dark


def test_omniglot_zip_and_folder_give_the_same_images(tmp_path):
    folders = tmp_path / "folders"
    make_omniglot_folders(folders)
    zipped = tmp_path / "zipped"
    zipped.mkdir()
    for archive in ("images_background_small1", "images_background_small2"):
        with zipfile.ZipFile(zipped / f"{archive}.zip", "w") as out:
            for path in sorted((folders / archive).rglob("*.png")):
                out.write(path, path.relative_to(folders).as_posix())
    from_folders = load_dataset("omniglot", folders)
    from_zips = load_dataset("omniglot", zipped)
    assert torch.equal(from_folders.train.images, from_zips.train.images)
    assert torch.equal(from_folders.test.labels, from_zips.test.labels)


def test_omniglot_missing_root_and_no_archives(tmp_path):
    with pytest.raises(BenchmarkError, match="--data-root"):
        load_dataset("omniglot")
    missing = tmp_path / "nowhere"
    with pytest.raises(BenchmarkError) as err:
        load_dataset("omniglot", missing)
    assert str(missing) in str(err.value) and "images_background" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchmarkError) as err:
        load_dataset("omniglot", tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value) and "characterNN" in str(err.value)


# ----------------------------------------------------------------------------------- MNIST

def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX file: 0, 0, type 0x08 (uint8), number of dims, big-endian int32 dims, then the data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_idx_root(root: Path, folder: str) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 3)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_family_from_torchvision_raw_layout(tmp_path, name, folder):
    make_idx_root(tmp_path, folder)
    bundle = load_dataset(name, tmp_path, download=False)
    assert bundle.name == name.split("-")[0]
    assert bundle.train.images.shape == (6, 1, 28, 28) and bundle.test.images.shape == (4, 1, 28, 28)
    assert bundle.train.images.dtype == torch.uint8
    assert bundle.train.labels.tolist() == [0, 1, 2, 0, 1, 2]
    raw = np.frombuffer((tmp_path / folder / "raw" / "t10k-images-idx3-ubyte").read_bytes()[16:], dtype=np.uint8)
    assert torch.equal(bundle.test.images.flatten(), torch.from_numpy(raw.copy()))


def test_mnist_missing_root_names_path_and_layout(tmp_path):
    with pytest.raises(BenchmarkError) as err:
        load_dataset("mnist", tmp_path / "nothing", download=False)
    message = str(err.value)
    assert str(tmp_path / "nothing") in message and "MNIST/raw/" in message and "\n" not in message


# ----------------------------------------------------------------------------------- CUB / CARS / SOP

def make_cub(root: Path) -> None:
    base = root / "CUB_200_2011"
    image_lines, label_lines = [], []
    image_id = 0
    for class_id in (1, 2, 101, 102):
        for k in range(2):
            image_id += 1
            rel = f"{class_id:03d}.Bird_{class_id}/Bird_{class_id}_{k}.jpg"
            noise_image(base / "images" / rel, (40 + k * 7, 30), seed=image_id)
            image_lines.append(f"{image_id} {rel}")
            label_lines.append(f"{image_id} {class_id}")
    (base / "images.txt").write_text("\n".join(image_lines) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(label_lines) + "\n")
    # The official file exists but is ignored: the split is by class.
    (base / "train_test_split.txt").write_text("\n".join(f"{i} 1" for i in range(1, image_id + 1)) + "\n")


def make_cars(root: Path) -> None:
    classes = [1, 1, 2, 98, 99, 99, 150]
    annotations = np.zeros((1, len(classes)), dtype=[("relative_im_path", "O"), ("bbox_x1", "O"),
                                                      ("class", "O"), ("test", "O")])
    for i, class_id in enumerate(classes):
        rel = f"car_ims/{i + 1:06d}.jpg"
        noise_image(root / rel, (50, 32), seed=100 + i)
        annotations[0, i]["relative_im_path"] = np.array([rel])
        annotations[0, i]["bbox_x1"] = np.array([[1]], dtype=np.uint8)
        annotations[0, i]["class"] = np.array([[class_id]], dtype=np.uint8)
        annotations[0, i]["test"] = np.array([[i % 2]], dtype=np.uint8)
    scipy.io.savemat(root / "cars_annos.mat", {"annotations": annotations})


def make_sop(root: Path) -> None:
    header = "image_id class_id super_class_id path\n"
    train = [(1, 1, 1, "bicycle_final/111_0.JPG"), (2, 1, 1, "bicycle_final/111_1.JPG"),
             (3, 2, 2, "chair_final/222_0.JPG"), (4, 2, 2, "chair_final/222_1.JPG")]
    test = [(5, 3, 1, "bicycle_final/333_0.JPG"), (6, 3, 1, "bicycle_final/333_1.JPG"),
            (7, 4, 2, "chair_final/444_0.JPG")]
    for rows, name in ((train, "Ebay_train.txt"), (test, "Ebay_test.txt")):
        for row in rows:
            noise_image(root / row[3], (33, 45), seed=200 + row[0])
        (root / name).write_text(header + "".join(" ".join(map(str, row)) + "\n" for row in rows))


def test_cub_official_layout_class_disjoint(tmp_path):
    make_cub(tmp_path)
    bundle = load_dataset("cub", tmp_path)
    assert_class_disjoint_rgb(bundle, 4, 4, 2, 2)
    assert bundle.train.labels.tolist() == [0, 0, 1, 1] and bundle.test.labels.tolist() == [2, 2, 3, 3]


def test_cars_annos_mat_class_disjoint(tmp_path):
    make_cars(tmp_path)
    bundle = load_dataset("cars", tmp_path)
    assert_class_disjoint_rgb(bundle, 4, 3, 3, 2)  # classes ≤ 98 train regardless of the test flag


def test_sop_ebay_files_class_disjoint(tmp_path):
    make_sop(tmp_path)
    bundle = load_dataset("sop", tmp_path)
    assert_class_disjoint_rgb(bundle, 4, 3, 2, 2)


def test_rgb_decode_matches_pil_bilinear_resize(tmp_path):
    make_sop(tmp_path)
    bundle = load_dataset("sop", tmp_path)
    with Image.open(tmp_path / "chair_final/444_0.JPG") as image:
        expected = np.asarray(image.convert("RGB").resize((256, 256), Image.BILINEAR)).transpose(2, 0, 1)
    assert torch.equal(bundle.test.images[-1], torch.from_numpy(expected.copy()))


@pytest.mark.parametrize("name, expected", [
    ("cub", "CUB_200_2011/images.txt"), ("cars", "cars_annos.mat"), ("sop", "Ebay_train.txt")])
def test_rgb_missing_root_and_files_name_the_path(tmp_path, name, expected):
    with pytest.raises(BenchmarkError, match="--data-root"):
        load_dataset(name)
    missing = tmp_path / "absent"
    with pytest.raises(BenchmarkError) as err:
        load_dataset(name, missing)
    assert str(missing) in str(err.value) and expected in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(BenchmarkError) as err:  # the root exists but is empty
        load_dataset(name, tmp_path)
    assert str(tmp_path) in str(err.value) and expected in str(err.value)


def test_missing_listed_image_names_the_file(tmp_path):
    make_cub(tmp_path)
    victim = next((tmp_path / "CUB_200_2011" / "images").rglob("*.jpg"))
    victim.unlink()
    with pytest.raises(BenchmarkError, match=str(victim)):
        load_dataset("cub", tmp_path)


# ----------------------------------------------------------------------------------- cache

class DecodeCounter:
    def __init__(self, monkeypatch):
        self.calls = 0
        real = rgb._decode_rgb_images

        def counting(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(rgb, "_decode_rgb_images", counting)


def cache_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.pt"))


def test_second_load_reads_disk_cache_not_images(tmp_path, monkeypatch):
    make_cub(tmp_path / "data")
    cache = tmp_path / "cache"
    counter = DecodeCounter(monkeypatch)
    first = load_dataset("cub", tmp_path / "data", cache_dir=cache)
    assert counter.calls == 1 and len(cache_files(cache)) == 1
    assert not list(cache.glob("*.tmp"))  # atomic write leaves no temp file behind
    load_dataset("cub", tmp_path / "data", cache_dir=cache)
    assert counter.calls == 1  # in-process memo

    clear_dataset_memo()  # as a new process would be

    def refuse(*_args, **_kwargs):
        raise AssertionError("decoded again despite the disk cache")

    monkeypatch.setattr(rgb, "_decode_rgb_images", refuse)
    second = load_dataset("cub", tmp_path / "data", cache_dir=cache)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.labels, second.test.labels)
    assert second.train.crop == 224


def test_corrupt_cache_is_ignored_and_rebuilt(tmp_path, monkeypatch):
    make_sop(tmp_path / "data")
    cache = tmp_path / "cache"
    counter = DecodeCounter(monkeypatch)
    first = load_dataset("sop", tmp_path / "data", cache_dir=cache)
    (path,) = cache_files(cache)
    path.write_bytes(b"not a torch file")
    clear_dataset_memo()
    with pytest.warns(UserWarning, match="ignoring unreadable dataset cache"):
        rebuilt = load_dataset("sop", tmp_path / "data", cache_dir=cache)
    assert counter.calls == 2
    assert torch.equal(first.test.images, rebuilt.test.images)
    payload = torch.load(path, weights_only=True)  # rewritten, readable again
    assert torch.equal(payload["train_labels"], first.train.labels)
    clear_dataset_memo()
    load_dataset("sop", tmp_path / "data", cache_dir=cache)
    assert counter.calls == 2


def test_cache_key_follows_the_files_and_the_env_var(tmp_path, monkeypatch, isolated_cache):
    make_cars(tmp_path / "data")
    counter = DecodeCounter(monkeypatch)
    load_dataset("cars", tmp_path / "data")  # no cache_dir: $RRB_CACHE_DIR
    assert len(cache_files(isolated_cache)) == 1
    clear_dataset_memo()
    image = tmp_path / "data" / "car_ims" / "000001.jpg"
    noise_image(image, (60, 60), seed=999)  # a changed file: different size and mtime
    os.utime(image, ns=(1, 1))
    changed = load_dataset("cars", tmp_path / "data")
    assert counter.calls == 2 and len(cache_files(isolated_cache)) == 2
    with Image.open(image) as pil:
        expected = np.asarray(pil.convert("RGB").resize((256, 256), Image.BILINEAR)).transpose(2, 0, 1)
    assert torch.equal(changed.train.images[0], torch.from_numpy(expected.copy()))


def test_omniglot_uses_the_disk_cache(tmp_path, monkeypatch):
    make_omniglot_folders(tmp_path / "data")
    first = load_dataset("omniglot", tmp_path / "data", cache_dir=tmp_path / "cache")
    clear_dataset_memo()
    monkeypatch.setattr(omniglot, "_decode_omniglot_images",
                        lambda *_: (_ for _ in ()).throw(AssertionError("decoded again")))
    second = load_dataset("omniglot", tmp_path / "data", cache_dir=tmp_path / "cache")
    assert torch.equal(first.test.images, second.test.images)


# ----------------------------------------------------------------------------------- Split / SPC-2

def test_split_validates_inputs():
    with pytest.raises(ValueError):
        Split(torch.zeros(2, 1, 4, 4), torch.zeros(2))  # float images
    with pytest.raises(ValueError):
        Split(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3))
    with pytest.raises(ValueError):
        Split(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2), crop=5)


def test_split_training_crops_are_crops_or_flipped_crops():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.int64).remainder(256).to(torch.uint8).view(2, 1, 6, 6)
    split = Split(images, torch.tensor([0, 1]), crop=4)
    batch = split.batch(torch.tensor([0, 1, 0, 1]), train=True, generator=torch.Generator().manual_seed(3))
    for out, source in zip(batch, images[[0, 1, 0, 1]].float() / 255):
        windows = [source[:, y:y + 4, x:x + 4] for y in range(3) for x in range(3)]
        assert any(torch.equal(out, w) or torch.equal(out, w.flip(-1)) for w in windows)


SAMPLER_LABELS = torch.tensor([0] * 5 + [1] * 4 + [2] * 3 + [3] * 1 + [4] * 2)


def test_spc2_sampler_pairs_share_labels_and_cover_the_epoch():
    sampler = SPC2Sampler(SAMPLER_LABELS, batch_pairs=2, generator=torch.Generator().manual_seed(0))
    batches = list(sampler)
    assert len(batches) == len(sampler) == 14 // 2  # 14 images in classes with ≥ 2 images
    firsts = []
    for batch in batches:
        assert batch.shape == (4,) and batch.dtype == torch.long
        labels = SAMPLER_LABELS[batch]
        assert torch.equal(labels[0::2], labels[1::2])
        assert torch.all(batch[0::2] != batch[1::2])
        firsts += batch[0::2].tolist()
    assert sorted(firsts) == [i for i in range(len(SAMPLER_LABELS)) if i != 12]  # the singleton is skipped


def test_spc2_sampler_reproducible_from_the_generator_and_uniform_partners():
    def epochs(seed: int, n: int) -> list[torch.Tensor]:
        sampler = SPC2Sampler(SAMPLER_LABELS, batch_pairs=7, generator=torch.Generator().manual_seed(seed))
        return [batch for _ in range(n) for batch in sampler]

    same_a, same_b, other = epochs(5, 3), epochs(5, 3), epochs(6, 3)
    assert all(torch.equal(a, b) for a, b in zip(same_a, same_b))
    assert not all(torch.equal(a, b) for a, b in zip(same_a, other))
    # Every other member of a class turns up as a partner.
    partners_of_zero = {int(b[i + 1]) for b in epochs(0, 40) for i in range(0, len(b), 2) if int(b[i]) == 0}
    assert partners_of_zero == {1, 2, 3, 4}


def test_spc2_sampler_needs_two_classes_with_pairs():
    with pytest.raises(BenchmarkError):
        SPC2Sampler(torch.tensor([0, 0, 1]), batch_pairs=2, generator=torch.Generator())


def test_quiet_hides_the_decoding_bar(tmp_path, capsys, monkeypatch):
    """`--quiet` means no progress bars, the loaders' decoding bar included (it filled the reference
    runs' logs); without it the bar is shown."""
    from benchmark import cli
    from benchmark.datasets.base import dataset_progress

    make_omniglot_folders(tmp_path / "data")
    with dataset_progress(False):
        load_dataset("omniglot", tmp_path / "data", cache_dir=tmp_path / "quiet")
    assert "decoding omniglot" not in capsys.readouterr().err
    clear_dataset_memo()
    load_dataset("omniglot", tmp_path / "data", cache_dir=tmp_path / "loud")
    assert "decoding omniglot" in capsys.readouterr().err

    seen = []

    def train(args):  # stands in for `rrb train`: loads the dataset as the command would
        clear_dataset_memo()
        load_dataset("omniglot", tmp_path / "data", cache_dir=tmp_path / f"cli{len(seen)}")
        seen.append("decoding omniglot" in capsys.readouterr().err)
        return 0

    monkeypatch.setitem(cli.COMMANDS, "train", train)
    assert cli.main(["train", "--quiet"]) == 0 and cli.main(["train"]) == 0
    assert seen == [False, True]
