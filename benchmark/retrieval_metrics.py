"""Benign retrieval metrics on a gallery where every item is also a query (SPEC §5, REFERENCE §6).

Protocol: each item of the split queries the whole split; the query itself is removed from its
ranking **by index** (its own position), so a duplicate of the query at distance 0 still counts
as a neighbour. Distances are exact Euclidean distances (``cdist`` in float64,
:func:`benchmark.distances.float64_distances`); unit-norm embeddings
are expected but not assumed.

Ties are broken deterministically: the ranking is a stable sort of the distances, so among
equally distant gallery items the one with the smaller gallery index ranks first.

Queries with no other item of their class have no correct answer. They are left out of the
averages of R@k, mAP, mAP@R and mAP@10 (the reference counts them as misses for R@k; with the
standard datasets there are no such queries, so the two agree there). NMI uses every item.

Deliberate differences from the reference (RobRank ``robrank/utils.py``):
* self is excluded by index rather than by dropping the first sorted element (which may be a
  different item when there are exact duplicates);
* ``mAP@R`` here is the class-size R of Musgrave et al.; RobRank's fixed-10 variant, which it
  also calls "mAP@R", is reported as ``mAP@10``;
* metrics are averaged over queries, not as a mean of per-batch means.

The work is done in chunks of ``chunk_size`` queries against the full gallery, so memory grows
with ``chunk_size × N`` (about 20 bytes per entry at peak: distances, the sort's values and
indices, boolean masks; ~1.2 GB for 1024 × 60k) and a 60k gallery never materialises an N × N
matrix. For a train-split R@1 alone, :func:`recall_at_k` gives the same numbers without sorting.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .distances import float64_distances
from .errors import BenchmarkError

MAP_AT_10_CUTOFF = 10  # RobRank's fixed "R" for its mAP@R column


def _check_inputs(embeddings: torch.Tensor, labels: torch.Tensor, ks: Iterable[int], chunk_size: int
                  ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
        raise BenchmarkError(f"embeddings must be a 2-D tensor [N, D], got "
                             f"{getattr(embeddings, 'shape', type(embeddings).__name__)}")
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.numel() != embeddings.shape[0]:
        raise BenchmarkError(f"labels must be a 1-D tensor with one label per embedding "
                             f"({embeddings.shape[0]}), got shape {tuple(labels.shape)}")
    if embeddings.shape[0] < 2:
        raise BenchmarkError(f"retrieval needs at least 2 items (a query and one other), got {embeddings.shape[0]}")
    if labels.is_floating_point() or labels.is_complex():
        raise BenchmarkError(f"labels must be integers, got dtype {labels.dtype}")
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks):
        raise BenchmarkError(f"ks must be a non-empty list of positive integers, got {ks}")
    if int(chunk_size) < 1:
        raise BenchmarkError(f"chunk_size must be a positive integer, got {chunk_size}")
    embeddings = embeddings.detach()
    if not embeddings.is_floating_point():
        embeddings = embeddings.float()
    if not torch.isfinite(embeddings).all():
        raise BenchmarkError("embeddings contain NaN or infinite values; retrieval metrics need finite vectors")
    return embeddings, labels.to(embeddings.device), ks


def _chunks(n: int, chunk_size: int) -> Iterable[torch.Tensor]:
    for start in range(0, n, chunk_size):
        yield torch.arange(start, min(start + chunk_size, n))


def _no_answer_error() -> BenchmarkError:
    return BenchmarkError("no query has another item of its class in the gallery, so retrieval metrics "
                          "are undefined; every class needs at least 2 items")


@torch.no_grad()
def recall_at_k(embeddings: torch.Tensor, labels: torch.Tensor, *, ks: Sequence[int] = (1,),
                chunk_size: int = 1024) -> dict[str, float]:
    """R@k (fractions) without sorting the gallery: cheap enough for a 60k training split.

    The 0-based rank of the first correct item is the number of non-self items strictly closer
    than the nearest same-class item, plus the equally distant ones with a smaller index (the
    stable-sort tie rule). A query is a hit at k when that rank is below k. This agrees exactly
    with the R@k of :func:`retrieval_metrics`; queries without a same-class item are left out.
    """
    embeddings, labels, ks = _check_inputs(embeddings, labels, ks, chunk_size)
    n = embeddings.shape[0]
    gallery_index = torch.arange(n, device=embeddings.device)
    hits = {k: 0 for k in ks}
    answerable = 0
    for query_index in _chunks(n, int(chunk_size)):
        query_index = query_index.to(embeddings.device)
        dist = float64_distances(embeddings[query_index], embeddings)
        not_self = gallery_index[None, :] != query_index[:, None]
        positive = (labels[None, :] == labels[query_index][:, None]) & not_self
        has_positive = positive.any(dim=1)
        nearest_positive = torch.where(positive, dist, torch.full_like(dist, float("inf"))).min(dim=1).values
        at_nearest = dist == nearest_positive[:, None]
        # argmax returns the first maximal position: the smallest index among the tied positives
        first_positive = (positive & at_nearest).to(torch.int8).argmax(dim=1)
        rank = ((dist < nearest_positive[:, None]) & not_self).sum(dim=1)
        rank += (at_nearest & not_self & (gallery_index[None, :] < first_positive[:, None])).sum(dim=1)
        answerable += int(has_positive.sum())
        for k in ks:
            hits[k] += int(((rank < k) & has_positive).sum())
    if answerable == 0:
        raise _no_answer_error()
    return {f"R@{k}": hits[k] / answerable for k in ks}


def _chunk_ranking_scores(dist: torch.Tensor, query_index: torch.Tensor, query_labels: torch.Tensor,
                          labels: torch.Tensor, ks: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Per-query R@k hits, AP, AP@R and AP@10 for one chunk (NaN where there is no correct item)."""
    num_queries = dist.shape[0]
    order = torch.sort(dist, dim=1, stable=True).indices
    same_class = labels[None, :] == query_labels[:, None]
    same_class[torch.arange(num_queries, device=dist.device), query_index] = False  # self by index
    relevant = torch.gather(same_class, 1, order)  # in ranking order, self still holding a slot
    self_position = (order == query_index[:, None]).to(torch.int8).argmax(dim=1)
    num_relevant = relevant.sum(dim=1)

    # Work on the relevant positions only: their number is Σ R, usually far below chunk × N.
    rows, cols = relevant.nonzero(as_tuple=True)  # row-major, so each row's hits are in rank order
    cols = cols - (cols > self_position[rows]).long()  # 0-based rank once self is removed
    first_of_row = torch.cumsum(num_relevant, 0) - num_relevant
    hit_number = torch.arange(rows.numel(), device=rows.device) - first_of_row[rows] + 1  # r
    precision = hit_number.double() / (cols + 1).double()  # P@k_r = r / k_r

    answerable = num_relevant > 0
    first_hit_rank = torch.full((num_queries,), dist.shape[1], dtype=torch.long, device=dist.device)
    first_hit_rank[answerable] = cols[first_of_row[answerable]]
    scores: dict[str, torch.Tensor] = {f"R@{k}": (first_hit_rank < k).double() for k in ks}
    zeros = torch.zeros(num_queries, dtype=torch.float64, device=dist.device)
    denominator = num_relevant.double()
    scores["mAP"] = zeros.index_add(0, rows, precision) / denominator
    within_r = (cols < num_relevant[rows]).double()
    scores["mAP@R"] = zeros.index_add(0, rows, precision * within_r) / denominator
    within_10 = (cols < MAP_AT_10_CUTOFF).double()
    scores["mAP@10"] = zeros.index_add(0, rows, precision * within_10) / MAP_AT_10_CUTOFF
    return {name: torch.where(answerable, value, torch.full_like(value, float("nan")))
            for name, value in scores.items()}


def kmeans_assignments(embeddings: np.ndarray, num_clusters: int, seed: int = 0, restarts: int = 1) -> np.ndarray:
    """Cluster index of every row: faiss k-means, each point then assigned to its nearest centroid.

    ``restarts`` > 1 runs k-means from that many random initialisations and keeps the lowest
    objective (faiss ``nredo``). The default 1 is the reference's faiss default; note that a
    single random initialisation often merges well-separated clusters, so NMI is noisy.
    Falls back to scikit-learn's KMeans when faiss cannot be imported (as the reference does).
    """
    x = np.asarray(embeddings, dtype=np.float64)
    # k-means is unchanged by translation and uniform scaling; centring and scaling to unit spread
    # keeps faiss's float32 distance expansion exact enough for embeddings shrunk into a tiny cap.
    x = x - x.mean(axis=0, keepdims=True)
    spread = float(np.sqrt((x ** 2).sum(axis=1).mean()))
    x = np.ascontiguousarray(x / spread if spread > 0 else x, dtype=np.float32)
    if not 1 <= num_clusters <= x.shape[0]:
        raise BenchmarkError(f"NMI k-means needs 1 <= clusters <= number of items ({x.shape[0]}), got {num_clusters}")
    if int(restarts) < 1:
        raise BenchmarkError(f"k-means restarts must be a positive integer, got {restarts}")
    try:
        import faiss
    except ImportError:
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=num_clusters, random_state=seed, n_init=int(restarts)).fit(x).predict(x)
    kmeans = faiss.Kmeans(x.shape[1], num_clusters, seed=seed, nredo=int(restarts), verbose=False)
    kmeans.train(x)
    _, assignment = kmeans.index.search(x, 1)
    return assignment[:, 0]


def nmi_score(embeddings: torch.Tensor, labels: torch.Tensor, *, num_clusters: int | None = None,
              seed: int = 0, restarts: int = 1) -> float:
    """NMI between the labels and a seeded k-means clustering (k = number of classes by default)."""
    from sklearn.metrics import normalized_mutual_info_score

    labels_np = torch.as_tensor(labels).cpu().numpy()
    k = int(num_clusters) if num_clusters is not None else int(np.unique(labels_np).size)
    assignment = kmeans_assignments(embeddings.detach().float().cpu().numpy(), k, seed=seed, restarts=restarts)
    return float(normalized_mutual_info_score(labels_np, assignment))


@torch.no_grad()
def retrieval_metrics(embeddings: torch.Tensor, labels: torch.Tensor, *, ks: Sequence[int] = (1, 2),
                      chunk_size: int = 1024, nmi: bool = True, nmi_clusters: int | None = None,
                      seed: int = 0, nmi_restarts: int = 1) -> dict[str, float]:
    """Benign retrieval metrics of a split against itself, as fractions in [0, 1].

    Keys: ``R@k`` for k in ``ks``; ``mAP`` (AP over the whole ranking, (1/R)·Σ_r r/k_r with R the
    number of same-class items and k_r the rank of the r-th one); ``mAP@R`` (Musgrave et al.:
    (1/R)·Σ_{i≤R, rel_i} P@i); ``mAP@10`` (RobRank's fixed-10 variant: (1/10)·Σ_{i≤10, rel_i} P@i);
    and ``NMI`` when ``nmi`` (k-means with ``nmi_clusters`` or the number of distinct labels
    clusters, seeded by ``seed``, best of ``nmi_restarts`` initialisations). Each metric is the mean over queries that have at least one
    other same-class item (see the module docstring for self-exclusion and tie rules).
    """
    embeddings, labels, ks = _check_inputs(embeddings, labels, ks, chunk_size)
    n = embeddings.shape[0]
    names = [f"R@{k}" for k in ks] + ["mAP", "mAP@R", "mAP@10"]
    totals = dict.fromkeys(names, 0.0)
    answerable = 0
    for query_index in _chunks(n, int(chunk_size)):
        query_index = query_index.to(embeddings.device)
        dist = float64_distances(embeddings[query_index], embeddings)
        per_query = _chunk_ranking_scores(dist, query_index, labels[query_index], labels, ks)
        valid = ~torch.isnan(per_query["mAP"])
        answerable += int(valid.sum())
        for name in names:
            totals[name] += float(per_query[name][valid].sum())
    if answerable == 0:
        raise _no_answer_error()
    result = {name: totals[name] / answerable for name in names}
    if nmi:
        result["NMI"] = nmi_score(embeddings, labels, num_clusters=nmi_clusters, seed=seed, restarts=nmi_restarts)
    return result
