"""Hostile input (issue 25): every bad input a user or a plugin can give ends with one line, exit
status 2 (or the status the README documents), and a results store that is byte-identical.

Each case is one command line run through ``benchmark.cli.main`` against a small real store (two
digits cells and their telemetry copied from the committed reference store, with a manifest), so
the cases need no training: a case that trained would fail its byte-identical check anyway.
Groups: names, numbers, paths, archives, images, plugins, stores, locks. The plugin cases that
import plugin code run it in rrb's child process (``benchmark.isolation``), a few seconds each.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from benchmark import store
from benchmark.cli import main
from benchmark.plugins import load_builtins, restore_registries, snapshot_registries

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "results"


# ------------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(autouse=True)
def clean_registry():
    load_builtins()
    snapshot = snapshot_registries()
    yield
    restore_registries(snapshot)


def _reference_cells(n: int = 2) -> list[Path]:
    cells = sorted((REFERENCE / "cells" / "digits").glob("*.parquet"))
    return [p for p in cells if store.telemetry_path(REFERENCE, "digits", p.stem).is_file()][:n]


@pytest.fixture
def small_store(tmp_path) -> Path:
    """Two real digits cells with their telemetry, and their manifest."""
    results = tmp_path / "results"
    for cell in _reference_cells():
        for source in (cell, store.telemetry_path(REFERENCE, "digits", cell.stem)):
            target = results / source.relative_to(REFERENCE)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    with store.manifest_lock(results):
        store.record_files(results, store.store_files(results))
    return results


def tree(root: Path) -> dict[str, bytes]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def folders(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()} if root.exists() else set()


def visible_lines(text: str) -> list[str]:
    """The non-blank lines a terminal shows: a progress bar cleared with carriage returns is gone."""
    return [line.split("\r")[-1] for line in text.split("\n") if line.split("\r")[-1].strip()]


def run_case(argv: list[str], results: Path, capsys, *, status: int = 2) -> str:
    """Run one command; assert its status, one ``rrb: error:`` line and an untouched store."""
    before, before_dirs = tree(results), folders(results)
    code = main(argv)
    captured = capsys.readouterr()
    lines = visible_lines(captured.err)
    assert code == status, captured.err
    if status == 2:
        assert len(lines) == 1 and lines[0].startswith("rrb: error: "), captured.err
    assert "Traceback" not in captured.err
    assert tree(results) == before, "the store changed"
    assert folders(results) == before_dirs, "a folder appeared or vanished in the store"
    return lines[-1] if lines else ""


def _png(seed: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    pixels = (np.random.default_rng(seed).random((105, 105)) > 0.5).astype(np.uint8) * 255
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _omniglot_zip(path: Path, *, bad_png: bool = False, method: int = zipfile.ZIP_STORED) -> Path:
    """A tiny Omniglot archive: 4 characters x 3 images."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", method) as archive:
        for c in range(4):
            for k in range(3):
                data = b"not a png at all" if bad_png and (c, k) == (1, 1) else _png(10 * c + k)
                archive.writestr(f"images_background_small1/Alpha/character{c:02d}/{c}_{k}.png", data)
    return path


def _archive(kind: str, root: Path) -> Path:
    folder = root / f"omniglot-{kind}"
    target = folder / "images_background_small1.zip"
    if kind == "crc":  # a stored member whose bytes no longer match its CRC-32
        raw = bytearray(_omniglot_zip(target).read_bytes())
        raw[raw.index(b"IDAT") + 10] ^= 0xFF
        target.write_bytes(bytes(raw))
    elif kind == "undecodable-png":
        _omniglot_zip(target, bad_png=True)
    elif kind == "corrupt-deflate":  # a compressed member whose stream is garbage
        raw = bytearray(_omniglot_zip(target, method=zipfile.ZIP_DEFLATED).read_bytes())
        for i in range(80, 120):
            raw[i] ^= 0x5A
        target.write_bytes(bytes(raw))
    elif kind == "not-a-zip":
        folder.mkdir(parents=True)
        target.write_bytes(b"PK\x03\x04 this is not really a zip archive")
    elif kind == "empty-zip":
        folder.mkdir(parents=True)
        with zipfile.ZipFile(target, "w"):
            pass
    elif kind == "folder-bad-png":  # an extracted folder holding an undecodable image
        for c in range(2):
            for k in range(2):
                image = folder / "images_background" / "Alpha" / f"character{c:02d}" / f"{c}_{k}.png"
                image.parent.mkdir(parents=True, exist_ok=True)
                image.write_bytes(b"\x89PNG\r\n\x1a\ngarbage" if (c, k) == (1, 1) else _png(c + k))
    return folder


HEADER = """
from dataclasses import dataclass
from typing import ClassVar

from benchmark.defense_api import Defense, StepResult
from benchmark.losses import mine_random, triplet_loss
from benchmark.registry import DEFENSES
"""

PLUGINS = {
    "wrong-return-type": HEADER + """
@DEFENSES.register("wrong-type")
@dataclass
class WrongType(Defense):
    pgd_steps: ClassVar[int] = 0

    def training_step(self, model, images, labels, ctx):
        return (model(images).sum(), None)
""",
    "syntax-error": "def broken(:\n    pass\n",
    "writes-store-then-raises": """
import os
from pathlib import Path

results = Path(os.environ["RRB_FUZZ_RESULTS"])
cells = sorted((results / "cells" / "digits").glob("*.parquet"))
cells[0].write_bytes(cells[0].read_bytes()[:-8] + b"tampered")
(results / "cells" / "digits" / "planted.parquet").write_bytes(b"junk")
(results / "MANIFEST.sha256").write_text("")
(results / "note.txt").write_text("a plugin was here")
raise RuntimeError("boom after writing")
""",
    "attack-not-an-attack": """
from benchmark.registry import ATTACKS


@ATTACKS.register("not-an-attack")
def not_an_attack():
    return 1
""",
}


def _plugin(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{kind.replace('-', '_')}.py"
    path.write_text(textwrap.dedent(PLUGINS[kind]))
    return path


# ------------------------------------------------------------------------------------------------
# The cases: (group, id) -> (argv builder, expected substring of the error line)

R = "{results}"
CASES: dict[str, tuple[list[str], str]] = {
    # names
    "names/unknown-dataset": (["train", "--dataset", "nosuch", "--results", R], "nosuch"),
    "names/unknown-defense": (["run", "--defenses", "nosuch", "--preset", "smoke", "--results", R], "known defenses"),
    "names/unknown-preset": (["train", "--preset", "fast", "--results", R], "fast"),
    "names/unknown-profile": (["run", "--profile", "rob99", "--preset", "smoke", "--results", R], "rob99"),
    "names/unknown-attack": (["run", "--attacks", "ca+,zz", "--preset", "smoke", "--results", R], "zz"),
    "names/results-unknown-dataset": (["results", "--dataset", "nosuch", "--results", R], "datasets with results"),
    "names/leaderboard-unknown-dataset": (["leaderboard", "--dataset", "nosuch", "--results", R, "--out", "{out}"],
                                          "nosuch"),
    "names/unknown-list-kind": (["list", "widgets"], "invalid choice"),
    # numbers
    "numbers/seed-huge": (["train", "--seed", "99999999999999999999", "--results", R], "0 to 4294967295"),
    "numbers/seed-negative": (["run", "--seeds", "0,-1", "--results", R], "non-negative"),
    "numbers/seed-text": (["train", "--seed", "one", "--results", R], "non-negative integer seed"),
    "numbers/attention-lambda-nan": (["train", "--attention-lambda", "nan", "--results", R], "finite number >= 0"),
    "numbers/attention-lambda-inf": (["train", "--attention-lambda", "inf", "--results", R], "finite number >= 0"),
    "numbers/attention-lambda-negative": (["train", "--attention-lambda", "-1", "--results", R], "finite number"),
    "numbers/queries-zero": (["attack", "--queries", "0", "--results", R], "positive integer or 'all'"),
    "numbers/threads-zero": (["run", "--threads", "0", "--results", R], "from 1 to 1024"),
    "numbers/threads-absurd": (["run", "--threads", "100000", "--results", R], "from 1 to 1024"),
    "numbers/workers-negative": (["run", "--workers", "-3", "--executor", "dask", "--results", R], "from 1 to 1024"),
    "numbers/defense-param-nan": (["train", "--defense", "ga", "--defense-param", "gamma=nan", "--results", R],
                                  "finite number"),
    "numbers/defense-param-out-of-range": (["train", "--defense", "nt", "--defense-param", "margin=-1",
                                            "--results", R], "accepted"),
    "numbers/empty-seed-list": (["run", "--seeds", ",", "--results", R], "comma-separated"),
    # paths
    "paths/results-is-a-file": (["run", "--preset", "smoke", "--results", "{file}"], "not a directory"),
    "paths/missing-data-root": (["train", "--dataset", "omniglot", "--data-root", "{tmp}/nowhere", "--results", R],
                                "nowhere"),
    "paths/missing-plugin-file": (["run", "--plugin", "{tmp}/nope.py", "--results", R], "does not exist"),
    "paths/plugin-not-python": (["submit", "{file}", "--results", R], "is not a .py file"),
    "paths/results-missing-for-results": (["results", "--results", "{tmp}/never"], "does not exist"),
    # archives and images
    "archives/crc-mismatch": (["train", "--dataset", "omniglot", "--data-root", "{archive:crc}", "--results", R],
                              "Bad CRC-32"),
    "archives/corrupt-deflate": (["train", "--dataset", "omniglot", "--data-root", "{archive:corrupt-deflate}",
                                  "--results", R], "cannot read member"),
    "archives/not-a-zip": (["train", "--dataset", "omniglot", "--data-root", "{archive:not-a-zip}",
                            "--results", R], "cannot read archive"),
    "archives/empty-zip": (["train", "--dataset", "omniglot", "--data-root", "{archive:empty-zip}",
                            "--results", R], "no PNG images"),
    "images/undecodable-png-in-zip": (["train", "--dataset", "omniglot", "--data-root", "{archive:undecodable-png}",
                                       "--results", R], "not a recognised image file"),
    "images/undecodable-png-in-folder": (["train", "--dataset", "omniglot", "--data-root",
                                          "{archive:folder-bad-png}", "--results", R], "cannot decode image"),
    # plugins
    "plugins/wrong-type-under-train": (["train", "--defense", "wrong-type", "--plugin", "{plugin:wrong-return-type}",
                                        "--preset", "smoke", "--results", R], "must return a benchmark.defense_api"),
    "plugins/wrong-type-under-attack": (["attack", "--defense", "wrong-type", "--plugin",
                                         "{plugin:wrong-return-type}", "--preset", "smoke", "--results", R],
                                        "must return a benchmark.defense_api"),
    "plugins/syntax-error-submit": (["submit", "{plugin:syntax-error}", "--results", R], "SyntaxError"),
    "plugins/registers-a-function-as-attack": (["attack", "--attacks", "not-an-attack", "--plugin",
                                                "{plugin:attack-not-an-attack}", "--preset", "smoke",
                                                "--results", R], "must be a class deriving from attacks.base.Attack"),
    # stores
    "stores/manifest-garbage": (["results", "--results", R], "MANIFEST.sha256 line 1"),
    "stores/tampered-leaderboard": (["leaderboard", "--results", R, "--out", "{out}"], "do not match their manifest"),
    "stores/corrupt-checkpoint": (["attack", "--results", R, "--preset", "smoke"], "cannot be loaded"),
}


def _prepare(case: str, results: Path, tmp_path: Path, monkeypatch) -> None:
    """The damage a store case starts from (applied before the byte-identical snapshot)."""
    if case == "stores/manifest-garbage":
        store.manifest_path(results).write_text("not a manifest line\n")
    elif case == "stores/tampered-leaderboard":
        victim = sorted((results / "cells" / "digits").glob("*.parquet"))[0]
        victim.write_bytes(victim.read_bytes() + b"\0")
    elif case == "stores/corrupt-checkpoint":
        from benchmark.cell import CellConfig, resolve

        cell = resolve(CellConfig(dataset="digits", defense="nt", preset="smoke"))
        path = cell.checkpoint_path(results)
        path.parent.mkdir(parents=True)
        path.write_bytes(b"not a torch checkpoint")
    monkeypatch.setenv("RRB_FUZZ_RESULTS", str(results))


def _argv(template: list[str], results: Path, tmp_path: Path) -> list[str]:
    out = []
    for item in template:
        if item.startswith("{archive:"):
            out.append(str(_archive(item[9:-1], tmp_path)))
        elif item.startswith("{plugin:"):
            out.append(str(_plugin(item[8:-1], tmp_path)))
        else:
            file = tmp_path / "a-file"
            file.write_text("not a folder")
            out.append(item.format(results=results, out=tmp_path / "out", tmp=tmp_path, file=file))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_the_store_is_untouched(case, small_store, tmp_path, monkeypatch, capsys):
    template, expected = CASES[case]
    _prepare(case, small_store, tmp_path, monkeypatch)
    line = run_case(_argv(template, small_store, tmp_path), small_store, capsys)
    assert expected in line, line
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------
# Plugins that run code: in a child process, apart from the store


def test_plugin_writing_into_the_store_at_import_is_undone(small_store, tmp_path, monkeypatch, capsys):
    """Issue 25's case: a plugin file that writes into the results folder at import time, then raises.
    The child process imports it; the parent puts every file back and says which ones it touched."""
    monkeypatch.setenv("RRB_FUZZ_RESULTS", str(small_store))
    plugin = _plugin("writes-store-then-raises", tmp_path)
    victim = sorted((small_store / "cells" / "digits").glob("*.parquet"))[0]
    line = run_case(["submit", str(plugin), "--preset", "smoke", "--results", str(small_store), "--out",
                     str(tmp_path / "out"), "--quiet"], small_store, capsys)
    assert "changed the results directory" in line and victim.name in line and "planted.parquet" in line
    assert "note.txt" in line and "put back as it was" in line
    assert main(["verify", "--results", str(small_store)]) == 0


def test_run_with_a_broken_plugin_defense_is_refused_apart(small_store, tmp_path, capsys):
    """``rrb run --plugin`` validates the plugin defense (in the child) before any work."""
    plugin = _plugin("wrong-return-type", tmp_path)
    line = run_case(["run", "--defenses", "wrong-type", "--plugin", str(plugin), "--preset", "smoke",
                     "--results", str(small_store), "--quiet"], small_store, capsys)
    assert "plugin defense 'wrong-type': training_step must return a benchmark.defense_api.StepResult" in line


# ------------------------------------------------------------------------------------------------
# Locks: a stale lock never blocks, a live one is named


def test_stale_manifest_lock_is_broken(small_store, capsys):
    lock = small_store / store.MANIFEST_LOCK
    lock.write_text(json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename, "created": 0}))
    assert main(["verify", "--results", str(small_store), "--record"]) == 0
    assert not lock.exists()
    garbage = small_store / store.MANIFEST_LOCK
    garbage.write_text("{{{ not json")
    old = time.time() - 3600
    os.utime(garbage, (old, old))
    assert main(["verify", "--results", str(small_store), "--record"]) == 0
    capsys.readouterr()


def test_live_manifest_lock_is_named_after_the_timeout(small_store, monkeypatch, capsys):
    lock = small_store / store.MANIFEST_LOCK
    lock.write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename, "created": time.time()}))
    original = store.wait_for_lock
    monkeypatch.setattr(store, "wait_for_lock", lambda path, **kw: original(path, timeout_s=0.2))
    line = run_case(["verify", "--results", str(small_store), "--record"], small_store, capsys)
    assert str(lock) in line and "if no rrb process is running, delete it" in line
