"""The leaderboard's data: per-cell tables, aggregation over seeds and the columns.

Turns the tidy long rows of :mod:`benchmark.schema` into the numbers of one board per (dataset,
preset + version, profile + version): one row per matrix cell (:func:`cell_table`), then entries
aggregated over seeds as mean ± std with n (:func:`summarise`). The attack columns are built from
what the rows store about their metrics (label, direction, decimals, meaning), never from a table
here. The page model (:class:`~benchmark.report.model.Board` and its parts) is in :mod:`.model`,
the protocol and provenance lines in :mod:`.protocol`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..deployment import BREAK_POINTS
from ..errors import BenchmarkError
from ..robustness_scores import RANKED_SCORE, ROBRANK_SCORE, SCORED_KEYS, STRONG_SCORE
from ..schema import ALL_COLUMNS
from ..shrinkage import SHRUNK_FRACTION
from ..telemetry import training_summary
from .intervals import RankInterval
from .model import AUDIT_CHECKS, BoardKey, Column, Row, TableCell
from .ranking import (
    DROP_KEY,
    PROTOCOL_KEY,
    UNRELIABLE_CSS,
    UNRELIABLE_KEY,
    UNRELIABLE_LABEL,
    UNRELIABLE_TOLERANCE,
    choose_key,
    score_label,
)
from .ranking import RANKING_KEY as RANKING_KEY  # re-exported: declared once, in .ranking

# Row groups that are not attacks (``attack`` column values).
NON_ATTACK_GROUPS = ("benign", "score", "training", "audit")

# Rows the leaderboard cannot be built without; the other schema columns are optional extras.
REQUIRED_COLUMNS = ("dataset", "preset", "profile", "entry", "seed", "cell_id", "attack", "metric", "value")

# --------------------------------------------------------------------------------------------
# Aggregation


def _check_frame(results: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(results, pd.DataFrame):
        raise BenchmarkError(f"results must be a pandas DataFrame in the store schema, got {type(results).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in results.columns]
    if missing:
        raise BenchmarkError(f"results are missing the columns {', '.join(missing)}; "
                             f"the store schema (benchmark/schema.py) has {', '.join(ALL_COLUMNS)}")
    if results.empty:
        raise BenchmarkError("the results store is empty: nothing to render (run a matrix first, e.g. `rrb run`)")
    frame = results.copy()
    defaults: dict[str, Any] = {"profile_version": 1, "variant": "", "attack_plugin": False, "is_plugin": False,
                                "plugin_hash": "", "defense_params": "{}", "collapsed": False,
                                "preset_version": 1, "faithful": False}
    for column, default in defaults.items():
        if column not in frame.columns:
            frame[column] = default
    frame["variant"] = frame["variant"].fillna("").astype(str)
    frame["attack_plugin"] = frame["attack_plugin"].fillna(False).astype(bool)
    frame["profile_version"] = frame["profile_version"].fillna(1).astype(int)
    frame["preset_version"] = frame["preset_version"].fillna(1).astype(int)
    frame["faithful"] = frame["faithful"].fillna(False).astype(bool)
    return frame


def board_keys(results: pd.DataFrame) -> list[BoardKey]:
    """The (dataset, preset + version, profile + version) combinations present in ``results``, sorted.

    Preset versions are kept apart: a retired preset's rows never share a board with its successor's.
    """
    frame = _check_frame(results)
    combos = frame[["dataset", "preset", "profile", "profile_version", "preset_version"]].drop_duplicates()
    keys = [BoardKey(str(d), str(p), str(pr), int(v), int(pv)) for d, p, pr, v, pv in combos.itertuples(index=False)]
    return sorted(keys, key=lambda k: (k.dataset, k.preset, k.preset_version, k.profile, k.profile_version))


def _board_rows(frame: pd.DataFrame, key: BoardKey) -> pd.DataFrame:
    mask = ((frame["dataset"] == key.dataset) & (frame["preset"] == key.preset)
            & (frame["preset_version"] == key.preset_version)
            & (frame["profile"] == key.profile) & (frame["profile_version"] == key.profile_version))
    return latest_cells(frame[mask])


def latest_cells(rows: pd.DataFrame) -> pd.DataFrame:
    """Keep, for each (entry, seed), only the most recently created cell.

    A changed built-in or scoring version gives a new cell id (never an overwrite), so a store can
    hold an older evaluation of the same model beside the new one; counting both would show one
    seed as two. The older cells (and their audits) are left in the store, not on the board:
    ``superseded_cells`` counts them.
    """
    if rows.empty or "created_at" not in rows.columns:
        return rows
    own = rows[rows["attack"] != "audit"] if "attack" in rows.columns else rows
    per_cell = own.groupby("cell_id").agg(entry=("entry", "first"), seed=("seed", "first"),
                                         created=("created_at", "max"))
    newest = per_cell.sort_values("created").groupby(["entry", "seed"]).tail(1).index
    kept = rows[rows["cell_id"].isin(set(newest))]
    kept.attrs["superseded_cells"] = int(len(per_cell) - len(newest))
    return kept


def _first_text(values: pd.Series, default: str = "") -> str:
    for value in values:
        if isinstance(value, str) and value:
            return value
    return default


def attack_columns(adversarial: pd.DataFrame) -> list[Column]:
    """One column per (attack, metric) of the attack rows, described by what the rows store.

    Label, direction, precision and meaning come from the rows (each attack's declared
    ``MetricSpec``), never from a table here. Built-in attack values that enter ERS come first,
    in the frozen ERS order; every other attack value (plugin attacks, built-ins outside ERS)
    follows, by label. A label two attacks share is prefixed with the attack's name.
    """
    if adversarial.empty:
        return []
    described = adversarial.assign(
        metric_label=adversarial["metric_label"] if "metric_label" in adversarial else "",
        direction=adversarial["direction"] if "direction" in adversarial else "",
        decimals=adversarial["decimals"] if "decimals" in adversarial else 1,
        meaning=adversarial["meaning"] if "meaning" in adversarial else "")
    pairs = []
    for (attack, metric, plugin), group in described.groupby(["attack", "metric", "attack_plugin"], sort=True):
        label = _first_text(group["metric_label"], str(metric))
        direction = _first_text(group["direction"])
        decimals = pd.to_numeric(group["decimals"], errors="coerce").dropna()
        meaning = _first_text(group["meaning"], f"{attack}: {metric}")
        in_ers = (not plugin) and metric in SCORED_KEYS
        pairs.append((str(attack), str(metric), bool(plugin), label, direction,
                      int(decimals.iloc[0]) if len(decimals) else 2, meaning, in_ers))
    label_count: dict[str, int] = {}
    for pair in pairs:
        label_count[pair[3]] = label_count.get(pair[3], 0) + 1
    taken = {"R@1", "R@2", "mAP", "NMI", "ERS", "ARS", "WHM"}
    columns = []
    for attack, metric, _plugin, label, direction, decimals, meaning, in_ers in pairs:
        if not in_ers and (label_count[label] > 1 or label in taken):
            label = f"{attack}:{label}"
        arrow = {"higher": " ↑", "lower": " ↓"}.get(direction, "")
        title = meaning + (f" ({arrow.strip()} = more robust)" if arrow else "")
        if not in_ers:
            title += " (not part of ERS/ARS)"
        key = metric if in_ers else f"{attack}:{metric}"
        columns.append(Column(key, label + arrow, decimals, 1.0, title, "attack" if in_ers else "plugin"))
    ers_order = {key: i for i, key in enumerate(SCORED_KEYS)}
    return sorted(columns, key=lambda c: (c.group != "attack", ers_order.get(c.key, 0), c.label))


def _training_from_telemetry(telemetry: pd.DataFrame | None, cell_ids: pd.Index) -> pd.DataFrame:
    """``training:*`` numbers recomputed from the per-step telemetry of each cell, so that cells
    stored before a summary number existed still show it (the rows win where both exist)."""
    if telemetry is None or telemetry.empty or "cell_id" not in telemetry.columns:
        return pd.DataFrame(index=cell_ids)
    wanted = telemetry[telemetry["cell_id"].astype(str).isin(set(map(str, cell_ids)))]
    meta = {"cell_id", "dataset", "defense", "entry", "seed", "preset"}
    out = {}
    for cell_id, group in wanted.groupby("cell_id", sort=False):
        group = group.sort_values("step") if "step" in group.columns else group
        records = [{k: v for k, v in record.items() if k not in meta and v == v}  # drop NaN (other defenses' extras)
                   for record in group.to_dict("records")]
        out[str(cell_id)] = {f"training:{k}": v for k, v in training_summary(records).items()}
    return pd.DataFrame.from_dict(out, orient="index").reindex(cell_ids)


# Score and audit numbers that a cell stored before the ranked (scale-free) ERS existed carry
# RobRank's definition under the plain names: they are moved to the RobRank columns.
_LEGACY_RENAMES = {RANKED_SCORE: ROBRANK_SCORE, "audit:ERS:strong": "audit:ERS:strong:RobRank",
                   "audit:drop": "audit:drop:RobRank"}


def _move_legacy_scores(table: pd.DataFrame) -> pd.DataFrame:
    if RANKED_SCORE not in table.columns:
        return table
    if ROBRANK_SCORE not in table.columns:
        table[ROBRANK_SCORE] = np.nan
    legacy = table[ROBRANK_SCORE].isna() & table[RANKED_SCORE].notna()
    if not legacy.any():
        return table
    for old, new in _LEGACY_RENAMES.items():
        if old not in table.columns:
            continue
        if new not in table.columns:
            table[new] = np.nan
        table.loc[legacy, new] = table.loc[legacy, old]
        table.loc[legacy, old] = np.nan
    # every other audit number of a legacy audit is in RobRank's units too: not comparable
    for column in [c for c in table.columns if str(c).startswith("audit:ERS:") and not str(c).endswith("RobRank")]:
        table.loc[legacy, column] = np.nan
    return table


def _geometry(table: pd.DataFrame) -> pd.DataFrame:
    """Per cell: spread relative to natural training (same seed), and the shrunk, entangled and
    index-breaks verdicts (1/0, NaN when unknown)."""
    def nt_ratio(column: str) -> pd.Series:
        if column not in table.columns:
            return pd.Series(np.nan, index=table.index)
        natural = table[table["entry"] == "nt"].groupby("seed")[column].mean()
        reference = table["seed"].map(natural)
        return table[column] / reference.where(reference > 0)

    gallery, training = nt_ratio("spread:mean_distance"), nt_ratio("training:end_mean_distance")
    table["spread_vs_nt"] = gallery.where(gallery.notna(), training)
    table["shrunk"] = np.where(table["spread_vs_nt"].notna(), (table["spread_vs_nt"] < SHRUNK_FRACTION).astype(float),
                               np.nan)
    table["entangled"] = table["training:entangled"] if "training:entangled" in table.columns else np.nan
    if "R@1:faiss-f32" in table.columns and "R@1" in table.columns:
        loss = 100.0 * (table["R@1"] - table["R@1:faiss-f32"])
        table["index_breaks"] = np.where(loss.notna(), (loss > BREAK_POINTS).astype(float), np.nan)
    else:
        table["index_breaks"] = np.nan
    return table


def _strong_drop(table: pd.DataFrame) -> pd.DataFrame:
    """Per cell: the drop ERS − Strong ERS (both scale-free) and whether it exceeds the audit's
    tolerance (1/0; NaN for a cell without a strong evaluation)."""
    if STRONG_SCORE in table.columns and RANKED_SCORE in table.columns:
        table[DROP_KEY] = table[RANKED_SCORE] - table[STRONG_SCORE]
    else:
        table[DROP_KEY] = np.nan
    table[UNRELIABLE_KEY] = np.where(table[DROP_KEY].notna(), (table[DROP_KEY] > UNRELIABLE_TOLERANCE).astype(float),
                                     np.nan)
    return table


def cell_table(rows: pd.DataFrame, telemetry: pd.DataFrame | None = None) -> tuple[pd.DataFrame, list[Column]]:
    """One row per matrix cell (one trained model): every number the leaderboard aggregates.

    Returns the table (index ``cell_id``) and the attack-value columns described by the rows
    (:func:`attack_columns`). Attack values are the ``adversarial`` variant; values outside ERS
    (plugin attacks) get columns keyed ``attack:metric`` and never feed ERS/ARS (those come from
    the stored ``score`` rows). ``training:*`` numbers missing from the rows are recomputed from
    ``telemetry``; a cell stored before the ranked ERS existed has its ERS moved to the RobRank
    column; ``spread_vs_nt``, ``shrunk``, ``entangled``, ``index_breaks``, the strong evaluation's
    drop (``ERS − ERS:strong``) and its verdict (``unconverged``) are added per cell.
    """
    first = rows.groupby("cell_id", sort=True).first()
    info_columns = [c for c in ("entry", "seed", "defense", "defense_params", "is_plugin", "plugin_hash",
                                "train_pgd_steps", "collapsed", "train_seconds", "eval_seconds")
                    if c in first.columns]
    table = first[info_columns].copy()

    def pivot(part: pd.DataFrame, labels: pd.Series | None = None) -> pd.DataFrame:
        if part.empty:
            return pd.DataFrame(index=table.index)
        part = part.assign(label=labels if labels is not None else part["metric"].astype(str))
        return part.pivot_table(index="cell_id", columns="label", values="value", aggfunc="mean")

    benign = rows[rows["attack"] == "benign"]
    scores = rows[rows["attack"] == "score"]
    training = rows[rows["attack"] == "training"]
    audit = rows[rows["attack"] == "audit"]
    attack_rows = rows[~rows["attack"].isin(NON_ATTACK_GROUPS)]
    adversarial = attack_rows[attack_rows["variant"] == "adversarial"]
    columns = attack_columns(adversarial)
    in_ers = ~adversarial["attack_plugin"] & adversarial["metric"].isin(SCORED_KEYS)
    keys = pd.Series(np.where(in_ers, adversarial["metric"].astype(str),
                              adversarial["attack"].astype(str) + ":" + adversarial["metric"].astype(str)),
                     index=adversarial.index, dtype=object)
    training_labels = "training:" + training["metric"].astype(str)
    parts = [pivot(benign), pivot(adversarial, keys), pivot(scores), pivot(training, training_labels),
             pivot(audit, "audit:" + audit["metric"].astype(str))]
    for part in parts:
        table = table.join(part, how="left", rsuffix="_dup")
    from_telemetry = _training_from_telemetry(telemetry, table.index)
    for column in from_telemetry.columns:
        if column not in table.columns:
            table[column] = from_telemetry[column]
        else:
            table[column] = table[column].where(table[column].notna(), from_telemetry[column])
    table = _strong_drop(_geometry(_move_legacy_scores(table)))
    # Attack time: each attack's seconds are repeated on its metric rows, so count each attack once.
    if "attack_seconds" in attack_rows.columns and not attack_rows.empty:
        per_attack = attack_rows.groupby(["cell_id", "attack"])["attack_seconds"].first()
        table["attack_time"] = per_attack.groupby(level="cell_id").sum()
    else:
        table["attack_time"] = np.nan
    return table, columns


def leaderboard_columns(attack_value_columns: Sequence[Column | str] = (), *, audited: bool = False,
                        legacy_audit: bool = False, strong: bool = False) -> list[Column]:
    """The numeric columns in page order (Rank, Entry, Seeds, Shrunk, Entangled and Kind are added around them).

    Headline first. With a strong evaluation on the board (``strong``): Strong ERS (the ranking
    key), ERS (RobRank protocol), Drop, then ERS (scale-free, standard 32-step run); without one,
    ERS and ERS (RobRank protocol). Then ARS, R@1 and the R@1 a float32 faiss index returns; then
    the audit, the spread relative to natural training, the other benign metrics, the attack
    values as the rows describe them (:func:`attack_columns`), WHM and the cost columns. A bare
    string is an attack value column with that key and label. ``legacy_audit`` adds the strong ERS
    of audits stored before the ranked ERS existed (RobRank's definition).
    """
    ers_column = Column(RANKED_SCORE, score_label(RANKED_SCORE), 1, 1.0, "Empirical Robustness Score of the "
                        "standard 32-step run, 0–100, scale-free: TMA centred on the clean gallery and ES:D relative "
                        "to its spread", "score")
    protocol_column = Column(PROTOCOL_KEY, score_label(PROTOCOL_KEY), 1, 1.0, "ERS of the standard run (32 fixed "
                             "steps, last iterate) exactly as RobRank defines it (raw TMA cosine, absolute ES:D), for "
                             "comparison with published numbers; rewards embeddings shrunk into a tiny cap", "score")
    if strong:
        columns = [
            Column(STRONG_SCORE, score_label(STRONG_SCORE), 1, 1.0, "Strong ERS, 0–100, the ranking key: the "
                   "scale-free ERS of the per-query worst case over the strong evaluation (a longer fixed-step PGD "
                   "run's best iterate and APGD, at the profile's ε)", "score"),
            protocol_column,
            Column(DROP_KEY, score_label(DROP_KEY), 1, 1.0, "ERS − Strong ERS (same scale-free formula): what the "
                   f"stronger attack takes away; above {UNRELIABLE_TOLERANCE:g} on any seed the entry is marked "
                   f"{UNRELIABLE_LABEL}", "score"),
            ers_column,
        ]
    else:
        columns = [ers_column, protocol_column]
    columns += [
        Column("ARS", "ARS", 1, 1.0, "Adversarial Resistance Score averaged over 8 attacks, 0–100", "score"),
        Column("R@1", "R@1", 1, 100.0, "Recall@1 on the test split, %", "benign"),
        Column("R@1:faiss-f32", "R@1 f32 index", 1, 100.0, "Recall@1 as a float32 faiss IndexFlatL2 returns it for a "
               "batch search of every test query (what a deployment gets), %", "benign"),
    ]
    if audited:
        columns += [
            Column("audit:ERS:strong", "Audit strong ERS", 1, 1.0, "ERS under the audit's strong evaluation: per "
                   "query the worst case over the standard run, random restarts, 4× the steps and APGD", "score"),
            Column("audit:drop", "Audit drop", 1, 1.0, "standard ERS − the audit's strong ERS (how much a stronger "
                   "attack takes away)", "score"),
        ]
    if legacy_audit:
        columns += [
            Column("audit:ERS:strong:RobRank", "Audit strong ERS (RobRank)", 1, 1.0, "strong ERS of an audit stored before "
                   "the scale-free ERS existed, under RobRank's definitions", "score"),
            Column("audit:drop:RobRank", "Audit drop (RobRank)", 1, 1.0, "ERS (RobRank) − the audit's strong ERS "
                   "(RobRank)", "score"),
        ]
    columns += [
        Column("spread_vs_nt", "Spread % NT", 2, 100.0, "mean pairwise distance of the clean test gallery relative "
               "to natural training's (same seed), % (from the last quarter of training batches where the cell "
               f"predates the gallery measurement); below {100 * SHRUNK_FRACTION:.0f} % the entry is shrunk", "benign"),
        Column("R@2", "R@2", 1, 100.0, "Recall@2 on the test split, %", "benign"),
        Column("mAP", "mAP", 1, 100.0, "mean average precision on the test split, %", "benign"),
        Column("NMI", "NMI", 1, 100.0, "normalised mutual information of k-means clusters, %", "benign"),
    ]
    for column in attack_value_columns:
        columns.append(column if isinstance(column, Column)
                       else Column(column, column, 2, 1.0, f"{column} (not part of ERS/ARS)", "plugin"))
    columns += [
        Column("R@1:faiss-f16", "R@1 f16 index", 1, 100.0, "Recall@1 from a faiss index storing float16 "
               "(IndexScalarQuantizer QT_fp16, L2), batch search, %", "benign"),
        Column("WHM", "WHM", 1, 100.0, "weighted harmonic mean of train and test R@1, %", "score"),
        Column("train_pgd_steps", "PGD steps", 0, 1.0, "PGD steps per training batch", "cost", zero_std=False),
        Column("train_seconds", "Train s", 1, 1.0, "training wall time, seconds", "cost"),
        Column("attack_time", "Attack s", 1, 1.0, "sum of the attacks' wall times, seconds", "cost"),
        Column("eval_seconds", "Eval s", 1, 1.0, "evaluation wall time (gallery, benign metrics, attacks), s", "cost"),
    ]
    if audited or legacy_audit:
        columns.append(Column("audit:audit_seconds", "Audit s", 1, 1.0,
                              "wall time of the attack-strength audit (loading or retraining the model not counted), s",
                              "cost"))
    return columns


def format_stat(mean: float, std: float, n: int, decimals: int, n_entry: int | None = None) -> str:
    """``mean ± std`` over seeds at a fixed precision; ``mean`` alone for one seed; ``—`` for none.

    The sample standard deviation (ddof 1) is used. When fewer seeds than the entry has carry
    the value, ``(n=k)`` is appended so a partial average is never mistaken for a full one.
    """
    if n == 0 or not math.isfinite(mean):
        return "—"
    text = f"{mean:.{decimals}f}"
    if n > 1 and math.isfinite(std):
        text += f" ± {std:.{decimals}f}"
    if n_entry is not None and n < n_entry:
        text += f" (n={n})"
    return text


def _time_decimals(seconds: float) -> int:
    return 0 if seconds >= 100 else 1 if seconds >= 1 else 2


@dataclass
class EntrySummary:
    """Mean, std and count over seeds of every column for one entry (the plots read these)."""

    entry: str
    n: int
    mean: dict[str, float]
    std: dict[str, float]
    count: dict[str, int]
    collapsed: int
    is_plugin: bool
    plugin_hashes: list[str]
    defense_params: str
    cell_ids: list[str]
    values: dict[str, list[float]] = field(default_factory=dict)  # per seed, for minima and replication


def summarise(table: pd.DataFrame, columns: Sequence[Column]) -> list[EntrySummary]:
    """Aggregate the per-cell table over seeds, one summary per entry, sorted by the board's ranking
    key (:func:`ranking_key`: Strong ERS, or its fallback), descending.

    Besides the columns, the ``training:*`` numbers of the cells are aggregated too (the COLO
    activity and replication tables read them). Ties and a missing ranking key fall back to R@1 (desc),
    then the entry name, so the order is stable.
    """
    summaries = []
    keys = [c.key for c in columns]
    keys += [c for c in table.columns if str(c).startswith(("training:", "audit:", "spread:", "R@1:")) and c not in keys]
    keys += [c for c in (STRONG_SCORE, RANKED_SCORE, PROTOCOL_KEY, DROP_KEY) if c in table.columns and c not in keys]
    keys += [c for c in VERDICT_KEYS if c not in keys]
    for entry, group in table.groupby("entry", sort=True):
        values = group.reindex(columns=keys).apply(pd.to_numeric, errors="coerce").astype(float)
        hashes = sorted({str(h) for h in group.get("plugin_hash", pd.Series(dtype=str)).fillna("") if str(h)})
        params = sorted({str(p) for p in group.get("defense_params", pd.Series(dtype=str)).fillna("")})
        summaries.append(EntrySummary(
            entry=str(entry), n=len(group),
            mean={k: float(values[k].mean()) for k in keys},
            std={k: float(values[k].std(ddof=1)) for k in keys},
            count={k: int(values[k].notna().sum()) for k in keys},
            collapsed=int(group["collapsed"].fillna(False).astype(bool).sum()) if "collapsed" in group else 0,
            is_plugin=bool(group["is_plugin"].fillna(False).astype(bool).any()) if "is_plugin" in group else False,
            plugin_hashes=hashes, defense_params="; ".join(p for p in params if p),
            cell_ids=[str(c) for c in group.index],
            values={k: [float(v) for v in values[k]] for k in keys},
        ))

    key = ranking_key(summaries)

    def order(s: EntrySummary) -> tuple[float, float, str]:
        ers, r1 = s.mean.get(key, math.nan), s.mean.get("R@1", math.nan)
        return (-ers if math.isfinite(ers) else math.inf, -r1 if math.isfinite(r1) else math.inf, s.entry)

    return sorted(summaries, key=order)


# Per-cell verdicts (1/0/NaN) that the board counts over seeds.
VERDICT_KEYS = ("shrunk", "entangled", "index_breaks", UNRELIABLE_KEY)


def ranking_key(summaries: Sequence[EntrySummary]) -> str:
    """The column a board is ordered by: :data:`RANKING_KEY` (Strong ERS, declared in
    :mod:`benchmark.report.ranking`, the one place the templates, captions and the sort read) when
    any entry has it, else the first of its fallbacks that one has (the scale-free ERS, then
    RobRank's ERS: a store evaluated before them)."""
    return choose_key({key for s in summaries for key, value in s.mean.items() if math.isfinite(value)})


def _rank_cell(rank: int, interval: RankInterval | None, with_intervals: bool) -> TableCell:
    """``2 (1–4)``: the rank and its 95 % bootstrap interval; ``2 (—)`` for an entry without per-query
    values on a board that has intervals; the bare rank on a board without any."""
    if not with_intervals:
        return TableCell(str(rank), rank)
    return TableCell(f"{rank} ({interval.text if interval is not None else '—'})", rank)


def unreliable(s: EntrySummary) -> bool:
    """Some seed's Drop exceeds the audit's tolerance: the 32-step RobRank protocol misjudges this entry."""
    return any(math.isfinite(v) and v > 0 for v in s.values.get(UNRELIABLE_KEY, []))


def _table_rows(summaries: Sequence[EntrySummary], columns: Sequence[Column],
                intervals: Sequence[RankInterval | None] | None = None) -> list[Row]:
    intervals = list(intervals) if intervals is not None else [None] * len(summaries)
    with_intervals = any(i is not None for i in intervals)
    rows = []
    for rank, (s, interval) in enumerate(zip(summaries, intervals), start=1):
        cells = []
        for column in columns:
            mean, std, n = s.mean[column.key] * column.scale, s.std[column.key] * column.scale, s.count[column.key]
            decimals = _time_decimals(mean) if column.group == "cost" and column.key != "train_pgd_steps" \
                else column.decimals
            sort = mean if n and math.isfinite(mean) else None
            if not column.zero_std and std == 0.0:
                std = math.nan
            cells.append(TableCell(format_stat(mean, std, n, decimals, s.n), sort))
        shrunk, entangled = verdict_cell(s, "shrunk"), verdict_cell(s, "entangled")
        if s.is_plugin:
            kind = TableCell("plugin " + ", ".join(h[:8] for h in s.plugin_hashes) if s.plugin_hashes else "plugin",
                        "plugin")
        else:
            kind = TableCell("built-in", "built-in")
        for column, cell in zip(columns, cells):
            if column.key == "R@1:faiss-f32" and s.count.get("index_breaks") and s.mean.get("index_breaks", 0) > 0:
                cell.text += " (breaks)"
                cell.css = "warn"
        flagged = unreliable(s)
        for column, cell in zip(columns, cells):
            if column.key == DROP_KEY and flagged:
                cell.badge = UNRELIABLE_LABEL
                cell.css = f"warn {UNRELIABLE_CSS}"
        rows.append(Row(rank, s.entry, s.defense_params, s.n, cells, shrunk, entangled, kind, audit_cell(s),
                        rank_cell=_rank_cell(rank, interval, with_intervals), interval=interval,
                        unreliable=flagged))
    return rows


def verdict_cell(s: EntrySummary, key: str) -> TableCell:
    """``k/n`` seeds with the verdict; ``?`` for seeds where it could not be decided (e.g. no NT cell
    of that seed to compare the spread with)."""
    known = [v for v in s.values.get(key, []) if math.isfinite(v)]
    flagged = int(sum(v > 0 for v in known))
    text = f"{flagged}/{len(known)}" if known else "?"
    if known and len(known) < s.n:
        text += f" ({s.n - len(known)} ?)"
    return TableCell(text, flagged / len(known) if known else -1.0, "warn" if flagged else "")


def audit_cell(s: EntrySummary) -> TableCell:
    """The Audit column: how many seeds were audited, and which sanity checks flagged any of them."""
    audited = len([v for v in s.values.get("audit:flagged", []) if math.isfinite(v)])
    if audited == 0:
        return TableCell("not audited" if not s.is_plugin else "UNAUDITED plugin", -1.0, "warn" if s.is_plugin else "")
    flagged = [label for key, label in AUDIT_CHECKS
               if any(math.isfinite(v) and v > 0 for v in s.values.get(f"audit:{key}", []))]
    seeds = int(sum(v > 0 for v in s.values.get("audit:flagged", []) if math.isfinite(v)))
    suffix = f" ({audited}/{s.n} seeds audited)" if audited < s.n else ""
    if flagged:
        return TableCell(f"FLAGGED {seeds}/{audited}: " + ", ".join(flagged) + suffix, float(seeds), "warn")
    return TableCell(f"pass {audited}/{audited}" + suffix, 0.0)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (maximising both)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front
