"""Query attacks QA+ and QA− (REFERENCE §2.2): perturb a query so that M chosen gallery
candidates rise to the top (QA+) or sink out of the top (QA−) of its ranking."""

from __future__ import annotations

import torch

from benchmark.registry import ATTACKS

from .base import (
    Attack,
    Gallery,
    MetricSpec,
    check_count,
    neighbourhood_size,
    random_indices,
    random_subset_columns,
    rank_percentile,
    signed_rank_loss,
)


class QueryAttack(Attack):
    """Query attack with M candidates taken from the clean gallery.

    The perturbed images are the queries q̃. With A_m = d(q̃, c_m) and B_j = d(x_j, q̃) over the
    whole clean gallery (which holds the query's clean self) the loss is
    :func:`~attacks.base.signed_rank_loss`. Reported: the 0-based rank of each c_m in the ranking of q̃ over
    the gallery (items strictly closer), divided by N, averaged over m, in percent: ≈ 50
    before QA+, ≈ 1 before QA−.

    Selection: QA+ draws M candidates uniformly with replacement from the whole gallery; QA−
    takes the first M of a random permutation of the query's k = max(1, int(0.01·N)) nearest
    clean neighbours (self excluded). Deliberate differences from RobRank: the selection is
    seeded; self is excluded by index; k ≥ 1; the metric is averaged over queries.
    """

    sign: str = "+"

    def __init__(self, M: int = 1, neighbourhood: float = 0.01):
        self.M = check_count("M", M)
        self.neighbourhood = float(neighbourhood)

    @property
    def metric(self) -> str:
        return f"QA{self.sign}"

    def hyperparameters(self) -> dict[str, object]:
        params: dict[str, object] = {"pm": self.sign, "M": self.M}
        if self.sign == "-":
            params["neighbourhood"] = self.neighbourhood
        return params

    def select(self, index: torch.Tensor, gallery: Gallery, generator: torch.Generator) -> dict[str, torch.Tensor]:
        index = index.to(gallery.device)
        if self.sign == "+":
            candidates = random_indices((len(index), self.M), len(gallery), generator, gallery.device)
        else:
            k = neighbourhood_size(len(gallery), self.neighbourhood)
            take = min(self.M, k)
            columns = random_subset_columns(k, len(index), take, generator, gallery.device)
            candidates = gallery.nearest(index, k).gather(1, columns)
        return {"candidates": candidates}

    def loss(self, emb, index, selection, gallery) -> torch.Tensor:
        dist = gallery.distances(emb)
        return signed_rank_loss(dist, dist.gather(1, selection["candidates"]), self.sign)

    def measure(self, emb, index, selection, gallery) -> dict[str, torch.Tensor]:
        dist = gallery.distances(emb)
        return {self.metric: rank_percentile(dist, dist.gather(1, selection["candidates"]))}


@ATTACKS.register("qa+", aliases=("QA:pm=+:M=1", "qa-plus", "qaplus"),
                  description="query attack QA+: raise a random gallery candidate to the top of a query's ranking")
class QueryAttackPlus(QueryAttack):
    __doc__ = QueryAttack.__doc__
    sign = "+"
    metrics = ("QA+",)
    metric_specs = {"QA+": MetricSpec("QA+", True, "query attack (push up): mean rank percentile of the chosen candidate, %")}


@ATTACKS.register("qa-", aliases=("QA:pm=-:M=1", "qa-minus", "qaminus"),
                  description="query attack QA-: sink a top-1% neighbour out of a query's ranking")
class QueryAttackMinus(QueryAttack):
    __doc__ = QueryAttack.__doc__
    sign = "-"
    metrics = ("QA-",)
    metric_specs = {"QA-": MetricSpec("QA−", False, "query attack (push down): mean rank percentile of the chosen candidate, %")}
