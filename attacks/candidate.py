"""Candidate attacks CA+ and CA− (REFERENCE §2.1): perturb a gallery candidate so that it rises
to the top (CA+) or sinks out of the top (CA−) of the ranking for W fixed clean queries."""

from __future__ import annotations

import torch

from benchmark.distances import expanded_distances
from benchmark.registry import ATTACKS

from .base import (
    Attack,
    Gallery,
    MetricSpec,
    check_count,
    neighbourhood_size,
    random_indices,
    rank_percentile,
    signed_rank_loss,
)


class CandidateAttack(Attack):
    """Candidate attack with W queries taken from the clean gallery.

    The perturbed images are the candidates ``c``; the queries ``q_w`` are clean gallery
    embeddings. With A_w = d(ĉ, q_w) and B_jw = d(x_j, q_w) the loss is the mean over (j, w) of
    relu(A_w − B_jw) for CA+ (rank ĉ above every gallery item) and relu(B_jw − A_w) for CA−,
    averaged over the batch. Reported: the rank percentile of ĉ for its queries, in percent,
    against the whole clean gallery (which still holds the candidate's clean self): ≈ 50 before
    CA+, ≈ 1 before CA−.

    Selection: CA+ draws W queries uniformly with replacement from the whole gallery; CA− draws
    W with replacement from the candidate's k = max(1, int(0.01·N)) nearest clean neighbours.
    Deliberate differences from RobRank: the selection is seeded; self is excluded by index
    (RobRank drops the first of the k+1 nearest); k is at least 1 on tiny galleries; the metric
    is averaged over candidates, not per batch.
    """

    sign: str = "+"

    def __init__(self, W: int = 1, neighbourhood: float = 0.01):
        self.W = check_count("W", W)
        self.neighbourhood = float(neighbourhood)

    @property
    def metric(self) -> str:
        return f"CA{self.sign}"

    def hyperparameters(self) -> dict[str, object]:
        params: dict[str, object] = {"pm": self.sign, "W": self.W}
        if self.sign == "-":
            params["neighbourhood"] = self.neighbourhood
        return params

    def select(self, index: torch.Tensor, gallery: Gallery, generator: torch.Generator) -> dict[str, torch.Tensor]:
        index = index.to(gallery.device)
        if self.sign == "+":
            queries = random_indices((len(index), self.W), len(gallery), generator, gallery.device)
        else:
            k = neighbourhood_size(len(gallery), self.neighbourhood)
            neighbours = gallery.nearest(index, k)
            pick = random_indices((len(index), self.W), k, generator, gallery.device)
            queries = neighbours.gather(1, pick)
        query_emb = gallery.embeddings[queries]  # [B, W, D]
        # Distances from each query to the whole clean gallery: fixed during the attack.
        query_to_gallery = gallery.distances(query_emb.flatten(0, 1)).view(len(index), self.W, len(gallery))
        return {"queries": queries, "query_to_gallery": query_to_gallery}

    def retarget(self, selection: dict[str, torch.Tensor], gallery: Gallery) -> dict[str, torch.Tensor]:
        """The same queries, with their distances to ``gallery`` (another model's clean gallery of the
        same split): how a transfer attack crafted on a surrogate is scored on the attacked model."""
        queries = selection["queries"].to(gallery.device)
        rows, width = queries.shape
        query_to_gallery = gallery.distances(gallery.embeddings[queries].flatten(0, 1)).view(rows, width, len(gallery))
        return {"queries": queries, "query_to_gallery": query_to_gallery}

    def _candidate_to_query(self, emb: torch.Tensor, selection: dict[str, torch.Tensor],
                            gallery: Gallery) -> torch.Tensor:
        query_emb = gallery.embeddings[selection["queries"]].double()  # [B, W, D]
        emb = emb.double()
        # The same expansion (and float64) as gallery.distances so that "strictly closer" compares like with like.
        return expanded_distances(emb.pow(2).sum(-1, keepdim=True), query_emb.pow(2).sum(-1),
                                  2.0 * torch.einsum("bd,bwd->bw", emb, query_emb))  # [B, W]

    def loss(self, emb, index, selection, gallery) -> torch.Tensor:
        return signed_rank_loss(selection["query_to_gallery"], self._candidate_to_query(emb, selection, gallery),
                                self.sign)

    def measure(self, emb, index, selection, gallery) -> dict[str, torch.Tensor]:
        a = self._candidate_to_query(emb, selection, gallery)
        return {self.metric: rank_percentile(selection["query_to_gallery"], a)}


@ATTACKS.register("ca+", aliases=("CA:pm=+:W=1", "ca-plus", "caplus"),
                  description="candidate attack CA+: raise a candidate to the top for a random query")
class CandidateAttackPlus(CandidateAttack):
    __doc__ = CandidateAttack.__doc__
    sign = "+"
    metrics = ("CA+",)
    metric_specs = {"CA+": MetricSpec("CA+", True, "candidate attack (push up): mean rank percentile of the chosen candidate, %")}


@ATTACKS.register("ca-", aliases=("CA:pm=-:W=1", "ca-minus", "caminus"),
                  description="candidate attack CA-: sink a candidate out of a top-1% query's ranking")
class CandidateAttackMinus(CandidateAttack):
    __doc__ = CandidateAttack.__doc__
    sign = "-"
    metrics = ("CA-",)
    metric_specs = {"CA-": MetricSpec("CA−", False, "candidate attack (push down): mean rank percentile of the chosen candidate, %")}
