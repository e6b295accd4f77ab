"""The forward pass's precision: float32 by default, bf16 trunk on request, part of the cell's id."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmark.cell import CellConfig, resolve
from benchmark.cli import main
from benchmark.errors import BenchmarkError
from benchmark.models import C2F2, set_precision
from benchmark.precision import check_precision

ROOT = Path(__file__).resolve().parents[1]


def test_names_are_checked_with_the_accepted_ones():
    assert check_precision(None) == "float32"
    assert check_precision("FP32") == "float32" and check_precision("bfloat16") == "bf16"
    with pytest.raises(BenchmarkError, match="accepted: float32, bf16"):
        check_precision("float64")


def test_bf16_trunk_keeps_a_float32_unit_embedding_close_to_float32():
    torch.manual_seed(0)
    model = C2F2().eval()
    x = torch.rand(16, 1, 28, 28)
    full = model(x)
    low = set_precision(model, "bf16")(x)
    assert low.dtype == torch.float32
    assert torch.allclose(low.norm(dim=1), torch.ones(16), atol=1e-5)
    assert 0 < (full - low).abs().max() < 5e-3  # bfloat16 rounding in the trunk, nothing more
    grad = torch.autograd.grad(set_precision(model, "bf16")(x.requires_grad_(True)).sum(), x)[0]
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()


def test_a_model_that_overrides_embed_raw_runs_float32_only():
    class Rounded(C2F2):
        def embed_raw(self, x):
            return super().embed_raw(torch.round(x * 3) / 3)

    set_precision(Rounded(), "float32")
    with pytest.raises(BenchmarkError, match="only precision float32"):
        set_precision(Rounded(), "bf16")


def test_precision_is_part_of_the_id_and_float32_ids_are_unchanged():
    base = resolve(CellConfig("digits", "nt", preset="smoke", threads=1))
    low = resolve(CellConfig("digits", "nt", preset="smoke", threads=1, precision="bf16"))
    assert "precision" not in base.train_payload()  # float32 cells keep the ids stored before the option
    assert low.train_payload()["precision"] == "bf16"
    assert low.train_id != base.train_id and low.cell_id != base.cell_id


def test_cells_stored_before_the_column_read_as_float32():
    from benchmark.store import load_results

    frame = load_results(ROOT / "results")
    assert len(frame) and set(frame["precision"]) == {"float32"}


def test_an_unknown_precision_is_one_line_exit_2(capsys, tmp_path):
    code = main(["train", "--precision", "float64", "--results", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "float32, bf16" in err


@pytest.mark.slow
def test_a_bf16_cell_trains_attacks_and_records_its_precision(tmp_path):
    from benchmark.cell import run_cell

    out = run_cell(CellConfig("digits", "nt", preset="smoke", threads=1, precision="bf16",
                              attacks=("ca+", "es")), tmp_path, progress=False)
    rows = out.rows
    assert set(rows["precision"]) == {"bf16"}
    r1 = rows[(rows["attack"] == "benign") & (rows["metric"] == "R@1")]["value"].iloc[0]
    assert r1 > 0.5
    assert out.trained.model.precision == "bf16"
