"""What every ranking attack shares: the clean gallery and the ``Attack`` interface.

An attack is a small class with three parts (REFERENCE §1–§2):

* ``select`` — what it aims at (targets, candidates), chosen once on the CLEAN embeddings of the
  batch with a seeded generator, so a re-run reproduces the same numbers;
* ``loss`` — a scalar to MINIMISE, given the normalised embeddings of the perturbed batch; the one
  shared PGD loop (``benchmark.pgd.pgd``) does the rest;
* ``measure`` — what it reports, one value per query for each key of ``metrics``, so the runner
  averages over queries (REFERENCE §1.1 averages per-batch means; we do not, SPEC §4).

Every attack is called the same way and its ``repr`` lists all its hyper-parameters, in the
manner of torchattacks; the repr is recorded with the results.

Convention: the queries (or candidates) are test images, and the gallery is the whole test split
embedded once, so query ``i`` of the test split IS gallery item ``i``. "Self" is therefore masked
by index. RobRank masks the argmin of the clean distance row instead; the two agree except when a
query has an exact duplicate in the test split, where masking by index is the correct one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from benchmark.distances import gallery_distances
from benchmark.errors import BenchmarkError
from benchmark.shrinkage import embedding_spread

# Rows of the gallery distance matrix computed at once when filling a cache (bounds memory).
CHUNK_ROWS = 1024
def neighbourhood_size(n_gallery: int, fraction: float = 0.01) -> int:
    """k for the "top 1 %" neighbourhood of CA−/QA−: max(1, int(fraction · N))."""
    return max(1, int(fraction * n_gallery))


@dataclass
class Gallery:
    """The clean gallery: L2-normalised embeddings of the whole test split, computed ONCE per model.

    ``embeddings[i]`` is the clean embedding of test image ``i`` and ``labels[i]`` its label. The
    caller embeds the split once and every attack reuses it; nothing here calls the model.
    Things several attacks need (the clean nearest neighbours of a query, self excluded) are
    computed lazily, in chunks, for the queried indices only, and cached on this object.
    """

    embeddings: torch.Tensor
    labels: torch.Tensor
    _sq_norms: torch.Tensor | None = field(default=None, init=False, repr=False)
    _nearest: torch.Tensor | None = field(default=None, init=False, repr=False)
    _nearest_known: torch.Tensor | None = field(default=None, init=False, repr=False)
    _centre: torch.Tensor | None = field(default=None, init=False, repr=False)
    _spread: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.embeddings.dim() != 2:
            raise BenchmarkError(f"gallery embeddings must be N×D, got shape {tuple(self.embeddings.shape)}")
        if len(self.labels) != len(self.embeddings):
            raise BenchmarkError(f"gallery has {len(self.embeddings)} embeddings but {len(self.labels)} labels")
        if len(self.embeddings) < 2:
            raise BenchmarkError("the gallery needs at least two items (each query is ranked against the others)")
        self.embeddings = self.embeddings.detach()
        self.labels = self.labels.to(self.embeddings.device).long()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        return self.embeddings.device

    @property
    def sq_norms(self) -> torch.Tensor:
        if self._sq_norms is None:
            self._sq_norms = self.embeddings.double().pow(2).sum(dim=1)
        return self._sq_norms

    @property
    def centre(self) -> torch.Tensor:
        """The mean clean gallery embedding (float64): the origin of the scale-free cosine."""
        if self._centre is None:
            self._centre = self.embeddings.double().mean(dim=0)
        return self._centre

    @property
    def spread(self) -> float:
        """The clean gallery's mean pairwise distance (``benchmark.shrinkage.embedding_spread``):
        the unit of the scale-free embedding shift. Computed once, in float64."""
        if self._spread is None:
            self._spread = embedding_spread(self.embeddings)["mean_distance"]
        return self._spread

    def distances(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[B, N] distances from ``embeddings`` to every gallery item (differentiable)."""
        return gallery_distances(embeddings, self.embeddings, self.sq_norms)

    def distances_without_self(self, embeddings: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Like :meth:`distances`, with each row's own gallery item (``index``) set to +inf."""
        dist = self.distances(embeddings)
        return mask_self(dist, index)

    def nearest(self, index: torch.Tensor, k: int) -> torch.Tensor:
        """[B, k] indices of the k nearest clean gallery items to clean item ``index``, self excluded,
        nearest first. Cached per gallery item, so attacks sharing queries compute them once."""
        n = len(self)
        if not 1 <= k < n:
            raise BenchmarkError(f"asked for {k} nearest neighbours in a gallery of {n} items; accepted: 1..{n - 1}")
        index = index.to(self.device)
        if self._nearest is None or self._nearest.shape[1] < k:
            width = min(n - 1, max(k, neighbourhood_size(n), 4))
            self._nearest = torch.full((n, width), -1, dtype=torch.long, device=self.device)
            self._nearest_known = torch.zeros(n, dtype=torch.bool, device=self.device)
        missing = torch.unique(index[~self._nearest_known[index]])
        width = self._nearest.shape[1]
        for start in range(0, len(missing), CHUNK_ROWS):
            rows = missing[start:start + CHUNK_ROWS]
            with torch.no_grad():
                dist = self.distances_without_self(self.embeddings[rows], rows)
                self._nearest[rows] = dist.topk(width, dim=1, largest=False).indices
            self._nearest_known[rows] = True
        return self._nearest[index, :k]

    def clean_recall_at_1(self, index: torch.Tensor) -> torch.Tensor:
        """Per query: 100 if the clean top-1 (self excluded) has the query's label, else 0."""
        top1 = self.nearest(index, 1)[:, 0]
        return (self.labels[top1] == self.labels[index.to(self.device)]).float() * 100.0


def mask_self(dist: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Set ``dist[b, index[b]]`` to +inf (out of place; keeps autograd happy)."""
    self_mask = torch.zeros_like(dist, dtype=torch.bool)
    self_mask[torch.arange(len(index), device=dist.device), index.to(dist.device)] = True
    return dist.masked_fill(self_mask, float("inf"))


def recall_at_1(embeddings: torch.Tensor, index: torch.Tensor, gallery: Gallery) -> torch.Tensor:
    """Per query, in percent: 100 if the nearest gallery item (self masked by index) to
    ``embeddings`` has the query's ground-truth label, else 0."""
    top1 = gallery.distances_without_self(embeddings, index).argmin(dim=1)
    index = index.to(gallery.device)
    return (gallery.labels[top1] == gallery.labels[index]).float() * 100.0


def signed_rank_loss(dist_rows: torch.Tensor, target_distance: torch.Tensor, sign: str) -> torch.Tensor:
    """The hinge every rank attack minimises: mean over (targets, gallery items) of
    relu(d_target − d_j) for ``sign="+"`` (each target ranked above every gallery item) or
    relu(d_j − d_target) for ``"-"`` (below every item), averaged over the batch.

    Shapes as :func:`rank_percentile`: ``target_distance`` [B, W] from each reference point to its
    W targets; ``dist_rows`` [B, W, N] (one row per target: candidate attacks) or [B, N] (shared by
    the targets: query attacks and GTT).
    """
    if dist_rows.dim() == target_distance.dim():
        dist_rows = dist_rows.unsqueeze(1)
    gap = target_distance.unsqueeze(-1) - dist_rows
    if sign == "-":
        gap = -gap
    return torch.relu(gap).mean()


def rank_percentile(dist_rows: torch.Tensor, target_distance: torch.Tensor) -> torch.Tensor:
    """Percent of gallery items strictly closer than each target, averaged over the targets.

    ``target_distance`` is [B, W]: the distance from a reference point to each of its W targets.
    ``dist_rows`` holds the distances from the same reference point to every gallery item,
    either one row per target, [B, W, N] (candidate attacks: W different queries), or one row
    shared by all targets, [B, N] (query attacks). The result is [B] in percent (0 = first).
    """
    if dist_rows.dim() == target_distance.dim():
        dist_rows = dist_rows.unsqueeze(1)
    closer = (dist_rows < target_distance.unsqueeze(-1)).sum(dim=-1)
    return closer.float().mean(dim=-1) * (100.0 / dist_rows.shape[-1])


@dataclass(frozen=True)
class MetricSpec:
    """How one reported value is shown: declared once by its attack, stored with every row, and
    read back by the leaderboard (which keeps no table of labels or arrows of its own).

    ``higher_is_better`` is the direction that means MORE ROBUST (None: unknown, e.g. a plugin
    attack that does not say); ``decimals`` the precision it is printed with.
    """

    label: str
    higher_is_better: bool | None
    meaning: str
    decimals: int = 1

    @property
    def direction(self) -> str:
        """``higher``, ``lower`` or ``""`` (unknown), as stored in the rows."""
        return "" if self.higher_is_better is None else ("higher" if self.higher_is_better else "lower")


class Attack:
    """One ranking attack: selection on clean embeddings, a loss to minimise, per-query metrics.

    The perturbed images are always the test images at ``index`` (the queries, or for CA the
    candidates). Subclasses set ``metrics`` (the keys ``measure`` returns, in the units of
    ``benchmark.robustness_scores``) with a :class:`MetricSpec` for each in ``metric_specs``, and implement
    the three methods. ``measure`` applied to the clean embeddings ``gallery.embeddings[index]``
    gives the "before" values ARS needs.
    """

    metrics: ClassVar[tuple[str, ...]] = ()
    metric_specs: ClassVar[dict[str, MetricSpec]] = {}
    registry_name: ClassVar[str]
    # Implementation version: part of the cell id. Bump it with any change that changes numbers
    # (tests/test_versions.py fails when a built-in's code changes while its version does not).
    version: ClassVar[int] = 2

    @property
    def name(self) -> str:
        return getattr(type(self), "registry_name", type(self).__name__.lower())

    def spec(self, metric: str) -> MetricSpec:
        """The declared spec of ``metric``; an undeclared one is shown under its key, direction unknown."""
        declared = self.metric_specs.get(metric)
        if declared is not None:
            return declared
        return MetricSpec(metric, None, f"plugin attack {metric}", 2)

    def hyperparameters(self) -> dict[str, object]:
        """Every setting that changes what the attack does (shown by ``repr``)."""
        return {}

    def __repr__(self) -> str:
        params = ", ".join(f"{key}={value!r}" for key, value in self.hyperparameters().items())
        return f"{self.name}({params})"

    def select(self, index: torch.Tensor, gallery: Gallery, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Targets/candidates for the queries ``index``, from CLEAN embeddings (seeded)."""
        return {}

    def loss(self, emb: torch.Tensor, index: torch.Tensor, selection: dict[str, torch.Tensor],
             gallery: Gallery) -> torch.Tensor:
        """Scalar to minimise; ``emb`` = normalised embeddings of the perturbed batch."""
        raise NotImplementedError

    def measure(self, emb: torch.Tensor, index: torch.Tensor, selection: dict[str, torch.Tensor],
                gallery: Gallery) -> dict[str, torch.Tensor]:
        """Per-query values for each key of ``metrics`` (a [B] tensor each)."""
        raise NotImplementedError


def random_indices(shape: tuple[int, ...], high: int, generator: torch.Generator,
                   device: torch.device) -> torch.Tensor:
    """Uniform integers in [0, high), drawn on the CPU generator (device-independent), on ``device``."""
    return torch.randint(high, shape, generator=generator).to(device)


def random_subset_columns(width: int, rows: int, take: int, generator: torch.Generator,
                          device: torch.device) -> torch.Tensor:
    """For each row, ``take`` distinct column positions in [0, width), a random permutation's head."""
    return torch.rand(rows, width, generator=generator).argsort(dim=1)[:, :take].to(device)


def check_count(name: str, value: int) -> int:
    if int(value) != value or value < 1:
        raise BenchmarkError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
