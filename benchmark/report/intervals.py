"""Rank intervals: each entry's rank with a 95 % interval from a bootstrap over seeds and queries.

One draw resamples, for every entry, its seeds with replacement (among the seeds whose per-query
values are stored), and within each drawn seed that cell's queries with replacement (the same
query indices for every attack value of the cell: the values of one attacked image stay
together). The cell's score in the draw is the ERS of the resampled per-metric means (ERS is a
function of the per-metric means, :func:`benchmark.robustness_scores.ers`), the entry's value the
mean over its drawn seeds; then every entry of the board is ranked. The interval is the 2.5 % and
97.5 % quantiles of an entry's rank over the draws. An entry without per-query values keeps its
point value in every draw (it is ranked, but gets no interval of its own).

Seeded and vectorised with numpy: a query resample is a row of multinomial counts (a bincount of
uniform indices) times the cell's query × metric matrix; a board of 14 entries × 3 seeds × 12
metrics × 500 queries takes well under a second for 1000 draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..robustness_scores import (
    ERS_KEYS,
    ERS_TERMS,
    RANKED_SCORE,
    ROBRANK_ERS_KEYS,
    ROBRANK_SCORE,
    STRONG_SCORE,
)

DRAWS = 1000
SEED = 0
LEVEL = 0.95

# Which per-query column and which ERS definition give each score a board can rank by.
SCORE_SOURCES: Mapping[str, tuple[str, tuple[str, ...]]] = {
    STRONG_SCORE: ("strong", ERS_KEYS),
    RANKED_SCORE: ("standard", ERS_KEYS),
    ROBRANK_SCORE: ("standard", ROBRANK_ERS_KEYS),
}


@dataclass(frozen=True)
class RankInterval:
    low: int
    high: int

    @property
    def text(self) -> str:
        return f"{self.low}–{self.high}"


def _term(key: str, values: np.ndarray) -> np.ndarray:
    """``ERS_TERMS[key]`` on an array (the clipped terms use Python's min/max: evaluated one by one)."""
    function = ERS_TERMS[key]
    try:
        out = np.asarray(function(values), dtype=float)
        if out.shape == values.shape:
            return out
    except (TypeError, ValueError):
        pass
    return np.vectorize(function, otypes=[float])(values)


def ers_of_means(means: np.ndarray, keys: Sequence[str]) -> np.ndarray:
    """ERS of each row of ``means`` (columns in the order of ``keys``): the mean of the ERS terms.
    A NaN mean (a metric with no query in the resample) gives NaN."""
    terms = np.column_stack([_term(key, means[:, i]) for i, key in enumerate(keys)])
    terms[np.isnan(means)] = np.nan
    return terms.mean(axis=1)


def cell_matrices(queries: pd.DataFrame, column: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Per cell id: its query × metric matrix of ``column`` (metrics in the order of ``keys``, NaN where
    a query has no value for a metric). Cells lacking one of ``keys`` are left out."""
    if queries is None or queries.empty or column not in queries.columns:
        return {}
    part = queries[queries["metric"].isin(keys)]
    out = {}
    for cell_id, cell in part.groupby("cell_id", sort=True):
        if set(cell["metric"].unique()) != set(keys):
            continue
        # a query index can occur twice for one metric (the same image drawn twice): keep both
        occurrence = cell.groupby(["metric", "query"]).cumcount()
        matrix = (cell.assign(_n=occurrence.to_numpy()).set_index(["query", "_n", "metric"])[column]
                  .astype(float).unstack("metric").reindex(columns=list(keys)))
        out[str(cell_id)] = matrix.to_numpy(dtype=float)
    return out


def _resampled_ers(matrix: np.ndarray, draws: int, keys: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """ERS of ``draws`` query resamples (with replacement, all metrics together) of one cell."""
    n = matrix.shape[0]
    if draws == 0:
        return np.empty(0)
    picks = rng.integers(0, n, size=(draws, n))
    counts = np.bincount((picks + n * np.arange(draws)[:, None]).ravel(), minlength=draws * n)
    counts = counts.reshape(draws, n).astype(float)
    present = ~np.isnan(matrix)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (counts @ np.where(present, matrix, 0.0)) / (counts @ present.astype(float))
    return ers_of_means(means, keys)


def bootstrap_values(entries: Sequence[tuple[Sequence[np.ndarray], float]], keys: Sequence[str], *,
                     draws: int = DRAWS, seed: int = SEED) -> np.ndarray:
    """Draws × entries of bootstrapped entry values. Each entry is (its cells' query × metric
    matrices, its point value); an entry without matrices keeps its point value in every draw."""
    rng = np.random.default_rng(seed)
    values = np.empty((draws, len(entries)))
    for column, (matrices, point) in enumerate(entries):
        if not matrices:
            values[:, column] = point
            continue
        k = len(matrices)
        drawn = rng.integers(0, k, size=(draws, k)).ravel()  # which seed fills each slot of each draw
        per_slot = np.empty(drawn.shape)
        for cell in range(k):
            slots = np.flatnonzero(drawn == cell)
            per_slot[slots] = _resampled_ers(matrices[cell], len(slots), keys, rng)
        values[:, column] = per_slot.reshape(draws, k).mean(axis=1)
    return values


def ranks(values: np.ndarray) -> np.ndarray:
    """Rank of every entry in every draw: 1 + the number of entries with a strictly higher value
    (NaN ranks below everything)."""
    v = np.where(np.isnan(values), -np.inf, values)
    return 1 + (v[:, None, :] > v[:, :, None]).sum(axis=2)


def rank_intervals(entries: Sequence[tuple[Sequence[np.ndarray], float]], keys: Sequence[str], *,
                   draws: int = DRAWS, seed: int = SEED, level: float = LEVEL) -> list[RankInterval | None]:
    """The ``level`` interval of each entry's rank (None for an entry without per-query values)."""
    if not entries or not any(matrices for matrices, _ in entries):
        return [None] * len(entries)
    r = ranks(bootstrap_values(entries, keys, draws=draws, seed=seed))
    tail = (1.0 - level) / 2.0
    low = np.quantile(r, tail, axis=0, method="inverted_cdf")
    high = np.quantile(r, 1.0 - tail, axis=0, method="inverted_cdf")
    return [RankInterval(int(lo), int(hi)) if matrices else None
            for (matrices, _), lo, hi in zip(entries, low, high)]


def board_rank_intervals(summaries: Sequence, queries: pd.DataFrame | None, key: str, *,
                         draws: int = DRAWS, seed: int = SEED, level: float = LEVEL) -> list[RankInterval | None]:
    """Rank intervals of a board's entries (``summaries`` in board order, each with ``cell_ids`` and
    ``mean``) by ``key``, from the per-query values of their cells (``benchmark.store.load_queries``)."""
    if key not in SCORE_SOURCES or queries is None or queries.empty:
        return [None] * len(summaries)
    column, keys = SCORE_SOURCES[key]
    wanted = {c for s in summaries for c in s.cell_ids}
    matrices = cell_matrices(queries[queries["cell_id"].astype(str).isin(wanted)], column, keys)
    entries = []
    for s in summaries:
        point = s.mean.get(key, math.nan)
        entries.append(([matrices[c] for c in s.cell_ids if c in matrices], point))
    return rank_intervals(entries, keys, draws=draws, seed=seed, level=level)
