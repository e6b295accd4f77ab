"""The attack-strength audit: a gradient-masking entry is flagged, a sound defense is not, and the
strong evaluation is never weaker than the standard one on the same queries."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
import torch

from attacks.audit import AuditSpec, worse
from benchmark import store
from benchmark.cell import CellConfig
from benchmark.matrix import run_matrix
from benchmark.pgd import PGDConfig, apgd, pgd
from benchmark.plugins import load_builtins, load_plugin_file, restore_registries, snapshot_registries
from benchmark.report import build_boards
from benchmark.tasks import run_and_store_audit, run_and_store_cell

THREADS = 2

# Input quantisation, the classic obfuscated-gradients "defense" (Athalye et al. 2018): the
# embedding is flat almost everywhere in the input, so every input gradient is exactly zero and
# gradient attacks cannot move; the model is still a perfectly ordinary retrieval model.
MASKING_MODEL = '''
import torch
from benchmark.models import C2F2
from benchmark.registry import MODELS


@MODELS.register("c2f2-quantised", description="c2f2 behind 4-level input quantisation (masks gradients)")
class QuantisedC2F2(C2F2):
    def embed_raw(self, x):
        return super().embed_raw(torch.round(x * 3) / 3)
'''


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """Smoke cells (NT, ACT, NT on the quantised model) on digits, each audited."""
    results = tmp_path_factory.mktemp("audit") / "results"
    plugin = results.parent / "masking_model.py"
    plugin.write_text(textwrap.dedent(MASKING_MODEL))
    load_builtins()  # the snapshot must hold the built-ins, or restoring it would drop them
    snapshot = snapshot_registries()
    try:
        load_plugin_file(plugin)
        spec = AuditSpec(restarts=1, step_factor=2)  # a cheaper audit: the checks are the same
        summary = run_matrix(["digits"], ["nt", "act"], [0], preset="smoke", results_dir=results, progress=False,
                             threads=THREADS, audit=spec)
        masked = CellConfig(dataset="digits", defense="nt", preset="smoke", model="c2f2-quantised")
        run_and_store_cell(masked, results, plugins=[str(plugin)], threads=THREADS)
        run_and_store_audit(masked, results, spec=spec, plugins=[str(plugin)], threads=THREADS)
        rows = store.load_results(results)
    finally:
        restore_registries(snapshot)
    audit = rows[rows["attack"] == "audit"]
    by_entry = {}
    for cell_id, group in audit.groupby("cell_id"):
        model = rows.loc[rows["cell_id"] == cell_id, "model"].iloc[0]
        entry = rows.loc[rows["cell_id"] == cell_id, "entry"].iloc[0]
        by_entry[(entry, model)] = dict(zip(group["metric"], group["value"]))
    return summary, rows, by_entry


@pytest.mark.slow
def test_gradient_masking_entry_is_flagged(audited):
    _, _, by_entry = audited
    masked = by_entry[("nt", "c2f2-quantised")]
    assert masked["flagged"] == 1.0
    assert masked["flag:large_epsilon"] == 1.0  # even at eps = 1 the attacks cannot move the images
    assert masked["ERS:large_epsilon"] > AuditSpec().large_epsilon_max_ers
    assert masked["ERS:standard"] > 40  # it looks robust on the standard evaluation ...
    assert masked["ERS:transfer"] < masked["ERS:standard"]  # ... yet a transfer attack does better
    # ... and so does a random search that never reads a gradient.
    assert masked["flag:gradient_free"] == 1.0
    assert masked["ERS:strong_with_gradient_free"] < masked["ERS:strong"] - AuditSpec().tolerance


@pytest.mark.slow
def test_sound_defenses_pass(audited):
    summary, _, by_entry = audited
    assert summary.audits == 2 and summary.audits_computed == 2
    for entry in ("act", "nt"):
        numbers = by_entry[(entry, "c2f2")]
        assert numbers["flagged"] == 0.0, (entry, numbers)
        assert numbers["ERS:large_epsilon"] <= AuditSpec().large_epsilon_max_ers
        assert numbers["flag:gradient_free"] == 0.0, (entry, numbers)  # no worse case than the gradients'
        assert numbers["same_weights"] == 1.0  # the audited model is the one the cell's rows evaluated
    assert "ERS:transfer" in by_entry[("act", "c2f2")]  # crafted on the NT model of the same seed
    assert "ERS:transfer" not in by_entry[("nt", "c2f2")]  # NT is its own surrogate: no transfer check


@pytest.mark.slow
def test_strong_evaluation_is_never_weaker_and_reproduces_the_standard_run(audited):
    _, rows, by_entry = audited
    for (entry, model), numbers in by_entry.items():
        assert numbers["ERS:strong"] <= numbers["ERS:standard"] + 1e-9, entry
        assert numbers["drop"] == pytest.approx(numbers["ERS:standard"] - numbers["ERS:strong"])
        assert numbers["ARS:strong"] <= 100 and numbers["audit_seconds"] > 0
        cell = rows[(rows["entry"] == entry) & (rows["model"] == model) & (rows["attack"] == "score")]
        stored = float(cell.loc[cell["metric"] == "ERS", "value"].iloc[0])
        # The audit's standard run is the board's: same queries, same selections, same numbers.
        assert numbers["ERS:standard"] == pytest.approx(stored, abs=1e-6), entry


@pytest.mark.slow
def test_audit_is_stored_beside_the_cell_and_resumes(audited, tmp_path):
    summary, rows, _ = audited
    results = Path(summary.results_dir)
    files = sorted((results / "audits" / "digits").glob("*.parquet"))
    assert len(files) == 3 and all(store.read_cell_file(p).valid for p in files)
    standard_ids = set(rows.loc[rows["attack"] != "audit", "cell_id"])
    assert set(rows.loc[rows["attack"] == "audit", "cell_id"]) <= standard_ids  # on the audited cells' rows
    again = run_matrix(["digits"], ["nt", "act"], [0], preset="smoke", results_dir=results, progress=False,
                       threads=THREADS, audit=AuditSpec(restarts=1, step_factor=2))
    assert (again.computed, again.audits_computed, again.audits_skipped) == (0, 0, 2)


@pytest.mark.slow
def test_audit_seconds_leave_out_retraining_the_model(audited, monkeypatch):
    """A machine without the checkpoint retrains the model first; that time is model_seconds, not
    the audit's own cost (Audit s on the board)."""
    import time as _time

    from benchmark import cell_audit as audit_module

    summary, _, _ = audited
    slow = 1.5
    original = audit_module.train_or_load

    def slow_train_or_load(*args, **kwargs):
        _time.sleep(slow)  # stands for retraining a checkpoint that is not on this machine
        return original(*args, **kwargs)

    monkeypatch.setattr(audit_module, "train_or_load", slow_train_or_load)
    config = CellConfig(dataset="digits", defense="act", preset="smoke")
    start = _time.perf_counter()
    frame = audit_module.audit_cell(config, summary.results_dir, AuditSpec(restarts=1, step_factor=2),
                                    progress=False)
    wall = _time.perf_counter() - start
    numbers = dict(zip(frame["metric"], frame["value"]))
    assert numbers["model_seconds"] >= 2 * slow  # the model and its NT surrogate
    assert 0 < numbers["audit_seconds"] <= wall - 2 * slow


def test_worst_case_follows_each_values_direction():
    a, b = torch.tensor([10.0, 50.0]), torch.tensor([20.0, 40.0])
    assert worse(a, b, True).tolist() == [10.0, 40.0]  # higher is robust: the attacker wants it low
    assert worse(a, b, False).tolist() == [20.0, 50.0]


def test_apgd_stays_in_the_ball_and_does_not_lose_to_its_start():
    torch.manual_seed(0)
    target = torch.rand(8, 16)
    x0 = torch.rand(8, 16)

    def loss(x):
        return (x - target).pow(2).sum()

    config = PGDConfig(0.1, 0.01, 40)
    out = apgd(x0, loss, config)
    assert (out - x0).abs().max() <= 0.1 + 1e-6 and out.min() >= 0 and out.max() <= 1
    assert float(loss(out)) <= float(loss(x0))
    assert float(loss(out)) <= float(loss(pgd(x0, loss, config))) + 1e-4
    assert math.isfinite(float(loss(out)))


@pytest.mark.slow
def test_board_says_what_the_audits_found(audited):
    _, rows, by_entry = audited
    (board,) = build_boards(rows, None, plots=False)
    assert board.audited
    findings = board.audit_findings
    # The masked entry and NT share one board row (same entry, different model), so it is the
    # row, not the model, that the board flags: the flagged seed shows in the Audit column.
    flagged_rows = [row.entry for row in board.rows if row.audit is not None and row.audit.css == "warn"]
    assert flagged_rows and findings.endswith("Flagged: " + ", ".join(flagged_rows) + ".")
    strong = {row.entry: row for row in board.rows}
    order = findings.split("Ranked by Strong ERS: ")[1].split(". Largest drop")[0]
    assert [part.rsplit(" ", 1)[0] for part in order.split(", ")] == sorted(
        strong, key=lambda entry: -board._column_values("audit:ERS:strong")[entry])
    assert "Largest drop: " in findings
