"""The strong evaluation every cell gets, and how its ensemble is chosen from the convergence study.

RobRank's protocol (32 fixed steps, last iterate, no restart) is far from converged on these models
(the convergence study, :mod:`benchmark.study`). Every cell is therefore also attacked by a fixed,
parameter-free *ensemble* of runs at the profile's ε, and the board ranks by the ERS of the
per-query worst case over the ensemble ("Strong ERS"):

The runs (:func:`attacks.runner.strong_runs`, made by :func:`attacks.runner.run_attacks`):

* ``fixed``: one fixed-step PGD run (the profile's α, zero start) of ``fixed_steps`` steps. With a
  fixed step its first ``profile.steps`` steps ARE the RobRank run, so its iterate at that step is
  recorded as the standard value (bit-identical to a separate 32-step run) and the run's
  *best iterate* over all its steps joins the ensemble;
* ``restart:1`` … : ``restarts`` runs of ``restart_steps`` steps from a uniform random start
  (best iterate);
* ``apgd:K``: one run of the APGD step-size schedule per budget in ``apgd_budgets``.

Per query and reported value, the strong value is the one most favourable to the attacker over the
members. Because the fixed run's best iterate includes its iterate at the standard step count, the
strong value is never weaker than the standard one.

The ensemble is versioned: :meth:`StrongSpec.to_dict` enters the cell id (``ResolvedCell.hash_payload``),
so changing it makes new cells. :func:`candidate_table` scores every ensemble the study's runs can
form (cost in PGD steps per query batch, ERS of its per-query worst case, gap to the strongest
measured) and :func:`choose_ensemble` picks the cheapest one within :data:`CHOICE_LIMIT` ERS points of
the strongest for every studied entry (half of :data:`GAP_LIMIT`, which every entry must meet); that is how :data:`DEFAULT_STRONG` was chosen (README, "Ranking").
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from .errors import BenchmarkError

# An ensemble qualifies when its ERS is within this many points of the strongest measured (every entry).
GAP_LIMIT = 1.0
# The default ensemble is chosen within half that limit: a margin for the entries studied after the
# choice (the omniglot-small board's, studied with its board cells), which must still meet GAP_LIMIT.
CHOICE_LIMIT = GAP_LIMIT / 2
# The cost target: this many times the standard run's steps.
COST_TARGET = 4


@dataclass(frozen=True)
class StrongSpec:
    """The runs of the strong evaluation (part of every cell id). Steps are per query batch."""

    fixed_steps: int = 64
    restarts: int = 0
    restart_steps: int = 0
    apgd_budgets: tuple[int, ...] = (64,)
    version: int = 1

    def __post_init__(self) -> None:
        def count(value: Any, low: int) -> bool:
            return not isinstance(value, bool) and isinstance(value, int) and value >= low

        object.__setattr__(self, "apgd_budgets", tuple(self.apgd_budgets))
        if not count(self.fixed_steps, 1) or not count(self.restarts, 0) or not count(self.restart_steps, 0):
            raise BenchmarkError(f"strong evaluation needs fixed_steps ≥ 1, restarts ≥ 0 and restart_steps ≥ 0, got "
                                 f"{self.fixed_steps!r}, {self.restarts!r}, {self.restart_steps!r}")
        if self.restarts and not self.restart_steps:
            raise BenchmarkError("strong evaluation restarts need restart_steps ≥ 1")
        if not all(count(b, 1) for b in self.apgd_budgets) or list(self.apgd_budgets) != sorted(set(self.apgd_budgets)):
            raise BenchmarkError(f"strong evaluation APGD budgets must be increasing positive step counts, "
                                 f"got {self.apgd_budgets!r}")

    @property
    def id(self) -> str:
        return f"strong-v{self.version}"

    def steps(self, standard_steps: int) -> int:
        """PGD steps per query batch (APGD's checkpoint resets not counted): the fixed run covers the
        standard run when it is at least as long."""
        return (max(self.fixed_steps, standard_steps) + self.restarts * self.restart_steps
                + sum(self.apgd_budgets))

    def describe(self, standard_steps: int = 32) -> str:
        parts = [f"fixed-step PGD {self.fixed_steps} steps (best iterate)"]
        if self.restarts:
            parts.append(f"{self.restarts}× random start {self.restart_steps} steps")
        parts += [f"APGD {k} steps" for k in self.apgd_budgets]
        return (f"{self.id}: per-query worst case over " + ", ".join(parts)
                + f"; {self.steps(standard_steps)} steps per batch, "
                  f"{self.steps(standard_steps) / standard_steps:.1f}× the standard run")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "apgd_budgets": list(self.apgd_budgets)}


# Chosen from the digits seed-0 convergence study v4 of all 14 built-in entries (README, "Ranking";
# choose_ensemble(candidate_table(rows)) on the stored rows: the cheapest within CHOICE_LIMIT, worst
# gap 0.46 ERS, mean 0.23). strong-v1 (fixed 64 + APGD 64) came from the 6-entry study v3.
DEFAULT_STRONG = StrongSpec(fixed_steps=128, restarts=1, restart_steps=32, apgd_budgets=(128,), version=2)

# The fixed-step run's name in a strong evaluation (attacks.runner.strong_runs) and in a study.
FIXED = "fixed"
# The standard run's row of candidate_table.
STANDARD_LABEL = "standard (RobRank protocol)"


# ---- choosing the ensemble from a convergence study -------------------------------------------


class _Members:
    """One study's best iterates as a matrix: a row per (metric, query), a column per (run, budget);
    the per-query worst case of any set of columns is one numpy reduction."""

    def __init__(self, rows: pd.DataFrame, column: str = "best") -> None:
        wide = rows.pivot_table(index=["metric", "query"], columns=["run", "budget"], values=column, aggfunc="first")
        direction = rows.groupby(["metric", "query"])["direction"].first().reindex(wide.index)
        self.columns = {(str(run), int(budget)): i for i, (run, budget) in enumerate(wide.columns)}
        self.values = wide.to_numpy(dtype=float)
        self.higher = (direction == "higher").to_numpy()
        self.metrics, self.codes = np.unique(wide.index.get_level_values("metric").astype(str), return_inverse=True)

    def ers(self, members: list[tuple[str, int]]) -> float:
        from .robustness_scores import ERS_KEYS, ers

        part = self.values[:, [self.columns[m] for m in members]]
        worst = np.where(self.higher, part.min(axis=1), part.max(axis=1))
        sums = np.bincount(self.codes, weights=worst, minlength=len(self.metrics))
        counts = np.bincount(self.codes, minlength=len(self.metrics))
        means = dict(zip(self.metrics.tolist(), (sums / np.maximum(counts, 1)).tolist()))
        if not all(k in means for k in ERS_KEYS) or not np.isfinite(worst).all():
            return float("nan")
        return ers(means)


def candidates(study_runs: set[tuple[str, int]], standard_steps: int = 32) -> list[tuple[str, int, tuple]]:
    """Every ensemble the study's runs can form: (name, steps per batch, members). A member is
    (run, budget); an ensemble always holds a fixed-step run of at least the standard length."""
    fixed = sorted(b for r, b in study_runs if r == FIXED and b >= standard_steps)
    restart = sorted(b for r, b in study_runs if r == "restart:1")
    apgd = sorted({b for r, b in study_runs if r.startswith("apgd:")})
    out = []
    for f, r, a in itertools.product(fixed, [0, *restart], [(), *[(k,) for k in apgd],
                                                           *itertools.combinations(apgd, 2)]):
        members = ((FIXED, f),) + ((("restart:1", r),) if r else ()) + tuple((f"apgd:{k}", k) for k in a)
        name = " + ".join([f"fixed {f}"] + ([f"restart {r}"] if r else []) + [f"apgd {k}" for k in a])
        out.append((name, f + r + sum(a), members))
    return out


def candidate_table(study_rows: pd.DataFrame, standard_steps: int = 32) -> pd.DataFrame:
    """Per studied model (dataset, entry, seed) and candidate ensemble: its cost in steps per batch,
    its Strong ERS (per-query worst case over its members' best iterates), the strongest measured
    (every run of the study at its longest budget) and the gap between them; plus the standard run
    (fixed, last iterate at the standard step count) for reference."""
    out = []
    for (dataset, entry, seed), rows in study_rows.groupby(["dataset", "entry", "seed"], sort=True):
        members = _Members(rows)
        longest: dict[str, int] = {}
        for run, budget in members.columns:
            longest[run] = max(budget, longest.get(run, 0))
        strongest = members.ers(list(longest.items()))
        base = {"dataset": dataset, "entry": entry, "seed": int(seed), "strongest": strongest}
        standard = rows[(rows["run"] == FIXED) & (rows["budget"] == standard_steps)]
        standard_ers = _Members(standard, "last").ers([(FIXED, standard_steps)]) if len(standard) else float("nan")
        out.append({**base, "ensemble": STANDARD_LABEL, "steps": standard_steps, "ERS": standard_ers})
        for name, steps, parts in candidates(set(members.columns), standard_steps):
            out.append({**base, "ensemble": name, "steps": steps, "ERS": members.ers(list(parts))})
    table = pd.DataFrame(out, columns=["dataset", "entry", "seed", "ensemble", "steps", "ERS", "strongest"])
    table["gap"] = table["ERS"] - table["strongest"]
    return table


def choose_ensemble(table: pd.DataFrame, *, gap_limit: float = CHOICE_LIMIT) -> pd.Series:
    """The cheapest candidate of :func:`candidate_table` whose gap is ≤ ``gap_limit`` for every
    studied entry (ties: the smaller worst gap); its name, steps and worst gap. Raises when none
    qualifies."""
    ensembles = table[table["ensemble"] != STANDARD_LABEL]
    summary = ensembles.groupby("ensemble").agg(steps=("steps", "first"), worst_gap=("gap", "max"),
                                                mean_gap=("gap", "mean"), entries=("entry", "size"))
    ok = summary[summary["worst_gap"] <= gap_limit]
    if ok.empty:
        raise BenchmarkError(f"no ensemble of the study's runs comes within {gap_limit} ERS of the strongest "
                             f"for every entry; the study needs longer runs")
    best = ok.sort_values(["steps", "worst_gap"]).iloc[0]
    return pd.Series({"ensemble": best.name, "steps": int(best["steps"]), "worst_gap": float(best["worst_gap"]),
                      "mean_gap": float(best["mean_gap"]), "entries": int(best["entries"])})

