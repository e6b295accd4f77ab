"""The leaderboard's page model: columns, cells, rows, figures and the board itself (templates read these)."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

from ..shrinkage import SHRUNK_FRACTION
from .ranking import (
    DROP_KEY,
    RANKED_CSS,
    RANKING_KEY,
    UNRELIABLE_CSS,
    UNRELIABLE_LABEL,
    UNRELIABLE_TOLERANCE,
    ranking_note,
    score_label,
)
from .replication import ActivityRow, Replication


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
class TableCell:
    """A printed table cell (not a matrix cell): the text and the raw number the HTML table sorts by."""

    text: str
    sort: float | str | None = None
    css: str = ""
    badge: str = ""  # a short label shown after the text (HTML: a badge; Markdown: in brackets)

    @property
    def full_text(self) -> str:
        """The text with its badge, as plain text (Markdown, tests)."""
        return f"{self.text} ({self.badge})" if self.badge else self.text


@dataclass
class Row:
    rank: int
    entry: str
    defense_params: str
    seeds: int
    cells: list[TableCell]
    shrunk: TableCell  # seeds whose clean test gallery spreads < SHRUNK_FRACTION of natural training's
    entangled: TableCell  # seeds whose late-training separability sank to about 0 (the paper's collapse)
    kind: TableCell
    audit: TableCell | None = None  # the attack-strength audit's verdict (boards that carry audits)
    rank_cell: TableCell | None = None  # "2 (1–4)": the rank and its 95 % bootstrap interval
    interval: Any = None  # intervals.RankInterval, or None without per-query values
    unreliable: bool = False  # some seed's Drop exceeds the tolerance: the RobRank protocol misjudges the entry

    @property
    def rank_text(self) -> str:
        return self.rank_cell.text if self.rank_cell is not None else str(self.rank)

    @property
    def css(self) -> str:
        """The row's CSS class: marks an entry the RobRank protocol misjudges."""
        return UNRELIABLE_CSS if self.unreliable else ""


AUDIT_CHECKS = (("flag:large_epsilon", "large ε"), ("flag:more_steps", "more steps"), ("flag:transfer", "transfer"),
                ("flag:gradient_free", "gradient-free"))


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
    audited: bool = False  # some cell carries an audit, or some entry is a plugin: the audit columns are shown
    ranked_by: str = RANKING_KEY  # the column key the rows are ordered by (tables.ranking_key)
    convergence: Any = None  # convergence.Convergence: the attack's convergence study, where the store has one
    interval_draws: int = 0  # bootstrap draws behind the rank intervals (0: no interval on this board)

    ranked_css = RANKED_CSS  # the CSS class of the ranked column's cells
    unreliable_label = UNRELIABLE_LABEL

    @property
    def ranked_label(self) -> str:
        """The label of the column the board is ordered by."""
        return next((c.label for c in self.columns if c.key == self.ranked_by), score_label(self.ranked_by))

    @property
    def ranking_note(self) -> str:
        """One sentence on what orders the rows; says so when the board falls back to another key."""
        return ranking_note(self.ranked_by)

    @property
    def rank_note(self) -> str:
        """What the Rank column shows."""
        if not self.interval_draws:
            return f"Rank: the position by {self.ranked_label}."
        return (f"Rank: the position by {self.ranked_label}, and in brackets its 95 % interval over "
                f"{self.interval_draws} bootstrap draws (seeds resampled with replacement, and each drawn seed's "
                "queries resampled with replacement; every entry re-ranked per draw); — where the cells store no "
                "per-query values.")

    @property
    def unreliable_entries(self) -> list[str]:
        return [row.entry for row in self.rows if row.unreliable]

    @property
    def has_drop(self) -> bool:
        return any(column.key == DROP_KEY for column in self.columns)

    @property
    def unreliable_findings(self) -> str:
        """One line: the entries the 32-step RobRank protocol misjudges ("" on a board without a Drop column)."""
        if not self.has_drop:
            return ""
        tolerance = f"{UNRELIABLE_TOLERANCE:g} ERS points (the audit's tolerance)"
        entries = self.unreliable_entries
        if not entries:
            return f"No entry: every seed's Drop is within {tolerance}."
        return (", ".join(entries) + f": a seed's Drop exceeds {tolerance}, so the 32-step RobRank protocol has not "
                "converged there and overstates the robustness; rank by Strong ERS.")

    @property
    def shrunk_threshold(self) -> str:
        """The spread below which an entry is called shrunk, as printed (relative to natural training)."""
        return f"{100 * SHRUNK_FRACTION:.0f} %"

    @property
    def geometry_findings(self) -> str:
        """What the embedding geometry says, computed from the rows: shrunk entries, broken indexes."""
        spread = self._column_values("spread_vs_nt")
        shrunk = [row.entry for row in self.rows if row.shrunk.css == "warn"]
        entangled = [row.entry for row in self.rows if row.entangled.css == "warn"]
        broken = [row.entry for row in self.rows
                  if any(cell.css == "warn" for column, cell in zip(self.columns, row.cells)
                         if column.key == "R@1:faiss-f32")]
        parts = []
        if shrunk:
            parts.append(f"Shrunk (clean gallery spread below {self.shrunk_threshold} of natural training's): "
                         + ", ".join(f"{entry} ({spread[entry]:.2f} %)" if entry in spread else entry
                                     for entry in shrunk) + ".")
        else:
            parts.append("No entry is shrunk.")
        parts.append("Entangled (late-training separability ≤ 0.05): " + (", ".join(entangled) or "none") + ".")
        if broken:
            parts.append("A float32 faiss index loses more than 2 points of R@1 on: " + ", ".join(broken)
                         + " (their exact R@1 is not what a deployment returns).")
        elif "R@1:faiss-f32" in {c.key for c in self.columns} and self._column_values("R@1:faiss-f32"):
            parts.append("Every measured entry keeps its R@1 in a float32 faiss index.")
        return " ".join(parts)

    @property
    def title(self) -> str:
        return f"{self.key.dataset} · {self.key.preset_id} · {self.key.profile_id}"

    @property
    def audit_text(self) -> str:
        return ("Each audited cell was attacked again, on the same queries with the same selections: per query "
                "the worst case over the standard run, 2 random restarts, 4× the steps and the adaptive "
                "(APGD) step schedule, all at the profile's ε; Strong ERS is the ERS of those worst cases and "
                "Drop what it takes away. Three sanity checks flag gradient masking: at ε = 1 the attacks must "
                "succeed (ERS ≤ 20); 4× the steps must not raise ERS by more than 2; a transfer attack crafted on "
                "the natural-training model of the same seed must not beat the white-box attack by more than 2. "
                "Audit s is its wall time per cell, not counting loading (or retraining) the model.")

    def _column_values(self, key: str) -> dict[str, float]:
        """Entry -> the raw number of one column (entries without a number are left out)."""
        index = next((i for i, column in enumerate(self.columns) if column.key == key), None)
        if index is None:
            return {}
        return {row.entry: float(row.cells[index].sort) for row in self.rows
                if isinstance(row.cells[index].sort, (int, float))}

    @property
    def audit_findings(self) -> str:
        """What the stored audits say, computed from the rows: the Strong-ERS order, the largest drop, flags."""
        strong, drop, prefix = self._column_values("audit:ERS:strong"), self._column_values("audit:drop"), ""
        if not strong:
            strong, drop = self._column_values("audit:ERS:strong:RobRank"), self._column_values("audit:drop:RobRank")
            prefix = "Under RobRank's ERS definitions (these audits predate the scale-free ERS): "
        if not strong:
            return ("No cell on this board is audited yet (`rrb run --audit`, or `rrb submit` without "
                    "`--no-audit`).")
        order = sorted(strong, key=lambda entry: -strong[entry])
        parts = [prefix + "Ranked by Strong ERS: " + ", ".join(f"{entry} {strong[entry]:.1f}" for entry in order) + "."]
        if drop:
            worst = max(drop, key=lambda entry: drop[entry])
            standard = drop[worst] + strong.get(worst, 0.0)  # the audited seeds' own standard ERS
            share = f" ({drop[worst] / standard:.0%} of its standard ERS)" if standard > 0 else ""
            parts.append(f"Largest drop: {worst}, {drop[worst]:.1f} ERS points{share}.")
        flagged = [row.entry for row in self.rows if row.audit is not None and row.audit.css == "warn"]
        parts.append("Flagged: " + (", ".join(flagged) if flagged else "none") + ".")
        unaudited = [row.entry for row in self.rows if row.entry not in strong]
        if unaudited:
            parts.append("Not audited yet: " + ", ".join(unaudited) + ".")
        return " ".join(parts)

    @property
    def not_a_ranking(self) -> str:
        """The warning the page opens with when its rows are not a ranking ("" when they are)."""
        if self.faithful:
            return ""
        return ("NOT A RANKING. These models were trained with a reduced adversary (the preset divides each "
                "defense's training PGD steps and multiplies the step size, which turns a 32-step PGD "
                "adversary into one or two FGSM-like steps), or the rows do not record their training "
                "adversary. The numbers test the pipeline; they do not measure the published defenses. "
                f"Ranked boards come from a faithful preset ({_faithful_presets()}).")

    @property
    def plugin_entries(self) -> list[str]:
        """Entries that come from plugins, in leaderboard order (shown on the index)."""
        return [row.entry for row in self.rows if row.kind.sort == "plugin"]


def _faithful_presets() -> str:
    """The registered presets that train every defense with its own adversary, e.g. "quick v3 or paper"."""
    from ..presets import PRESETS

    names = [entry.name if entry.obj.version == 1 else f"{entry.name} v{entry.obj.version}"
             for entry in PRESETS.entries() if entry.obj.faithful]
    return " or ".join(names) if names else "none registered"
