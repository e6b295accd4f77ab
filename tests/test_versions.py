"""Cell identity follows the code: implementation versions enter the cell id, and a built-in whose
code changes while its version does not is caught here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmark import versions
from benchmark.cell import CellConfig, resolve
from benchmark.plugins import load_builtins as import_builtins
from benchmark.plugins import load_plugin_file, restore_registries, snapshot_registries
from benchmark.registry import ATTACKS, DEFENSES


def test_every_builtin_matches_its_recorded_version_and_fingerprint() -> None:
    problems = versions.stale_entries(versions.builtin_implementations(), versions.read_record())
    assert not problems, "\n".join(problems)


def test_a_code_change_under_an_unchanged_version_is_caught(tmp_path, monkeypatch) -> None:
    """Copy the project's sources, edit one defense's code, and check the record flags it."""
    for folder in ("benchmark", "defenses", "attacks"):
        shutil.copytree(versions.ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    import_builtins()
    hm = DEFENSES.get("hm").obj
    before = versions.fingerprint(hm, "defense")
    monkeypatch.setattr(versions, "ROOT", tmp_path)
    assert versions.fingerprint(hm, "defense") == before  # same code, same fingerprint wherever it lies
    source = tmp_path / "defenses" / "hm.py"
    text = source.read_text()
    # A comment or docstring edit does not count ...
    source.write_text(text.replace('"""HM: hardness', '"""HM (edited docstring): hardness') + "\n# a comment\n")
    assert versions.fingerprint(hm, "defense") == before
    # ... a change of behaviour does.
    source.write_text(text.replace("INITIAL_PREVIOUS_LOSS = 2.0", "INITIAL_PREVIOUS_LOSS = 1.0"))
    changed = versions.fingerprint(hm, "defense")
    assert changed != before
    recorded = {"defense:hm": {"version": hm.version, "fingerprint": before}}
    current = {"defense:hm": {"version": hm.version, "fingerprint": changed}}
    (problem,) = versions.stale_entries(current, recorded)
    assert "code changed but its version is still" in problem
    bumped = {"defense:hm": {"version": hm.version + 1, "fingerprint": changed}}
    assert "recorded" in versions.stale_entries(bumped, recorded)[0]  # the record must follow the bump
    assert versions.stale_entries(bumped, bumped) == []
    # The shared PGD loop is part of every defense's and attack's fingerprint.
    pgd = tmp_path / "benchmark" / "pgd.py"
    pgd.write_text(pgd.read_text().replace("x - config.alpha * grad.sign()", "x + config.alpha * grad.sign()"))
    assert versions.fingerprint(ATTACKS.get("ca+").obj, "attack") != \
        json.loads((versions.RECORD).read_text())["attack:ca+"]["fingerprint"]


def test_write_refuses_a_changed_fingerprint_under_the_same_version(tmp_path, monkeypatch) -> None:
    record = tmp_path / "record.json"
    current = versions.builtin_implementations()
    stale = {k: dict(v) for k, v in current.items()}
    stale["defense:hm"]["fingerprint"] = "0" * 64
    record.write_text(json.dumps(stale))
    assert versions.write_record(path=record) == ["defense:hm"]
    assert json.loads(record.read_text()) == stale  # nothing written
    assert versions.write_record(numbers_unchanged=True, path=record) == []
    assert json.loads(record.read_text()) == current


def test_cell_id_includes_defense_and_attack_versions(monkeypatch) -> None:
    import_builtins()
    config = CellConfig(dataset="digits", defense="hm", preset="smoke")
    before = resolve(config)
    hm = DEFENSES.get("hm").obj
    monkeypatch.setattr(hm, "version", hm.version + 1)
    bumped = resolve(config)
    assert bumped.train_id != before.train_id and bumped.cell_id != before.cell_id
    monkeypatch.undo()
    gtt = ATTACKS.get("gtt").obj
    monkeypatch.setattr(gtt, "version", gtt.version + 1)
    attack_bumped = resolve(config)
    assert attack_bumped.train_id == before.train_id  # the checkpoint is reused ...
    assert attack_bumped.cell_id != before.cell_id  # ... but the rows are a new cell


ATTACK_PLUGIN = '''
import torch
from attacks.base import Attack
from benchmark.registry import ATTACKS


@ATTACKS.register("tiny-shift")
class TinyShift(Attack):
    metrics = ("TS",)

    def loss(self, emb, index, selection, gallery):
        return -(emb - gallery.embeddings[index.to(gallery.device)]).norm(dim=1).sum() * SCALE

    def measure(self, emb, index, selection, gallery):
        return {"TS": (emb - gallery.embeddings[index.to(gallery.device)]).norm(dim=1)}


SCALE = 1.0
'''


@pytest.mark.parametrize("edit", ["SCALE = 2.0"])
def test_an_edited_attack_plugin_gives_a_new_cell_id(tmp_path: Path, edit: str) -> None:
    snapshot = snapshot_registries()
    try:
        plugin = tmp_path / "tiny_shift.py"
        plugin.write_text(ATTACK_PLUGIN)
        load_plugin_file(plugin)
        config = CellConfig(dataset="digits", defense="nt", preset="smoke",
                            attacks=("ca+", "tiny-shift"))
        first = resolve(config)
        assert first.hash_payload()["attack_implementations"]["tiny-shift"]["plugin_hash"]
        restore_registries(snapshot)
        plugin.write_text(ATTACK_PLUGIN.replace("SCALE = 1.0", edit))
        load_plugin_file(plugin)
        second = resolve(config)
        assert second.train_id == first.train_id and second.cell_id != first.cell_id
    finally:
        restore_registries(snapshot)
