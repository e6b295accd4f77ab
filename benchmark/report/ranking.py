"""What a board ranks by, declared once: the key, its fallbacks, the labels and CSS classes of the
ranked column, and the "RobRank protocol unreliable" verdict.

Every other part of the report (the sort, the columns, the templates, the index page, the plot
axes and captions, the replication verdicts) reads these names; none writes "ERS" as a sort key
of its own.

* :data:`RANKING_KEY` is Strong ERS (``ERS:strong``): the scale-free ERS of the per-query worst
  case over the strong evaluation (:mod:`benchmark.strong_eval`).
* A board none of whose cells has it (a store evaluated before the strong evaluation existed)
  falls back along :data:`RANKING_ORDER`: the scale-free ERS of the standard 32-step run, then
  RobRank's ERS; the board says so in one line (:func:`ranking_note`).
* :data:`DROP_KEY` is the per-cell drop ``ERS − ERS:strong`` (the same scale-free formula): what
  the stronger attack takes away. A seed whose drop exceeds :data:`UNRELIABLE_TOLERANCE` (the
  audit's tolerance, ``attacks.audit.AuditSpec().tolerance``) marks its entry
  :data:`UNRELIABLE_LABEL` (the issue's ``flag:unconverged``).
"""

from __future__ import annotations

from ..robustness_scores import RANKED_SCORE, ROBRANK_SCORE, ROBRANK_STRONG_SCORE, STRONG_SCORE


def _audit_tolerance() -> float:
    from attacks.audit import AuditSpec

    return float(AuditSpec().tolerance)


# The one place that says what a board ranks by.
RANKING_KEY = STRONG_SCORE
# What a board ranks by when no cell of it has the ranking key, in order of preference.
FALLBACK_KEYS: tuple[str, ...] = (RANKED_SCORE, ROBRANK_SCORE)
RANKING_ORDER: tuple[str, ...] = (RANKING_KEY, *FALLBACK_KEYS)
# The RobRank protocol's own number (32 fixed steps, RobRank's formula), shown for comparison.
PROTOCOL_KEY = ROBRANK_SCORE

# Per-cell columns the board adds: the drop and its verdict (1/0, NaN when the cell has no strong ERS).
DROP_KEY = "drop"
UNRELIABLE_KEY = "unconverged"
# ERS points a seed's drop may reach before the RobRank protocol is called unreliable for the entry.
UNRELIABLE_TOLERANCE = _audit_tolerance()
UNRELIABLE_LABEL = "RobRank protocol unreliable"

# CSS classes: the ranked column's cells, and a row whose entry the RobRank protocol misjudges.
RANKED_CSS = "rank-key"
UNRELIABLE_CSS = "unreliable"

# How each score is named on the boards (column headers, plot axes, replication tables).
SCORE_LABELS: dict[str, str] = {
    STRONG_SCORE: "Strong ERS",
    ROBRANK_SCORE: "ERS (RobRank protocol)",
    RANKED_SCORE: "ERS",
    ROBRANK_STRONG_SCORE: "Strong ERS (RobRank formula)",
    DROP_KEY: "Drop",
}


def score_label(key: str) -> str:
    """The board's name for a score key (the key itself when it has none)."""
    return SCORE_LABELS.get(key, key)


def choose_key(available: set[str]) -> str:
    """The first key of :data:`RANKING_ORDER` that some entry of a board has (the last one when none has any)."""
    return next((key for key in RANKING_ORDER if key in available), RANKING_ORDER[-1])


def ranking_note(key: str) -> str:
    """One sentence on what orders a board's rows, saying so when it is a fallback."""
    if key == RANKING_KEY:
        return (f"Sorted by {score_label(key)}: the scale-free ERS of the per-query worst case over the strong "
                f"evaluation; {score_label(PROTOCOL_KEY)} is the standard 32-step run scored as RobRank does, "
                f"for comparison with published numbers, and {score_label(DROP_KEY)} what the stronger attack "
                f"takes away.")
    fallback = ("the scale-free ERS of the standard 32-step run" if key == RANKED_SCORE
                else "RobRank's own ERS, which rewards embeddings shrunk into a tiny cap")
    return (f"Sorted by {score_label(key)}: no cell on this board has a strong evaluation"
            + ("" if key == RANKED_SCORE else " or a scale-free ERS")
            + f" (its cells predate it), so the rows fall back to {fallback}. "
              f"Re-run the matrix to rank by {score_label(RANKING_KEY)}.")
