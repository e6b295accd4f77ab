"""Third-party plugins (issue 7): entry points, ``--plugin`` files, ``rrb submit`` and its validation.

What is checked: a defense plugin is found both as an installed ``rrb.defenses`` entry point and
as a ``--plugin`` file; ``rrb submit`` validates it, stores its rows marked as a plugin with the
file's sha256 and renders leaderboards that label it; every kind of broken plugin is refused with
one line (exit status 2) while the results directory stays byte-identical and the registry clean;
an attack plugin reports its own metric as an extra column and never changes the built-in numbers.

Cost control: every run uses the smoke preset on ``digits``. The two happy-path submissions run the
whole attack suite (the audit needs every ERS attack); the first one audits with a cheaper budget
(1 restart, 2x steps: the same checks and code path), the second reuses its checkpoint and passes
``--no-audit``. Broken plugins are refused before anything runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from attacks.audit import AuditSpec
from benchmark.cli import main
from benchmark.plugins import PLUGIN_MODULE_PREFIX, restore_registries, snapshot_registries
from benchmark.plugins import load_builtins as import_builtins
from benchmark.registry import ATTACKS, DEFENSES, REGISTRIES
from benchmark.store import load_results

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "noise_consistency.py"
EXAMPLE_SHA = hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()
PLUGIN_NAME = "noise-consistency"
SMOKE = ["--preset", "smoke", "--datasets", "digits", "--quiet"]


# ------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(autouse=True)
def clean_registry():
    """Every test starts and ends with the built-ins only: plugins a test loads are forgotten."""
    import_builtins()
    snapshot = snapshot_registries()
    yield
    restore_registries(snapshot)


@pytest.fixture(scope="module")
def populated_results(tmp_path_factory) -> Path:
    """A results directory holding one real smoke cell (NT, CA+ only): what a user already has."""
    results = tmp_path_factory.mktemp("populated") / "results"
    with pytest.MonkeyPatch.context() as mp:  # the function-scoped cache fixture is not active here
        mp.setenv("RRB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "rrb-cache"))
        assert main(["run", *SMOKE, "--defenses", "nt", "--attacks", "ca+", "--results", str(results)]) == 0
    assert list((results / "cells" / "digits").glob("*.parquet"))
    return results


@dataclass
class Submission:
    code: int
    err: str
    results: Path
    out: Path
    before: dict[str, bytes]  # the results directory before the submission


@pytest.fixture(scope="module")
def submitted(populated_results, tmp_path_factory) -> Submission:
    """``rrb submit examples/noise_consistency.py`` into a copy of the populated results, once."""
    root = tmp_path_factory.mktemp("submitted")
    results, out = root / "results", root / "O"
    shutil.copytree(populated_results, results)
    before = tree(results)
    err = io.StringIO()
    snapshot = snapshot_registries()
    try:
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err), \
                contextlib.redirect_stdout(io.StringIO()):
            mp.setenv("RRB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "rrb-cache"))
            # The whole attack suite (the audit needs every ERS attack) and a cheaper audit budget:
            # the checks and the code path are the ones a real submission runs.
            mp.setattr("benchmark.cli._audit_spec", lambda: AuditSpec(restarts=1, step_factor=2))
            code = main(["submit", str(EXAMPLE), *SMOKE, "--results", str(results), "--out", str(out)])
    finally:
        restore_registries(snapshot)
    return Submission(code, err.getvalue(), results, out, before)


@pytest.fixture
def results_copy(populated_results, tmp_path) -> Path:
    target = tmp_path / "results"
    shutil.copytree(populated_results, target)
    return target


@pytest.fixture
def installed_plugin(tmp_path):
    """The example plugin as an installed package: a module plus a ``.dist-info`` with an entry point."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "rrb_demo_plugin.py").write_bytes(EXAMPLE.read_bytes())
    info = site / "rrb_demo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rrb-demo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[rrb.defenses]\n{PLUGIN_NAME} = rrb_demo_plugin:NoiseConsistency\n")
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(site))
    importlib.invalidate_caches()
    DEFENSES._entry_points_loaded = False  # look at the installed packages again
    yield site
    sys.modules.pop("rrb_demo_plugin", None)
    mp.undo()
    importlib.invalidate_caches()


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def store_manifest(results: Path) -> dict[str, str]:
    from benchmark.store import read_manifest

    return read_manifest(results)


def store_manifest_text(data: bytes) -> dict[str, str]:
    return dict(reversed(line.split("  ", 1)) for line in data.decode().splitlines() if line)


def board_row(out: Path, entry: str) -> str:
    """The Markdown leaderboard's table row of one entry."""
    board = (out / "digits-smoke-rob28-v1.md").read_text()
    return next(row for row in board.splitlines() if row.startswith("|") and f" {entry} " in row)


def plugin_modules() -> set[str]:
    return {m for m in sys.modules if m.startswith(PLUGIN_MODULE_PREFIX)}


def leaderboard_html(out: Path) -> str:
    pages = [p for p in out.glob("*.html") if p.name != "index.html" and "digits" in p.name]
    assert pages, f"no digits leaderboard in {sorted(p.name for p in out.iterdir())}"
    return "\n".join(p.read_text() for p in pages)


# ------------------------------------------------------------------------------------------------
# Discovery: entry point and --plugin file


def test_entry_point_plugin_is_listed(installed_plugin, capsys):
    assert PLUGIN_NAME not in DEFENSES
    assert main(["list", "defenses"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith(PLUGIN_NAME))
    assert "[entrypoint:rrb-demo-plugin]" in line
    entry = DEFENSES.get(PLUGIN_NAME)
    assert entry.is_plugin and entry.obj.__module__ == "rrb_demo_plugin"
    # Installed plugins carry the sha256 of the module file that defines them.
    assert entry.source_hash == hashlib.sha256((installed_plugin / "rrb_demo_plugin.py").read_bytes()).hexdigest()
    assert "nt" in out.split()  # the built-ins are still there


def test_plugin_file_is_listed_and_forgotten_afterwards(capsys):
    assert main(["list", "defenses", "--plugin", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith(PLUGIN_NAME))
    assert f"[plugin:{EXAMPLE.resolve()}]" in line
    assert DEFENSES.get(PLUGIN_NAME).source_hash == EXAMPLE_SHA


PLAIN_MODULE = """
from dataclasses import dataclass
from typing import ClassVar

from benchmark.defense_api import Defense


@dataclass
class Plain(Defense):
    \"\"\"an undecorated defense class\"\"\"

    pgd_steps: ClassVar[int] = 0
"""


def test_entry_point_forms_and_broken_packages(tmp_path, capsys):
    """An undecorated class is registered under the entry point's name; a module registering nothing
    and a package failing to import are skipped with a warning and do not hide the built-ins."""
    site = tmp_path / "site"
    info = site / "rrb_eps-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "rrb_eps_plain.py").write_text(PLAIN_MODULE)
    (site / "rrb_eps_empty.py").write_text("VALUE = 1\n")
    (site / "rrb_eps_bad.py").write_text("raise ImportError('missing dependency foo')\n")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rrb-eps\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[rrb.defenses]\nplain-ep = rrb_eps_plain:Plain\n"
                                           "empty = rrb_eps_empty\nbad = rrb_eps_bad:X\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(site))
        importlib.invalidate_caches()
        DEFENSES._entry_points_loaded = False
        try:
            assert main(["list", "defenses"]) == 0
            captured = capsys.readouterr()
            names = [line.split()[0] for line in captured.out.splitlines()]
            assert "nt" in names and "plain-ep" in names
            assert "bad" not in names and "empty" not in names
            plain = DEFENSES.get("plain-ep")
            assert plain.source == "entrypoint:rrb-eps" and plain.obj.__name__ == "Plain"
            warnings = [line for line in captured.err.splitlines() if line.startswith("rrb: warning:")]
            assert len(warnings) == 2
            assert any("'bad'" in w and "missing dependency foo" in w for w in warnings)
            assert any("'empty'" in w and "registered nothing" in w for w in warnings)
            # Asking for the broken one by name repeats why; nothing is written.
            assert main(["submit", "bad", "--results", str(tmp_path / "r")]) == 2
            assert "missing dependency foo" in capsys.readouterr().err
            assert not (tmp_path / "r").exists()
        finally:
            for module in ("rrb_eps_plain", "rrb_eps_empty", "rrb_eps_bad"):
                sys.modules.pop(module, None)
    importlib.invalidate_caches()


# ------------------------------------------------------------------------------------------------
# rrb submit: the happy paths


def _check_submission(results: Path, out: Path, *, source: str, sha: str) -> None:
    rows = load_results(results)
    mine = rows[rows["defense"] == PLUGIN_NAME]
    assert len(mine) > 0
    assert mine["is_plugin"].all() and (mine["plugin_hash"] == sha).all()
    assert mine["plugin_source"].str.startswith(source).all()
    assert not rows.loc[rows["defense"] != PLUGIN_NAME, "is_plugin"].any()
    assert {"benign", "ca+", "score"} <= set(mine["attack"])
    board_page = "digits-smoke-rob28-v1.html"
    assert f'href="{board_page}"' in (out / "index.html").read_text()
    board = (out / board_page).read_text()
    assert f">{PLUGIN_NAME}</td>" in board
    assert f'data-sort="plugin">plugin {sha[:8]}' in board  # the Kind column marks it as a plugin


@pytest.mark.slow
def test_submit_plugin_file(submitted):
    assert submitted.code == 0, submitted.err
    assert f"plugin defense '{PLUGIN_NAME}'" in submitted.err and "passed validation" in submitted.err
    _check_submission(submitted.results, submitted.out, source=f"plugin:{EXAMPLE.resolve()}", sha=EXAMPLE_SHA)
    after = tree(submitted.results)
    # Existing rows untouched (the manifest gains the new files' hashes, and keeps the old ones).
    assert all(after.get(path) == data for path, data in submitted.before.items() if path != "MANIFEST.sha256")
    assert store_manifest(submitted.results).items() >= store_manifest_text(submitted.before["MANIFEST.sha256"]).items()
    assert any(path.startswith("cells/digits/") for path in set(after) - set(submitted.before))
    board = (submitted.out / "digits-smoke-rob28-v1.html").read_text()
    assert ">nt</td>" in board and 'data-sort="built-in">built-in' in board  # ranked beside the built-in


@pytest.mark.slow
def test_submit_audits_the_plugin_by_default(submitted):
    """A plugin cannot enter the ranking unaudited: ``rrb submit`` without ``--no-audit`` stores an
    audit of the plugin's cell and the board shows its verdict, not the 'UNAUDITED plugin' warning."""
    assert submitted.code == 0, submitted.err
    new = set(tree(submitted.results)) - set(submitted.before)
    assert any(path.startswith("audits/digits/") for path in new)
    rows = load_results(submitted.results)
    audit = rows[(rows["attack"] == "audit") & (rows["defense"] == PLUGIN_NAME)]
    assert {"ERS:strong", "drop", "flagged", "audit_seconds"} <= set(audit["metric"])
    assert audit["is_plugin"].all() and (audit["plugin_hash"] == EXAMPLE_SHA).all()
    line = board_row(submitted.out, PLUGIN_NAME)
    assert "UNAUDITED plugin" not in line
    assert "pass 1/1" in line or "FLAGGED 1/1" in line


@pytest.mark.slow
def test_submit_installed_plugin_by_name(installed_plugin, submitted, tmp_path, capsys):
    """Submitting the installed copy of the example by its name gives the same cell (same code, same hash):
    the file submission's checkpoint is reused, and the rows are marked as coming from the package."""
    results, out = tmp_path / "R", tmp_path / "O"
    shutil.copytree(submitted.results / "checkpoints", results / "checkpoints")
    code = main(["submit", PLUGIN_NAME, *SMOKE, "--results", str(results), "--out", str(out), "--no-audit"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "installed package (entrypoint:rrb-demo-plugin)" in err
    sha = hashlib.sha256((installed_plugin / "rrb_demo_plugin.py").read_bytes()).hexdigest()
    assert sha == EXAMPLE_SHA
    _check_submission(results, out, source="entrypoint:rrb-demo-plugin", sha=sha)
    mine = load_results(results)
    first = load_results(submitted.results)
    first = first[first["defense"] == PLUGIN_NAME]
    assert set(mine["cell_id"]) == set(first["cell_id"])
    assert set(mine["train_seconds"]) == set(first["train_seconds"])  # loaded, not retrained
    # --no-audit: nothing audited, and the board warns that this plugin entered unaudited
    assert "audit" not in set(mine["attack"]) and not (results / "audits").exists()
    assert "UNAUDITED plugin" in board_row(out, PLUGIN_NAME)


def test_submit_refuses_builtin_and_unknown_names(tmp_path, capsys):
    assert main(["submit", "nt", "--results", str(tmp_path / "r")]) == 2
    assert "built-in defense" in capsys.readouterr().err
    assert main(["submit", "no-such-defense", "--results", str(tmp_path / "r")]) == 2
    assert "neither a plugin .py file nor an installed plugin defense" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------------
# rrb submit: broken plugins


HEADER = """
from dataclasses import dataclass
from typing import ClassVar

import torch

from benchmark.defense_api import Defense, StepResult
from benchmark.losses import mine_random, triplet_loss
from benchmark.registry import DEFENSES


def triplet(model, images, labels, ctx, inputs=None):
    emb = model(images if inputs is None else inputs)
    t = mine_random(emb.detach(), labels, generator=ctx.generator)
    return triplet_loss(emb[t.anchor], emb[t.positive], emb[t.negative], 0.2)
"""

GOOD_STEP = """
    def training_step(self, model, images, labels, ctx):
        return StepResult(loss=triplet(model, images, labels, ctx))
"""


def _defense(name: str, body: str = GOOD_STEP, steps: str = "pgd_steps: ClassVar[int] = 0") -> str:
    return f"""
@DEFENSES.register("{name}")
@dataclass
class Plugin_{name.replace("-", "_")}(Defense):
    {steps}
{body}
"""


BROKEN = {
    "syntax-error": ("def broken(:\n    pass\n", "failed to import: SyntaxError"),
    "raises-at-import": (HEADER + "raise RuntimeError('boom at import')\n",
                         "failed to import: RuntimeError: boom at import"),
    "no-class": (HEADER + "class NotRegistered(Defense):\n    pgd_steps: ClassVar[int] = 0\n",
                 "must register exactly one new defense"),
    "wrong-signature": (HEADER + _defense("bad-sig", """
    def training_step(self, model, images, labels):
        return StepResult(loss=model(images).sum())
"""), "has the wrong signature"),
    "no-pgd-steps": (HEADER + _defense("no-steps", steps="margin: float = 0.2"), "must declare its PGD steps"),
    "nan-loss": (HEADER + _defense("nan-loss", """
    def training_step(self, model, images, labels, ctx):
        return StepResult(loss=triplet(model, images, labels, ctx) * float("nan"))
"""), "the loss is not finite"),
    "raises-in-step": (HEADER + _defense("raises", """
    def training_step(self, model, images, labels, ctx):
        raise ValueError("bad batch shape")
"""), "raised inside training_step: ValueError: bad batch shape"),
    "outside-epsilon": (HEADER + _defense("too-far", """
    def training_step(self, model, images, labels, ctx):
        moved = (images + 2 * ctx.epsilon).clamp(0, 1)
        return StepResult(loss=triplet(model, images, labels, ctx, moved), perturbed=moved, originals=images)
"""), "exceeds the budget"),
    "shadows-builtin": (HEADER + _defense("nt"), "shadows the built-in defense 'nt'"),
    "two-defenses": (HEADER + _defense("first-one") + _defense("second-one"),
                     "it registered 2 (first-one, second-one)"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_plugin_is_refused_and_writes_nothing(case, results_copy, tmp_path, capsys):
    source, expected = BROKEN[case]
    plugin = tmp_path / f"{case.replace('-', '_')}.py"
    plugin.write_text(textwrap.dedent(source))
    before_tree = tree(results_copy)
    before_names = {kind: set(reg.names()) for kind, reg in REGISTRIES.items()}
    before_modules = plugin_modules()
    out = tmp_path / "O"

    code = main(["submit", str(plugin), *SMOKE, "--results", str(results_copy), "--out", str(out)])

    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("rrb: error: "), err
    assert expected in lines[0]
    assert "Traceback" not in err
    assert tree(results_copy) == before_tree  # byte-identical, no file added or removed
    assert not out.exists()
    assert {kind: set(reg.names()) for kind, reg in REGISTRIES.items()} == before_names
    assert plugin_modules() == before_modules


def test_fixed_plugin_loads_after_a_failed_one(tmp_path, capsys):
    """A refused file leaves nothing behind, so its fixed version (same name) validates in the same process."""
    from benchmark.validation import validate_defense

    plugin = tmp_path / "evolving.py"
    plugin.write_text(textwrap.dedent(HEADER + _defense("evolving", """
    def training_step(self, model, images, labels, ctx):
        raise ValueError("not yet")
""")))
    with pytest.raises(Exception, match="not yet"):
        validate_defense(str(plugin))
    assert "evolving" not in DEFENSES
    plugin.write_text(textwrap.dedent(HEADER + _defense("evolving")))
    checked = validate_defense(str(plugin))
    assert checked.entry.name == "evolving" and checked.pgd_steps == 0 and not checked.perturbs
    assert checked.entry.source_hash == hashlib.sha256(plugin.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------
# Attack plugins: extra columns, never part of ERS/ARS


ATTACK_PLUGIN = """
from attacks.candidate import CandidateAttackPlus
from benchmark.registry import ATTACKS


@ATTACKS.register("ca-rank", description="CA+ reported under its own key (test plugin)")
class CandidateRank(CandidateAttackPlus):
    metrics = ("CARank",)

    def measure(self, emb, index, selection, gallery):
        return {"CARank": super().measure(emb, index, selection, gallery)["CA+"]}
"""


@pytest.mark.slow
def test_attack_plugin_is_an_extra_column(results_copy, tmp_path, capsys):
    plugin = tmp_path / "rank_attack.py"
    plugin.write_text(textwrap.dedent(ATTACK_PLUGIN))
    out = tmp_path / "O"
    baseline = load_results(results_copy)  # the same NT model attacked by CA+ alone
    code = main(["run", *SMOKE, "--defenses", "nt", "--attacks", "ca+,ca-rank", "--plugin", str(plugin),
                 "--results", str(results_copy), "--leaderboard", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "ca-rank" not in ATTACKS  # the plugin file was imported by the child process only (issue 25)
    rows = load_results(results_copy)
    new = rows[~rows["cell_id"].isin(set(baseline["cell_id"]))]
    assert new["cell_id"].nunique() == 1
    extra = new[new["attack"] == "ca-rank"]
    assert set(extra["metric"]) == {"CARank"} and extra["attack_plugin"].all()
    assert set(extra["variant"]) == {"clean", "adversarial", "strong"}
    assert not new.loc[new["attack"] != "ca-rank", "attack_plugin"].any()

    def values(frame, attack):
        part = frame[frame["attack"] == attack]
        return dict(zip(part["metric"] + "/" + part["variant"], part["value"]))

    # The plugin leaves every built-in number alone: CA+, benign metrics and the scores
    # (ERS/ARS/WHM rows) equal those of the run without it.
    for attack in ("ca+", "benign", "score"):
        assert values(new, attack) == values(baseline, attack)
    assert set(new.loc[new["attack"] == "score", "metric"]) == set(baseline.loc[baseline["attack"] == "score",
                                                                                  "metric"])
    board = leaderboard_html(out)
    assert "CARank" in board and "plugin attack CARank (not part of ERS/ARS)" in board
