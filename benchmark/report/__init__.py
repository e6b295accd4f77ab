"""Leaderboards from the results store (SPEC §8): one HTML page and one Markdown file per
(dataset, preset, profile), an index linking them, and the plots they embed.

The page is a template over data (the RobustBench idea): the tidy long rows of
:mod:`benchmark.schema` become one :class:`Board` per (dataset, preset, profile id + version) —
entries aggregated over seeds as mean ± std with n — handed to the jinja2 templates in
``benchmark/templates``. This module only gathers the package's public names. HTML is rendered with autoescape on; Markdown escapes every value it
prints (``|``, ``<``, ``>``, ``&`` and the inline markup characters), so a defense or parameter
named ``<script>...`` is shown as text on both.

Plots are drawn with matplotlib's Agg backend at dpi 100, embedded in the HTML as base64 PNG data
URIs (the page fetches nothing) and written as PNG files beside the Markdown, which links them.
Rendering is deterministic: the same store gives the same bytes (no "generated at" clock time;
the page shows the created-at range of the rows instead).

The package's parts: :mod:`.ranking` (what a board ranks by, declared once: Strong ERS, its
fallbacks, the labels, the "RobRank protocol unreliable" verdict), :mod:`.model` (the page model:
Board, Row, Column, TableCell, Figure), :mod:`.tables` (per-cell tables, aggregation over seeds,
the columns), :mod:`.intervals` (rank intervals: a bootstrap over seeds and queries),
:mod:`.convergence` (the convergence-study section), :mod:`.protocol` (the protocol and provenance
lines), :mod:`.plots` (figures) and :mod:`.render` (templates and the entry points). The
Replication and COLO-activity sections come from :mod:`benchmark.report.replication`.
"""

from .convergence import Convergence, board_studies, convergence_section
from .intervals import RankInterval, board_rank_intervals, rank_intervals
from .model import Board, BoardKey, Column, Figure, Row, TableCell
from .plots import (
    plot_attack_bars,
    plot_clean_collapseness,
    plot_convergence,
    plot_ers_vs_cost,
    plot_ers_vs_r1,
    plot_training_curves,
    training_curves,
)
from .protocol import protocol_lines, provenance_lines
from .ranking import RANKING_KEY, UNRELIABLE_LABEL, score_label
from .render import build_boards, markdown_escape, render_from_store, render_leaderboards
from .tables import (
    NON_ATTACK_GROUPS,
    EntrySummary,
    attack_columns,
    board_keys,
    cell_table,
    format_stat,
    leaderboard_columns,
    pareto_front,
    summarise,
)

__all__ = ["NON_ATTACK_GROUPS", "RANKING_KEY", "UNRELIABLE_LABEL", "Board", "BoardKey", "Column", "Convergence",
           "EntrySummary", "Figure", "RankInterval", "Row", "TableCell", "attack_columns", "board_keys",
           "board_rank_intervals", "board_studies", "build_boards", "cell_table", "convergence_section",
           "format_stat", "leaderboard_columns", "markdown_escape", "pareto_front", "plot_attack_bars",
           "plot_clean_collapseness", "plot_convergence", "plot_ers_vs_cost", "plot_ers_vs_r1",
           "plot_training_curves", "protocol_lines", "provenance_lines", "rank_intervals", "render_from_store",
           "render_leaderboards", "score_label", "summarise", "training_curves"]
