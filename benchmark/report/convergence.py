"""The board's convergence section, where the store holds convergence studies (:mod:`benchmark.study`).

It shows what the strong evaluation rests on: ERS (scale-free, best iterate) against the PGD
budget per entry, where each entry's ERS stops moving, and why the ensemble behind Strong ERS was
chosen (:func:`benchmark.strong_eval.candidate_table` and :func:`~benchmark.strong_eval.choose_ensemble`:
the cheapest candidate within ``GAP_LIMIT`` ERS points of the strongest measured for every studied
cell).

A study belongs to a board's cell when it studied that cell (its ``cell_id`` is the cell's, which
holds for cells stored without a strong evaluation: a study is keyed by the cell's standard id),
or when it studied the same dataset, entry and seed on exactly the same queries as a cell whose
per-query values are stored (the queries are drawn from the preset's query count and the seed, so
another preset's study of that entry does not match).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import BenchmarkError
from ..robustness_scores import ERS_KEYS, RANKED_SCORE
from ..strong_eval import STANDARD_LABEL as STANDARD_NAME  # the candidate table's standard row
from .model import Figure

# A doubling of the budget that changes ERS by at most this many points counts as "not moving".
SETTLED_POINTS = 0.5


@dataclass
class Convergence:
    """The convergence section of one board."""

    figure: Figure
    headers: list[str]
    rows: list[list[str]]
    choice: str  # the ensemble choice and its justification, one paragraph
    studied: int  # studied cells
    settled_points: float = SETTLED_POINTS
    curves: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)  # entry -> run -> budget -> ERS
    settled: dict[str, int | None] = field(default_factory=dict)  # entry -> budget where ERS stops moving


def board_studies(studies: pd.DataFrame | None, cells: pd.DataFrame, queries: pd.DataFrame | None,
                  weights: dict[str, str] | None = None) -> pd.DataFrame:
    """The rows of the studies that belong to a board's cells (``cells``: index cell_id, with entry
    and seed), one study per cell: the one of the cell's own model where ``weights`` (cell id ->
    weights digest) and the study say so, else the one with the most runs and budgets. Column
    ``same_model``: whether the study attacked the board cell's model (True / False; missing where
    either digest is unknown)."""
    if studies is None or studies.empty:
        return pd.DataFrame()
    cell_ids = set(map(str, cells.index))
    by_seed = {(str(e), int(s)): str(c) for c, e, s in zip(cells.index, cells["entry"], cells["seed"])}
    query_sets: dict[str, frozenset] = {}
    if queries is not None and not queries.empty:
        for cell_id, part in queries[queries["cell_id"].astype(str).isin(cell_ids)].groupby("cell_id"):
            query_sets[str(cell_id)] = frozenset(int(q) for q in part["query"].unique())
    chosen: dict[str, tuple[tuple[int, int, str], pd.DataFrame]] = {}
    for study_id, rows in studies.groupby("study_id", sort=True):
        first = rows.iloc[0]
        cell = str(first["cell_id"]) if str(first["cell_id"]) in cell_ids else None
        if cell is None:
            candidate = by_seed.get((str(first["entry"]), int(first["seed"])))
            if candidate is not None and candidate in query_sets \
                    and frozenset(int(q) for q in rows["query"].unique()) == query_sets[candidate]:
                cell = candidate
        if cell is None:
            continue
        studied = rows["weights"].dropna().unique() if "weights" in rows else []
        mine = (weights or {}).get(cell)
        same = pd.NA if mine is None or len(studied) != 1 else bool(studied[0] == mine)
        size = (same is True, rows[["run", "budget"]].drop_duplicates().shape[0], len(rows), str(study_id))
        if cell not in chosen or size > chosen[cell][0]:
            chosen[cell] = (size, rows.assign(board_cell=cell, same_model=same))
    if not chosen:
        return pd.DataFrame()
    return pd.concat([rows for _, rows in chosen.values()], ignore_index=True)


def _complete(rows: pd.DataFrame) -> bool:
    return set(ERS_KEYS) <= set(rows["metric"].unique())


def settled_budget(curve: dict[int, float], points: float = SETTLED_POINTS) -> int | None:
    """The smallest budget from which every further step of the budget grid (a doubling: 32, 64, …)
    changes ERS by at most ``points``; None when even the last step moves more (or one budget only)."""
    budgets = sorted(b for b, v in curve.items() if math.isfinite(v))
    if len(budgets) < 2:
        return None
    for i in range(len(budgets) - 1):
        if all(abs(curve[budgets[j + 1]] - curve[budgets[j]]) <= points for j in range(i, len(budgets) - 1)):
            return budgets[i]
    return None


def ensemble_name(spec) -> str:
    """A :class:`benchmark.strong_eval.StrongSpec` named as :func:`benchmark.strong_eval.candidates`
    names its candidates (so the ensemble in use can be looked up in the candidate table)."""
    parts = [f"fixed {spec.fixed_steps}"]
    if spec.restarts:
        parts += [f"restart {spec.restart_steps}"] * spec.restarts
    parts += [f"apgd {k}" for k in spec.apgd_budgets]
    return " + ".join(parts)


def _fmt(value: float, decimals: int = 1) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{decimals}f}"


def convergence_section(study_rows: pd.DataFrame, entries: Sequence[str], *, standard_steps: int = 32,
                        strong_ids: Sequence[str] = (), strong_meaning: str = "", slug: str = "board",
                        colors: dict[str, int] | None = None, draw: bool = True) -> Convergence | None:
    """The section for one board from its studies' rows (:func:`board_studies`); None without a
    complete study. ``entries`` in board order; ``strong_ids``/``strong_meaning``: the strong
    evaluation the board's cells carry (its id and the ``meaning`` of their Strong ERS rows);
    ``draw``: False leaves the figure's PNG out."""
    from ..strong_eval import CHOICE_LIMIT, DEFAULT_STRONG, GAP_LIMIT, candidate_table, choose_ensemble
    from ..study import study_curves
    from .plots import plot_convergence

    if study_rows is None or study_rows.empty:
        return None
    per_cell = {cell: rows for cell, rows in study_rows.groupby("board_cell", sort=True) if _complete(rows)}
    if not per_cell:
        return None
    curves: dict[str, dict[str, list[dict[int, float]]]] = {}
    tables = []
    for cell, rows in per_cell.items():
        entry = str(rows["entry"].iloc[0])
        try:
            frame = study_curves(rows)
            table = candidate_table(rows, standard_steps)
        except BenchmarkError:
            continue
        runs = curves.setdefault(entry, {})
        for run, part in frame.groupby("run"):
            iterate = "best"
            runs.setdefault(str(run), []).append(
                {int(b): float(v) for b, v in part[part["iterate"] == iterate][[ "budget", RANKED_SCORE]].to_numpy()})
        fixed = frame[(frame["run"] == "fixed") & (frame["iterate"] == "last") & (frame["budget"] == standard_steps)]
        if len(fixed):
            runs.setdefault("standard", []).append({standard_steps: float(fixed[RANKED_SCORE].iloc[0])})
        tables.append(table.assign(seed=int(rows["seed"].iloc[0]), cell=cell))
    if not tables:
        return None

    def mean_curve(parts: list[dict[int, float]]) -> dict[int, float]:
        budgets = sorted({b for p in parts for b in p})
        return {b: float(np.mean([p[b] for p in parts if b in p])) for b in budgets}

    mean_curves = {entry: {run: mean_curve(parts) for run, parts in runs.items()} for entry, runs in curves.items()}
    settled = {entry: settled_budget(runs.get("fixed", {})) for entry, runs in mean_curves.items()}
    candidates = pd.concat(tables, ignore_index=True)

    # the ensemble the board's cells were evaluated with, where it is the default one (its runs are known)
    in_use = ensemble_name(DEFAULT_STRONG) if set(strong_ids) == {DEFAULT_STRONG.id} else ""
    try:
        chosen = choose_ensemble(candidates)
    except BenchmarkError:
        chosen = None
    names = [n for n in dict.fromkeys([in_use, chosen["ensemble"] if chosen is not None else ""]) if n]
    per_entry = candidates.groupby(["entry", "ensemble"]).agg(ERS=("ERS", "mean"), strongest=("strongest", "mean"),
                                                              steps=("steps", "first"))
    seeds = candidates.groupby("entry")["seed"].nunique()

    headers = ["Entry", "Studied seeds", f"Standard ({standard_steps} steps, last iterate)",
               f"Stops moving at (≤ {SETTLED_POINTS:g} per doubling)"]
    for name in names:
        headers.append(f"{'Strong, in use' if name == in_use else 'Chosen'}: {name}")
    headers += ["Strongest measured", f"Gap ({names[0] if names else 'strong'} − strongest)"]
    budget_grid = sorted({b for runs in mean_curves.values() for b in runs.get("fixed", {})})
    rows = []
    ordered = [e for e in entries if e in mean_curves] + sorted(e for e in mean_curves if e not in entries)
    for entry in ordered:
        def value(ensemble: str, column: str = "ERS", entry: str = entry) -> float:
            key = (entry, ensemble)
            return float(per_entry.loc[key, column]) if key in per_entry.index else math.nan

        stop = settled[entry]
        stop_text = f"{stop} steps" if stop is not None else (f"not by {budget_grid[-1]}" if budget_grid else "—")
        strongest = value(STANDARD_NAME, "strongest")
        row = [entry, str(int(seeds.get(entry, 0))), _fmt(value(STANDARD_NAME)), stop_text]
        row += [_fmt(value(name)) for name in names]
        row += [_fmt(strongest), _fmt(value(names[0]) - strongest, 2) if names else "—"]
        rows.append(row)

    parts = []
    if chosen is not None:
        parts.append(f"The cheapest candidate ensemble within {CHOICE_LIMIT:g} ERS point of the strongest measured "
                     f"for every studied cell (half the {GAP_LIMIT:g}-point limit every entry must meet, a margin for "
                     f"entries studied after the choice) is {chosen['ensemble']}: {chosen['steps']} PGD steps per query batch, "
                     f"{chosen['steps'] / standard_steps:.1f}× the standard {standard_steps}; its worst gap over the "
                     f"{len(per_cell)} studied cell{'s' if len(per_cell) != 1 else ''} is "
                     f"{chosen['worst_gap']:.2f} ERS points (mean {chosen['mean_gap']:.2f})"
                     + (f"; it can be formed from the runs of only {chosen['entries']} of them" if
                        chosen["entries"] < len(candidates[["entry", "seed"]].drop_duplicates()) else "") + ".")
    else:
        parts.append(f"No candidate ensemble of these studies' runs comes within {CHOICE_LIMIT:g} ERS point of the "
                     "strongest measured for every studied cell: the studies need longer runs.")
    other = sorted({str(r["entry"].iloc[0]) for r in per_cell.values()
                    if "same_model" in r and not pd.isna(r["same_model"].iloc[0]) and not r["same_model"].iloc[0]})
    if other:
        parts.append(f"The studies of {', '.join(other)} attacked a model of the same recipe and seed other than "
                     "the board's cell (other weights, e.g. trained on a CPU of another vendor: README, The results "
                     "store): they describe the entry's training, not the ranked weights.")
    if strong_meaning:
        parts.append(f"The board's Strong ERS uses {strong_meaning}.")
    if in_use:
        gaps = candidates[candidates["ensemble"] == in_use]["gap"]
        differs = chosen is None or in_use != chosen["ensemble"]
        if not len(gaps):
            parts.append(f"That ensemble ({in_use}) cannot be formed from these studies' runs.")
        else:
            verdict = (f"within the {GAP_LIMIT:g}-point limit for every studied cell" if gaps.max() <= GAP_LIMIT
                       else f"outside the {GAP_LIMIT:g}-point limit: this board's Strong ERS is not converged")
            parts.append((f"That ensemble ({in_use}) is not the one these studies would choose; its" if differs
                          else "Its") + f" worst gap here is {gaps.max():.2f} ERS points, {verdict}.")
    choice = " ".join(parts)

    figure = plot_convergence(mean_curves, ordered, colors or {}, standard_steps) if draw \
        else Figure("convergence", "Attack convergence", "", None)
    figure.file = f"{slug}-{figure.name}.png" if figure.png else ""
    return Convergence(figure, headers, rows, choice, len(per_cell), curves=mean_curves, settled=settled)
