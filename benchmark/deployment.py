"""What a deployed index returns: R@1 through faiss flat indexes, as users search embeddings.

The exact metrics (:mod:`benchmark.retrieval_metrics`) rank in float64. A deployment stores the float32
embeddings in a faiss index and searches a batch of queries at once; for a batch faiss computes
L2 distances through the expansion ‖a‖² + ‖b‖² − 2a·b in float32 (BLAS), which cannot resolve
distances below about 3e-4 between unit vectors (faiss 1.15 takes that path once queries × items
exceed ``faiss.cvar.distance_compute_blas_threshold``, 128 000: the 539-image digits test split and
every larger one). Models that shrink their embeddings into a tiny
cap (:mod:`benchmark.shrinkage`) keep their exact R@1 and lose it here. Each function searches
every test item against the whole test split in one batch, self excluded by index (the item's own
position is dropped from its result list, wherever the index ranked it).

* ``faiss-f32``: ``IndexFlatL2`` on the float32 embeddings (the default flat index);
* ``faiss-f16``: ``IndexScalarQuantizer`` with float16 storage (``QT_fp16``), L2;
* ``faiss-ip32``: ``IndexFlatIP`` on the float32 embeddings (cosine search of unit vectors).
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import BenchmarkError

INDEX_KINDS = ("faiss-f32", "faiss-f16", "faiss-ip32")

# An entry's retrieval "breaks" in an index when the index's R@1 falls this many percentage
# points below the exact R@1 (ties between equally distant items move a few queries at most).
BREAK_POINTS = 2.0


def _index(kind: str, dim: int):
    import faiss

    if kind == "faiss-f32":
        return faiss.IndexFlatL2(dim)
    if kind == "faiss-f16":
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_L2)
    if kind == "faiss-ip32":
        return faiss.IndexFlatIP(dim)
    raise BenchmarkError(f"unknown index kind {kind!r}; accepted: {', '.join(INDEX_KINDS)}")


@torch.no_grad()
def index_recall_at_1(embeddings: torch.Tensor, labels: torch.Tensor, kind: str = "faiss-f32") -> float:
    """R@1 (fraction) of the test split against itself, as a faiss index of ``kind`` returns it.

    Queries without another item of their class are left out, as in :func:`benchmark.retrieval_metrics.recall_at_k`.
    """
    if kind not in INDEX_KINDS:
        raise BenchmarkError(f"unknown index kind {kind!r}; accepted: {', '.join(INDEX_KINDS)}")
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2 or len(embeddings) < 2:
        raise BenchmarkError("index R@1 needs a 2-D tensor of at least 2 embeddings")
    x = np.ascontiguousarray(embeddings.detach().float().cpu().numpy())
    labels_np = torch.as_tensor(labels).cpu().numpy()
    if len(labels_np) != len(x):
        raise BenchmarkError(f"index R@1 got {len(x)} embeddings but {len(labels_np)} labels")
    index = _index(kind, x.shape[1])
    if not index.is_trained:
        index.train(x)
    index.add(x)
    _, found = index.search(x, 2)  # one batch: the path a deployment takes
    own = np.arange(len(x))[:, None]
    # The first result that is not the query itself (if the index ranked itself second or not at
    # all, the first result is another item).
    first_other = np.where(found[:, 0] == own[:, 0], found[:, 1], found[:, 0])
    counts = np.bincount(labels_np - labels_np.min()) if labels_np.size else np.array([])
    answerable = counts[labels_np - labels_np.min()] > 1
    if not answerable.any():
        raise BenchmarkError("no query has another item of its class; index R@1 is undefined")
    valid = first_other >= 0
    hits = valid & (labels_np[np.clip(first_other, 0, None)] == labels_np)
    return float(hits[answerable].mean())


def index_recalls(embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``R@1:<kind>`` for every kind of :data:`INDEX_KINDS` (fractions)."""
    return {f"R@1:{kind}": index_recall_at_1(embeddings, labels, kind) for kind in INDEX_KINDS}
