"""Degenerate embeddings: shrinkage is measured, the ranked score ignores it, a float32 index shows it.

The central check: natural training whose embeddings are squeezed, at evaluation, into a cap half
a thousandth wide (x ↦ normalise(e(x) + c·u), which keeps every ranking) must score the same ranked
ERS as plain natural training, be flagged *shrunk*, and break in a float32 faiss index, while
RobRank's absolute ES:D hands it nearly all of its 10 points.
"""

from __future__ import annotations

import math
import textwrap

import pytest
import torch
import torch.nn.functional as F

from attacks.base import Gallery
from attacks.embshift import EmbeddingShiftAttack
from attacks.tma import TargetedMismatchAttack
from benchmark import store
from benchmark.cell import CellConfig
from benchmark.deployment import index_recall_at_1, index_recalls
from benchmark.errors import BenchmarkError
from benchmark.plugins import load_builtins, load_plugin_file, restore_registries, snapshot_registries
from benchmark.report import build_boards
from benchmark.report.tables import cell_table
from benchmark.retrieval_metrics import recall_at_k
from benchmark.shrinkage import SHRUNK_FRACTION, embedding_spread
from benchmark.tasks import run_and_store_cell
from benchmark.telemetry import ENTANGLED_SEPARABILITY, training_summary

CAP = 3000.0  # spread ≈ 5e-4, GA's measured spread on digits

# A model plugin: c2f2 whose evaluation-mode embeddings are mapped into a tiny cap around a fixed
# direction u. Training mode is plain c2f2 (and u comes from its own generator), so natural
# training produces exactly the weights it produces for c2f2; only what evaluation sees changes.
CAPPED_MODEL = f'''
import torch
import torch.nn.functional as F
from benchmark.models import C2F2
from benchmark.registry import MODELS


@MODELS.register("c2f2-capped", description="c2f2 whose eval embeddings are squeezed into a tiny cap")
class CappedC2F2(C2F2):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        direction = torch.randn(self.embedding_dim, generator=torch.Generator().manual_seed(7))
        self.register_buffer("direction", F.normalize(direction, dim=0), persistent=False)

    def forward(self, x):
        embedding = super().forward(x)
        if self.training:
            return embedding
        return F.normalize(embedding + {CAP} * self.direction, dim=-1)
'''


def clustered(n_classes: int = 50, per_class: int = 10, dim: int = 512, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    centres = torch.randn(n_classes, dim, generator=generator)
    embeddings = F.normalize(centres[labels] + 0.6 * torch.randn(len(labels), dim, generator=generator), dim=1)
    direction = F.normalize(torch.randn(dim, generator=generator), dim=0)
    return embeddings, labels, direction


def capped(embeddings: torch.Tensor, direction: torch.Tensor, c: float = CAP) -> torch.Tensor:
    return F.normalize(embeddings + c * direction, dim=1)


def test_spread_is_exact_and_scales_with_the_cap():
    points = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    spread = embedding_spread(points)
    assert spread["mean_distance"] == pytest.approx((3 + 4 + 5) / 3, abs=1e-12)
    assert spread["median_nn_distance"] == pytest.approx(3.0)  # nearest: 3, 3, 4
    embeddings, _, direction = clustered()
    plain, shrunk = embedding_spread(embeddings), embedding_spread(capped(embeddings, direction))
    # the cap divides every distance by about c (the component along u is lost)
    assert shrunk["mean_distance"] * CAP == pytest.approx(plain["mean_distance"], rel=0.05)
    assert shrunk["median_nn_distance"] * CAP == pytest.approx(plain["median_nn_distance"], rel=0.05)
    assert shrunk["centroid_norm"] > 0.999999 and plain["centroid_norm"] < 0.5
    with pytest.raises(BenchmarkError, match="at least 2"):
        embedding_spread(embeddings[:1])


def test_subsampled_spread_is_an_estimate_close_to_the_exact_one():
    embeddings, _, _ = clustered(n_classes=60, per_class=10)
    exact = embedding_spread(embeddings)["mean_distance"]
    estimate = embedding_spread(embeddings, max_items=300, seed=1)["mean_distance"]
    assert estimate == pytest.approx(exact, rel=0.03)


def test_float32_index_breaks_on_a_tiny_cap_where_exact_retrieval_does_not():
    embeddings, labels, direction = clustered()
    shrunk = capped(embeddings, direction)
    exact = recall_at_k(shrunk, labels)["R@1"]
    assert exact == pytest.approx(recall_at_k(embeddings, labels)["R@1"], abs=0.02)
    assert index_recall_at_1(embeddings, labels, "faiss-f32") == pytest.approx(
        recall_at_k(embeddings, labels)["R@1"], abs=0.02)
    assert index_recall_at_1(shrunk, labels, "faiss-f32") < exact - 0.3
    recalls = index_recalls(shrunk, labels)
    assert set(recalls) == {"R@1:faiss-f32", "R@1:faiss-f16", "R@1:faiss-ip32"}
    with pytest.raises(BenchmarkError, match="accepted: faiss-f32"):
        index_recall_at_1(embeddings, labels, "faiss-hnsw")


def test_scale_free_attack_values_do_not_change_under_the_cap():
    """ES:D-rel and TMA-centred measured on the same displacement in plain and capped coordinates agree;
    ES:D and TMA do not."""
    embeddings, labels, direction = clustered()
    plain, shrunk = Gallery(embeddings, labels), Gallery(capped(embeddings, direction), labels)
    index = torch.arange(10)
    moved = F.normalize(embeddings[index] + 0.3 * embeddings[index + 50], dim=1)  # an "attacked" query
    selection = {"target": torch.arange(100, 110)}
    values = {}
    for name, gallery, emb in (("plain", plain, moved), ("capped", shrunk, capped(moved, direction))):
        values[name] = {**EmbeddingShiftAttack().measure(emb, index, {}, gallery),
                        **TargetedMismatchAttack().measure(emb, index, selection, gallery)}
    for key in ("ES:D-rel", "TMA-centred"):
        assert values["capped"][key].double().mean() == pytest.approx(float(values["plain"][key].double().mean()),
                                                                      rel=0.05, abs=0.02), key
    assert float(values["capped"]["ES:D"].mean()) < 1e-3 < float(values["plain"]["ES:D"].mean())
    assert float(values["capped"]["TMA"].mean()) > 0.9999
    assert float(values["capped"]["ES:R"].mean()) == float(values["plain"]["ES:R"].mean())


def test_training_summary_keeps_the_two_collapse_signatures_apart():
    # shrinks a hundredfold but stays separable; perturbation starts at step 4
    shrinking = [{"separability": 0.4, "mean_distance": 1.0 / (1 + 10 * i), "x:perturbed": float(i >= 4)}
                 for i in range(40)]
    summary = training_summary(shrinking)
    assert summary["spread_vs_start"] < 0.05 and summary["entangled"] == 0.0
    # separable during the clean warm-up, entangled once perturbations run
    entangling = [{"separability": 0.5 if i < 10 else 0.0, "mean_distance": 1.0, "x:perturbed": float(i >= 10)}
                  for i in range(40)]
    summary = training_summary(entangling)
    assert summary["entangled"] == 1.0 and summary["entangled_separability"] <= ENTANGLED_SEPARABILITY
    assert summary["spread_vs_start"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def nt_and_capped_nt(tmp_path_factory):
    """Smoke NT on digits, and the same weights behind the cap (a model plugin), both stored."""
    results = tmp_path_factory.mktemp("shrinkage") / "results"
    plugin = results.parent / "capped_model.py"
    plugin.write_text(textwrap.dedent(CAPPED_MODEL))
    load_builtins()
    snapshot = snapshot_registries()
    try:
        load_plugin_file(plugin)
        for model in ("c2f2", "c2f2-capped"):
            config = CellConfig(dataset="digits", defense="nt", preset="smoke", model=model)
            run_and_store_cell(config, results, plugins=[str(plugin)], threads=2)
        rows = store.load_results(results)
        telemetry = store.load_telemetry(results)
    finally:
        restore_registries(snapshot)
    capped_ids = set(rows.loc[rows["model"] == "c2f2-capped", "cell_id"])
    rows.loc[rows["cell_id"].isin(capped_ids), "entry"] = "nt-capped"
    telemetry.loc[telemetry["cell_id"].isin(capped_ids), "entry"] = "nt-capped"
    return rows, telemetry


def _cell_values(rows, model: str) -> dict[str, float]:
    cell = rows[(rows["model"] == model) & rows["variant"].isin(["", "adversarial"])]
    return {f"{a}/{m}": float(v) for a, m, v in cell[["attack", "metric", "value"]].itertuples(index=False)}


@pytest.mark.slow
def test_capped_nt_scores_the_ranked_ers_of_nt_and_is_flagged(nt_and_capped_nt):
    rows, telemetry = nt_and_capped_nt
    plain, shrunk = _cell_values(rows, "c2f2"), _cell_values(rows, "c2f2-capped")
    # same weights, same rankings: the exact benign metrics agree
    assert shrunk["benign/R@1"] == pytest.approx(plain["benign/R@1"], abs=0.01)
    # the ranked ERS does not see the cap; RobRank's absolute ES:D rewards it with ~10 points
    assert shrunk["score/ERS"] == pytest.approx(plain["score/ERS"], abs=1.5)
    assert shrunk["score/ERS:RobRank"] - plain["score/ERS:RobRank"] > 5.0
    assert shrunk["es/ES:D"] < 1e-3 and shrunk["es/ES:D-rel"] == pytest.approx(plain["es/ES:D-rel"], rel=0.1)
    # the cap is measured, and a float32 index no longer retrieves
    assert shrunk["benign/spread:mean_distance"] < 1e-3 * plain["benign/spread:mean_distance"] * 2
    assert plain["benign/R@1:faiss-f32"] == pytest.approx(plain["benign/R@1"], abs=0.02)
    assert shrunk["benign/R@1:faiss-f32"] < shrunk["benign/R@1"] - 0.3
    table, _ = cell_table(rows, telemetry)
    by_entry = table.set_index("entry")
    assert by_entry.loc["nt-capped", "shrunk"] == 1.0 and by_entry.loc["nt", "shrunk"] == 0.0
    assert by_entry.loc["nt-capped", "spread_vs_nt"] < SHRUNK_FRACTION
    assert by_entry.loc["nt-capped", "index_breaks"] == 1.0 and by_entry.loc["nt", "index_breaks"] == 0.0


@pytest.mark.slow
def test_board_ranks_by_the_scale_free_ers_and_flags_the_cap(nt_and_capped_nt):
    rows, telemetry = nt_and_capped_nt
    board = build_boards(rows, telemetry, plots=False)[0]
    assert board.ranked_by == "ERS:strong"  # cells get the strong evaluation by default
    labels = [c.label for c in board.columns]
    assert labels[:5] == ["Strong ERS", "ERS (RobRank protocol)", "Drop", "ERS", "ARS"]
    row = next(r for r in board.rows if r.entry == "nt-capped")
    assert row.shrunk.text == "1/1" and row.shrunk.css == "warn"
    index = labels.index("R@1 f32 index")
    assert "(breaks)" in row.cells[index].text
    assert "nt-capped" in board.geometry_findings and "float32" in board.geometry_findings


@pytest.mark.slow
def test_cells_stored_before_the_ranked_ers_show_it_as_robrank(nt_and_capped_nt):
    rows, telemetry = nt_and_capped_nt
    # A cell stored before the ranked ERS (and the strong evaluation) existed: no ERS:RobRank, no
    # strong rows, and its ERS is RobRank's.
    strong = rows["metric"].isin(["ERS:strong", "ERS:RobRank:strong"]) | (rows["variant"] == "strong")
    legacy = rows[~((rows["attack"] == "score") & (rows["metric"] == "ERS:RobRank")) & ~strong].copy()
    robrank = rows[(rows["attack"] == "score") & (rows["metric"] == "ERS:RobRank")].set_index("cell_id")["value"]
    is_ers = (legacy["attack"] == "score") & (legacy["metric"] == "ERS")
    legacy.loc[is_ers, "value"] = legacy.loc[is_ers, "cell_id"].map(robrank).to_numpy()
    board = build_boards(legacy, telemetry, plots=False)[0]
    assert board.ranked_by == "ERS:RobRank"
    assert "fall back" in board.ranking_note
    row = board.rows[0]
    ers_index = [c.key for c in board.columns].index("ERS")
    assert row.cells[ers_index].text == "—" and math.isnan(float("nan"))
