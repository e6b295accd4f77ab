"""Leaderboards from the results store (SPEC §8): one HTML page and one Markdown file per
(dataset, preset, profile), an index linking them, and the plots they embed.

The page is a template over data (the RobustBench idea): this module turns the tidy long rows of
:mod:`benchmark.schema` into one :class:`Board` per (dataset, preset, profile id + version) —
entries aggregated over seeds as mean ± std with n — and hands it to the jinja2 templates in
``benchmark/templates``. HTML is rendered with autoescape on; Markdown escapes every value it
prints (``|``, ``<``, ``>``, ``&`` and the inline markup characters), so a defense or parameter
named ``<script>...`` is shown as text on both.

Plots are drawn with matplotlib's Agg backend at dpi 100, embedded in the HTML as base64 PNG data
URIs (the page fetches nothing) and written as PNG files beside the Markdown, which links them.
Rendering is deterministic: the same store gives the same bytes (no "generated at" clock time;
the page shows the created-at range of the rows instead).
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from .errors import BenchmarkError
from .replication import ACTIVITY_COLUMNS, ActivityRow, Replication, colo_activity, replication
from .schema import ALL_COLUMNS
from .scores import ERS_KEYS, ERS_TERMS

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATE_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"

# Row groups that are not attacks (``attack`` column values).
NON_ATTACK_GROUPS = ("benign", "score", "training")

# Rows the leaderboard cannot be built without; the other schema columns are optional extras.
REQUIRED_COLUMNS = ("dataset", "preset", "profile", "entry", "seed", "cell_id", "attack", "metric", "value")

@dataclass(frozen=True)
class Column:
    """One leaderboard column: where its number comes from and how to print it."""

    key: str  # column of the per-cell table
    label: str
    decimals: int = 1
    scale: float = 1.0  # fractions (R@1, WHM) are printed as percent
    title: str = ""  # tooltip / legend text
    group: str = ""  # "benign", "attack", "plugin", "score", "cost"
    zero_std: bool = True  # False: a setting, not a measurement; "± 0" over seeds says nothing


@dataclass
class Cell:
    """A printed table cell: the text and the raw number the HTML table sorts by."""

    text: str
    sort: float | str | None = None
    css: str = ""


@dataclass
class Row:
    rank: int
    entry: str
    defense_params: str
    seeds: int
    cells: list[Cell]
    collapsed: Cell
    kind: Cell


@dataclass(frozen=True)
class BoardKey:
    dataset: str
    preset: str
    profile: str
    profile_version: int
    preset_version: int = 1

    @property
    def profile_id(self) -> str:
        return f"{self.profile}-v{self.profile_version}"

    @property
    def preset_id(self) -> str:
        """``quick v2``; version 1 is shown as the bare name."""
        return self.preset if self.preset_version == 1 else f"{self.preset} v{self.preset_version}"

    @property
    def slug(self) -> str:
        """File stem: only ``[a-z0-9.-]`` so it is safe as a path and as a Markdown link target."""
        preset = self.preset if self.preset_version == 1 else f"{self.preset}-v{self.preset_version}"
        raw = f"{self.dataset}-{preset}-{self.profile_id}"
        return re.sub(r"[^a-z0-9.]+", "-", raw.lower()).strip("-.") or "board"


@dataclass
class Figure:
    name: str  # short id: ers-r1, ers-cost, attacks, curves
    title: str
    caption: str
    png: bytes | None  # None when there was nothing to draw
    file: str = ""  # PNG file name beside the Markdown

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png or b"").decode("ascii")


@dataclass
class Board:
    """Everything one leaderboard page shows."""

    key: BoardKey
    columns: list[Column]
    rows: list[Row]
    protocol: list[tuple[str, str]]
    provenance: list[tuple[str, str]]
    figures: list[Figure] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    split_description: str = ""
    faithful: bool = True  # every row trained with the defenses' own published adversaries
    replication: Replication | None = None
    activity: list[ActivityRow] = field(default_factory=list)
    activity_columns: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.key.dataset} · {self.key.preset_id} · {self.key.profile_id}"

    @property
    def not_a_ranking(self) -> str:
        """The warning the page opens with when its rows are not a ranking ("" when they are)."""
        if self.faithful:
            return ""
        return ("NOT A RANKING. These models were trained with a reduced adversary (the preset divides each "
                "defense's training PGD steps and multiplies the step size, which turns a 32-step PGD "
                "adversary into one or two FGSM-like steps), or the rows do not record their training "
                "adversary. The numbers test the pipeline; they do not measure the published defenses. "
                "Ranked boards come from a faithful preset (quick v2 or paper).")

    @property
    def plugin_entries(self) -> list[str]:
        """Entries that come from plugins, in leaderboard order (shown on the index)."""
        return [row.entry for row in self.rows if row.kind.sort == "plugin"]


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
    return frame[mask]


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
        in_ers = (not plugin) and metric in ERS_KEYS
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
    ers_order = {key: i for i, key in enumerate(ERS_KEYS)}
    return sorted(columns, key=lambda c: (c.group != "attack", ers_order.get(c.key, 0), c.label))


def cell_table(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[Column]]:
    """One row per matrix cell (one trained model): every number the leaderboard aggregates.

    Returns the table (index ``cell_id``) and the attack-value columns described by the rows
    (:func:`attack_columns`). Attack values are the ``adversarial`` variant; values outside ERS
    (plugin attacks) get columns keyed ``attack:metric`` and never feed ERS/ARS (those come from
    the stored ``score`` rows).
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
    attack_rows = rows[~rows["attack"].isin(NON_ATTACK_GROUPS)]
    adversarial = attack_rows[attack_rows["variant"] == "adversarial"]
    columns = attack_columns(adversarial)
    in_ers = ~adversarial["attack_plugin"] & adversarial["metric"].isin(ERS_KEYS)
    keys = pd.Series(np.where(in_ers, adversarial["metric"].astype(str),
                              adversarial["attack"].astype(str) + ":" + adversarial["metric"].astype(str)),
                     index=adversarial.index, dtype=object)
    training_labels = "training:" + training["metric"].astype(str)
    parts = [pivot(benign), pivot(adversarial, keys), pivot(scores), pivot(training, training_labels)]
    for part in parts:
        table = table.join(part, how="left", rsuffix="_dup")
    # Attack time: each attack's seconds are repeated on its metric rows, so count each attack once.
    if "attack_seconds" in attack_rows.columns and not attack_rows.empty:
        per_attack = attack_rows.groupby(["cell_id", "attack"])["attack_seconds"].first()
        table["attack_time"] = per_attack.groupby(level="cell_id").sum()
    else:
        table["attack_time"] = np.nan
    return table, columns


def leaderboard_columns(attack_value_columns: Sequence[Column | str] = ()) -> list[Column]:
    """The numeric columns in page order (Entry, Seeds, Collapsed and Kind are added around them).

    Headline first: ERS (the ranking key), ARS and R@1 right after the entry name; then the other
    benign metrics, the attack values as the rows describe them (:func:`attack_columns`), WHM and
    the cost columns. A bare string is an attack value column with that key and label.
    """
    columns = [
        Column("ERS", "ERS", 1, 1.0, "Empirical Robustness Score, 0–100 (the ranking key)", "score"),
        Column("ARS", "ARS", 1, 1.0, "Adversarial Resistance Score averaged over 8 attacks, 0–100", "score"),
        Column("R@1", "R@1", 1, 100.0, "Recall@1 on the test split, %", "benign"),
        Column("R@2", "R@2", 1, 100.0, "Recall@2 on the test split, %", "benign"),
        Column("mAP", "mAP", 1, 100.0, "mean average precision on the test split, %", "benign"),
        Column("NMI", "NMI", 1, 100.0, "normalised mutual information of k-means clusters, %", "benign"),
    ]
    for column in attack_value_columns:
        columns.append(column if isinstance(column, Column)
                       else Column(column, column, 2, 1.0, f"{column} (not part of ERS/ARS)", "plugin"))
    columns += [
        Column("WHM", "WHM", 1, 100.0, "weighted harmonic mean of train and test R@1, %", "score"),
        Column("train_pgd_steps", "PGD steps", 0, 1.0, "PGD steps per training batch", "cost", zero_std=False),
        Column("train_seconds", "Train s", 1, 1.0, "training wall time, seconds", "cost"),
        Column("attack_time", "Attack s", 1, 1.0, "sum of the attacks' wall times, seconds", "cost"),
        Column("eval_seconds", "Eval s", 1, 1.0, "evaluation wall time (gallery, benign metrics, attacks), s", "cost"),
    ]
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
    """Aggregate the per-cell table over seeds, one summary per entry, sorted by ERS (desc).

    Besides the columns, the ``training:*`` numbers of the cells are aggregated too (the COLO
    activity and replication tables read them). Ties and missing ERS fall back to R@1 (desc),
    then the entry name, so the order is stable.
    """
    summaries = []
    keys = [c.key for c in columns]
    keys += [c for c in table.columns if str(c).startswith("training:") and c not in keys]
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

    def order(s: EntrySummary) -> tuple[float, float, str]:
        ers, r1 = s.mean.get("ERS", math.nan), s.mean.get("R@1", math.nan)
        return (-ers if math.isfinite(ers) else math.inf, -r1 if math.isfinite(r1) else math.inf, s.entry)

    return sorted(summaries, key=order)


def _table_rows(summaries: Sequence[EntrySummary], columns: Sequence[Column]) -> list[Row]:
    rows = []
    for rank, s in enumerate(summaries, start=1):
        cells = []
        for column in columns:
            mean, std, n = s.mean[column.key] * column.scale, s.std[column.key] * column.scale, s.count[column.key]
            decimals = _time_decimals(mean) if column.group == "cost" and column.key != "train_pgd_steps" \
                else column.decimals
            sort = mean if n and math.isfinite(mean) else None
            if not column.zero_std and std == 0.0:
                std = math.nan
            cells.append(Cell(format_stat(mean, std, n, decimals, s.n), sort))
        collapsed = Cell(f"{s.collapsed}/{s.n}", s.collapsed / max(s.n, 1), "warn" if s.collapsed else "")
        if s.is_plugin:
            kind = Cell("plugin " + ", ".join(h[:8] for h in s.plugin_hashes) if s.plugin_hashes else "plugin",
                        "plugin")
        else:
            kind = Cell("built-in", "built-in")
        rows.append(Row(rank, s.entry, s.defense_params, s.n, cells, collapsed, kind))
    return rows


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (maximising both)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


# --------------------------------------------------------------------------------------------
# Protocol and provenance


def _fraction_of_255(value: float) -> str:
    scaled = value * 255.0
    if abs(scaled - round(scaled)) < 1e-6:
        return f"{int(round(scaled))}/255 = {value:.4f}"
    return f"{scaled:.2f}/255 = {value:.4f}"


def _unique(rows: pd.DataFrame, column: str) -> list[Any]:
    if column not in rows.columns:
        return []
    values = rows[column].dropna().unique().tolist()
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def _join(values: Sequence[Any], fmt: Any = str) -> str:
    return ", ".join(fmt(v) for v in values) if len(values) else "unknown"


def _registry_description(registry_name: str, name: str) -> str:
    """A registry's description of ``name`` (the dataset split, the preset), or "" if unknown."""
    try:
        from . import datasets, presets, registry  # noqa: F401  (importing them fills the registries)

        return getattr(registry, registry_name).get(name).description
    except Exception:  # an unknown or plugin name only loses the description line
        return ""


def _registry_preset_version(name: str) -> int | None:
    try:
        from .registry import PRESETS

        return int(PRESETS.get(name).obj.version)
    except Exception:
        return None


def protocol_lines(rows: pd.DataFrame, key: BoardKey, split_description: str) -> list[tuple[str, str]]:
    lines = [("Dataset", key.dataset + (f" — {split_description}" if split_description else ""))]
    profile = f"{key.profile} (version {key.profile_version})"
    lines.append(("Attack profile", profile))
    eps = _unique(rows, "epsilon")
    alpha = _unique(rows, "alpha")
    steps = _unique(rows, "attack_steps")
    lines.append(("ε (L∞ budget)", _join(eps, _fraction_of_255)))
    lines.append(("α (step size)", _join(alpha, _fraction_of_255)))
    lines.append(("Attack PGD steps", _join(steps, lambda v: str(int(v)))))
    preset_text = key.preset_id
    description = _registry_description("PRESETS", key.preset)
    if description and _registry_preset_version(key.preset) == key.preset_version:
        preset_text += f" — {description}"
    lines.append(("Preset", preset_text))
    if "faithful" in rows.columns:
        adversary = ("each defense's own published training adversary (ε, PGD steps, step size, schedules, "
                     "stopping rules)" if bool(rows["faithful"].all())
                     else "REDUCED (training PGD steps divided, step multiplied): not a ranking")
        lines.append(("Training adversary", adversary))
    lines.append(("Epochs", _join(_unique(rows, "epochs"), lambda v: str(int(v)))))
    lines.append(("Batch", _join(_unique(rows, "batch_pairs"),
                                 lambda v: f"{int(v)} pairs (SPC-2, {2 * int(v)} images)")))
    lines.append(("Attack queries", _join(_unique(rows, "attack_queries"), lambda v: str(int(v)))))
    lines.append(("Seeds", _join(_unique(rows, "seed"), lambda v: str(int(v)))))
    lines.append(("Models", _join(_unique(rows, "model"))))
    return lines


def provenance_lines(rows: pd.DataFrame) -> list[tuple[str, str]]:
    lines = [
        ("Package version", _join(_unique(rows, "package_version"))),
        ("Git commit(s)", _join(_unique(rows, "git_commit"))),
        ("torch", _join(_unique(rows, "torch_version"))),
        ("faiss", _join(_unique(rows, "faiss_version"))),
        ("Device(s)", _join(_unique(rows, "device_name"))),
    ]
    if "created_at" in rows.columns and rows["created_at"].notna().any():
        created = pd.to_datetime(rows["created_at"], utc=True)
        first, last = created.min(), created.max()
        text = first.strftime("%Y-%m-%d %H:%M UTC")
        if last.floor("min") != first.floor("min"):
            text += " – " + last.strftime("%Y-%m-%d %H:%M UTC")
        lines.append(("Created", text))
    else:
        lines.append(("Created", "unknown"))
    lines.append(("Cells", str(rows["cell_id"].nunique())))
    return lines


# --------------------------------------------------------------------------------------------
# Plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # never a display: rendering runs headless and in CI
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    # No "Software" metadata: the same store renders to the same bytes across matplotlib patches.
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return buffer.getvalue()


def _colors(n: int) -> list[Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _label(text: str) -> str:
    """A plot label shown literally: matplotlib would read ``$...$`` in an entry name as math."""
    return text.replace("$", r"\$")


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def plot_ers_vs_r1(summaries: Sequence[EntrySummary]) -> Figure:
    points = [(s.mean["R@1"] * 100, s.mean["ERS"]) for s in summaries]
    usable = [i for i, p in enumerate(points) if _finite(*p)]
    front = [usable[i] for i in pareto_front([points[i] for i in usable])]
    names = ", ".join(summaries[i].entry for i in sorted(front, key=lambda i: points[i][0]))
    caption = ("ERS against benign R@1 (mean over seeds; bars: ± std). Ringed points form the Pareto front "
               f"(no entry is better on both): {names or 'none'}.")
    if not usable:
        return Figure("ers-r1", "Robustness vs benign quality", caption, None)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = _colors(len(summaries))
    for i in usable:
        s = summaries[i]
        ax.errorbar(points[i][0], points[i][1], xerr=np.nan_to_num(s.std["R@1"] * 100),
                    yerr=np.nan_to_num(s.std["ERS"]), fmt="o", color=colors[i], ms=6, capsize=2, label=_label(s.entry))
        ax.annotate(_label(s.entry), points[i], textcoords="offset points", xytext=(5, 4), fontsize=7)
    if front:
        ordered = sorted(front, key=lambda i: points[i][0])
        ax.step([points[i][0] for i in ordered], [points[i][1] for i in ordered], where="post",
                color="0.3", lw=1, ls="--", zorder=0)
        ax.scatter([points[i][0] for i in front], [points[i][1] for i in front], s=160, facecolors="none",
                   edgecolors="black", lw=1.2, label="Pareto front", zorder=3)
    ax.set_xlabel("benign R@1 (%)")
    ax.set_ylabel("ERS")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return Figure("ers-r1", "Robustness vs benign quality", caption, _png(fig))


def plot_ers_vs_cost(summaries: Sequence[EntrySummary]) -> Figure:
    caption = "ERS against training wall time (log scale; mean over seeds). Up and to the left is cheaper robustness."
    points = [(s.mean["train_seconds"], s.mean["ERS"]) for s in summaries]
    usable = [i for i, (x, y) in enumerate(points) if _finite(x, y) and x > 0]
    if not usable:
        return Figure("ers-cost", "Robustness vs training cost", caption, None)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = _colors(len(summaries))
    for i in usable:
        ax.scatter(*points[i], color=colors[i], s=36, label=_label(summaries[i].entry))
        ax.annotate(_label(summaries[i].entry), points[i], textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("training time (s, log scale)")
    ax.set_ylabel("ERS")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    return Figure("ers-cost", "Robustness vs training cost", caption, _png(fig))


def plot_attack_bars(summaries: Sequence[EntrySummary], columns: Sequence[Column] = ()) -> Figure:
    caption = ("Each raw attack value is mapped to its ERS term (2·CA+, 100−CA−, 2·QA+, "
               "100−QA−, 100·(1−TMA), 50·(2−ES:D), ES:R, LTM, GTM, GTT) so all bars share one 0–100 scale where "
               "higher is more robust; ERS is the mean of the ten bars.")
    shown = [s for s in summaries if any(math.isfinite(s.mean.get(k, math.nan)) for k in ERS_KEYS)]
    if not shown:
        return Figure("attacks", "Per-attack robustness", caption, None)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.0, 3.8))
    width = 0.8 / len(shown)
    x = np.arange(len(ERS_KEYS))
    colors = _colors(len(summaries))
    for j, s in enumerate(shown):
        terms = [ERS_TERMS[k](s.mean[k]) if math.isfinite(s.mean.get(k, math.nan)) else np.nan for k in ERS_KEYS]
        ax.bar(x - 0.4 + width * (j + 0.5), terms, width, color=colors[summaries.index(s)], label=_label(s.entry))
    labels = {c.key: c.label.rstrip(" ↑↓") for c in columns if c.group == "attack"}
    ax.set_xticks(x, [labels.get(k, k) for k in ERS_KEYS])
    ax.set_ylabel("ERS term (0–100, ↑ robust)")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=min(len(shown), 5), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    return Figure("attacks", "Per-attack robustness", caption, _png(fig))


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    padded = np.pad(values, (window // 2, window - 1 - window // 2), mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def training_curves(telemetry: pd.DataFrame, summaries: Sequence[EntrySummary],
                    metrics: Sequence[str] = ("collapseness", "separability"),
                    points: int = 200) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Per entry and metric: (x in epochs, mean over seeds, std over seeds) on a common grid.

    Each cell's curve is smoothed with a moving average (about 4% of its steps) and resampled onto
    ``points`` positions spanning its epochs, so seeds with different step counts average cleanly.
    """
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    if telemetry is None or telemetry.empty or "cell_id" not in telemetry.columns:
        return curves
    for s in summaries:
        part = telemetry[telemetry["cell_id"].astype(str).isin(s.cell_ids)]
        if part.empty:
            continue
        per_metric: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for metric in metrics:
            if metric not in part.columns:
                continue
            resampled, span = [], 0.0
            for _, cell in part.groupby("cell_id"):
                cell = cell.sort_values("step")
                values = pd.to_numeric(cell[metric], errors="coerce").to_numpy(dtype=float)
                keep = np.isfinite(values)
                if keep.sum() < 2:
                    continue
                values = values[keep]
                epochs = float(cell["epoch"].max() + 1) if "epoch" in cell.columns and cell["epoch"].notna().any() \
                    else 1.0
                span = max(span, epochs)
                progress = np.linspace(0.0, 1.0, len(values))
                smoothed = _smooth(values, max(1, len(values) // 25))
                resampled.append(np.interp(np.linspace(0.0, 1.0, points), progress, smoothed))
            if resampled:
                stack = np.vstack(resampled)
                per_metric[metric] = (np.linspace(0.0, span, points), stack.mean(axis=0), stack.std(axis=0))
        if per_metric:
            curves[s.entry] = per_metric
    return curves


def plot_training_curves(telemetry: pd.DataFrame | None, summaries: Sequence[EntrySummary]) -> Figure:
    caption = ("Training curves per defense from the per-step telemetry: collapseness C (d(a,p) − d(a,n), "
               "each weighted toward the samples nearest their anchors as in the COLO-TRIDE paper; above 0 the "
               "batch is collapsing) and separability ((mean d(a,n) − mean d(a,p)) / "
               "mean pairwise distance). Mean over seeds (band: ± std), moving-average smoothed; x in epochs.")
    curves = training_curves(telemetry, summaries) if telemetry is not None else {}
    if not curves:
        return Figure("curves", "Training curves", caption + " No telemetry was found for this leaderboard.", None)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.4))
    colors = _colors(len(summaries))
    for i, s in enumerate(summaries):
        for ax, metric in zip(axes, ("collapseness", "separability")):
            if s.entry in curves and metric in curves[s.entry]:
                x, mean, std = curves[s.entry][metric]
                ax.plot(x, mean, color=colors[i], lw=1.2, label=_label(s.entry))
                ax.fill_between(x, mean - std, mean + std, color=colors[i], alpha=0.15, lw=0)
    for ax, metric in zip(axes, ("collapseness", "separability")):
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].axhline(0.0, color="0.3", lw=0.8, ls="--")
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return Figure("curves", "Training curves", caption, _png(fig))


def plot_clean_collapseness(telemetry: pd.DataFrame | None, summaries: Sequence[EntrySummary]) -> Figure:
    """The COLO decision variable over training: the clean batch's collapseness, per entry that logs it."""
    caption = ("Clean collapseness C of each training batch, the quantity COLO decides on (above 0: assist, or "
               "train clean during the warm-up; at or below 0: attack), for the COLO-TRIDE family and CA-TRIDE "
               "(its own far-weighted C). Mean over seeds (band: ± std), smoothed; x in epochs. The naive "
               "ablations log it without acting on it.")
    key = "x:clean_collapseness"
    curves = training_curves(telemetry, summaries, metrics=(key,)) if telemetry is not None else {}
    curves = {entry: c for entry, c in curves.items() if key in c}
    if not curves:
        return Figure("colo", "COLO: clean collapseness", caption + " No entry on this board logs it.", None)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    colors = _colors(len(summaries))
    for i, s in enumerate(summaries):
        if s.entry in curves:
            x, mean, std = curves[s.entry][key]
            ax.plot(x, mean, color=colors[i], lw=1.2, label=_label(s.entry))
            ax.fill_between(x, mean - std, mean + std, color=colors[i], alpha=0.15, lw=0)
    ax.axhline(0.0, color="0.3", lw=0.8, ls="--")
    ax.set_xlabel("epoch")
    ax.set_ylabel("clean collapseness C")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return Figure("colo", "COLO: clean collapseness", caption, _png(fig))


# --------------------------------------------------------------------------------------------
# Templates

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def markdown_escape(value: Any) -> str:
    """Text safe inside a Markdown table cell: markup characters backslash-escaped, HTML made inert.

    ``<``, ``>`` and ``&`` become entities (so raw HTML never reaches a renderer that passes it
    through), ``|`` cannot end a cell, and line breaks become spaces.
    """
    if isinstance(value, Markup):
        return str(value)
    text = "" if value is None else str(value)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return re.sub(r"[\r\n]+", " ", text)


def _environment(kind: str) -> Environment:
    if kind == "html":
        env = Environment(loader=FileSystemLoader(str(TEMPLATE_DIR)), trim_blocks=True, lstrip_blocks=True,
                          autoescape=select_autoescape(enabled_extensions=("html", "html.j2"),
                                                       default_for_string=True, default=True),
                          keep_trailing_newline=True)
    else:
        # Markdown has no autoescape of its own: every printed value goes through markdown_escape.
        env = Environment(loader=FileSystemLoader(str(TEMPLATE_DIR)), trim_blocks=True, lstrip_blocks=True,
                          autoescape=False, finalize=markdown_escape, keep_trailing_newline=True)
    return env


def _static(name: str) -> Markup:
    # Our own files, inlined so the page needs no network and no neighbouring files.
    return Markup((STATIC_DIR / name).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# Public entry points


def build_boards(results: pd.DataFrame, telemetry: pd.DataFrame | None = None, *,
                 split_descriptions: Mapping[str, str] | None = None, plots: bool = True) -> list[Board]:
    """Every leaderboard the store holds, aggregated, with its protocol, provenance and plots."""
    frame = _check_frame(results)
    boards = []
    for key in board_keys(frame):
        rows = _board_rows(frame, key)
        table, value_columns = cell_table(rows)
        columns = leaderboard_columns(value_columns)
        summaries = summarise(table, columns)
        split = (split_descriptions or {}).get(key.dataset) or _registry_description("DATASETS", key.dataset)
        board = Board(key, columns, _table_rows(summaries, columns), protocol_lines(rows, key, split),
                      provenance_lines(rows), seeds=[int(s) for s in _unique(rows, "seed")],
                      split_description=split, faithful=bool(rows["faithful"].all()),
                      replication=replication(summaries), activity=colo_activity(summaries),
                      activity_columns=[label for _, label in ACTIVITY_COLUMNS] + ["max clean C"])
        if plots:
            figures = [plot_ers_vs_r1(summaries), plot_ers_vs_cost(summaries), plot_attack_bars(summaries, columns),
                       plot_training_curves(telemetry, summaries)]
            if board.activity:
                figures.append(plot_clean_collapseness(telemetry, summaries))
            for figure in figures:
                figure.file = f"{key.slug}-{figure.name}.png" if figure.png else ""
            board.figures = figures
        boards.append(board)
    return boards


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def render_leaderboards(results: pd.DataFrame, telemetry: pd.DataFrame | None, out_dir: Path, *,
                        split_descriptions: Mapping[str, str] | None = None) -> list[Path]:
    """Write ``<slug>.html``, ``<slug>.md`` and the PNG plots per leaderboard, plus ``index.html``/``index.md``.

    ``results`` is the store in the tidy long schema (:mod:`benchmark.schema`); ``telemetry`` the
    per-step table (``TELEMETRY_COLUMNS``) or None; ``split_descriptions`` maps a dataset name to
    the text describing its split (default: the dataset registry's description). Returns every
    file written, index pages last.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BenchmarkError(f"cannot create the leaderboard folder {out_dir}: {error}") from None
    boards = build_boards(results, telemetry, split_descriptions=split_descriptions)
    html_env, md_env = _environment("html"), _environment("md")
    style, script = _static("leaderboard.css"), _static("leaderboard.js")
    written: list[Path] = []
    for board in boards:
        for figure in board.figures:
            if figure.png:
                written.append(_write(out_dir / figure.file, figure.png))
        context = {"board": board, "style": style, "script": script}
        written.append(_write(out_dir / f"{board.key.slug}.html",
                              html_env.get_template("leaderboard.html.j2").render(**context)))
        written.append(_write(out_dir / f"{board.key.slug}.md",
                              md_env.get_template("leaderboard.md.j2").render(**context)))
    context = {"boards": boards, "style": style}
    written.append(_write(out_dir / "index.html", html_env.get_template("index.html.j2").render(**context)))
    written.append(_write(out_dir / "index.md", md_env.get_template("index.md.j2").render(**context)))
    return written


def render_from_store(results_dir: Path, out_dir: Path, *, dataset: str | None = None,
                      split_descriptions: Mapping[str, str] | None = None) -> list[Path]:
    """Load the store in ``results_dir`` (rows and telemetry) and render its leaderboards into ``out_dir``."""
    from .store import load_results, load_telemetry  # lazy: the store module is not needed to render frames

    results = load_results(Path(results_dir), dataset=dataset)
    if results.empty:
        raise BenchmarkError(f"no results in {results_dir}" + (f" for dataset {dataset!r}" if dataset else "")
                             + ": nothing to render (run a matrix first, e.g. `rrb run`)")
    try:
        telemetry = load_telemetry(Path(results_dir), dataset=dataset,
                                   cell_ids=results["cell_id"].astype(str).unique().tolist())
    except BenchmarkError:
        telemetry = None  # leaderboards without training curves are still leaderboards
    return render_leaderboards(results, telemetry, Path(out_dir), split_descriptions=split_descriptions)
