"""Rendering: the jinja2 templates over :class:`~benchmark.report.model.Board` data, and the entry points
(:func:`build_boards`, :func:`render_leaderboards`, :func:`render_from_store`).

HTML is rendered with autoescape on; Markdown escapes every value it prints (``|``, ``<``, an ``&``
that would start an entity, and the inline markup characters; see :func:`markdown_escape`), so a
defense or parameter named ``<script>...`` is shown as text on both. Rendering is deterministic: the same store gives the same bytes (no "generated
at" clock time; the page shows the created-at range of the rows instead).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from ..errors import BenchmarkError
from ..robustness_scores import STRONG_SCORE
from .convergence import board_studies, convergence_section
from .intervals import DRAWS, board_rank_intervals
from .model import Board
from .plots import (
    plot_attack_bars,
    plot_clean_collapseness,
    plot_ers_vs_cost,
    plot_ers_vs_r1,
    plot_training_curves,
)
from .protocol import _registry_description, _strong_evaluation, _unique, protocol_lines, provenance_lines
from .replication import ACTIVITY_COLUMNS, colo_activity, replication
from .tables import (
    _board_rows,
    _check_frame,
    _table_rows,
    board_keys,
    cell_table,
    leaderboard_columns,
    ranking_key,
    summarise,
)

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # templates and static files live in benchmark/
TEMPLATE_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#])")
_MD_ENTITY = re.compile(r"&(#[0-9]+;|#[xX][0-9a-fA-F]+;|[A-Za-z][A-Za-z0-9]*;)")


def markdown_escape(value: Any) -> str:
    """Text safe inside a Markdown table cell: markup characters backslash-escaped, HTML made inert.

    ``<`` becomes ``&lt;`` (so no raw HTML tag can start), and ``&`` becomes ``&amp;`` only where it
    would start an entity; ``>`` stays as it is (it opens nothing mid-line; a leading one, which
    would open a block quote, is backslash-escaped), so "a > b" reads the same raw and rendered.
    ``|`` cannot end a cell, and line breaks become spaces.
    """
    if isinstance(value, Markup):
        return str(value)
    text = "" if value is None else str(value)
    text = _MD_ENTITY.sub(r"&amp;\1", text).replace("<", "&lt;")
    text = _MD_SPECIAL.sub(r"\\\1", text)
    text = re.sub(r"[\r\n]+", " ", text)
    return "\\" + text if text.startswith(">") else text


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


def _strong_ids(rows: pd.DataFrame) -> list[str]:
    """The ids of the strong evaluation the board's cells carry (``strong_eval``; "" for none)."""
    return sorted({str(v) for v in rows.get("strong_eval", pd.Series(dtype=str)).dropna() if str(v)})


def _cell_weights(rows: pd.DataFrame) -> dict[str, str]:
    """Cell id -> the weights digest its rows record (cells stored before digests were recorded: none)."""
    from ..checkpoints import WEIGHTS_METRIC

    found = rows[(rows["attack"] == "training") & (rows["metric"] == WEIGHTS_METRIC)]
    return {str(c): str(m) for c, m in zip(found["cell_id"], found["meaning"])}


def build_boards(results: pd.DataFrame, telemetry: pd.DataFrame | None = None, *,
                 split_descriptions: Mapping[str, str] | None = None, plots: bool = True,
                 queries: pd.DataFrame | None = None, studies: pd.DataFrame | None = None,
                 draws: int = DRAWS) -> list[Board]:
    """Every leaderboard the store holds, aggregated, with its protocol, provenance and plots.

    ``queries``: the per-query values of the cells (``benchmark.store.load_queries``), for the rank
    intervals (a bootstrap of ``draws`` draws; without them the Rank column has no interval);
    ``studies``: convergence-study rows (``benchmark.study.load_studies``), for the convergence
    section (omitted without them).
    """
    frame = _check_frame(results)
    boards = []
    for key in board_keys(frame):
        rows = _board_rows(frame, key)
        table, value_columns = cell_table(rows, telemetry)
        # The audit columns appear once any cell is audited, and always beside a plugin: a plugin
        # submitted with --no-audit must read "UNAUDITED plugin", not simply lack the column.
        legacy_audit = bool(table.get("audit:ERS:strong:RobRank", pd.Series(dtype=float)).notna().any())
        audited = bool(((rows["attack"] == "audit").any() and not legacy_audit)
                       or table.get("audit:ERS:strong", pd.Series(dtype=float)).notna().any()
                       or rows["is_plugin"].any())
        strong = bool(table.get(STRONG_SCORE, pd.Series(dtype=float)).notna().any())
        columns = leaderboard_columns(value_columns, audited=audited, legacy_audit=legacy_audit, strong=strong)
        summaries = summarise(table, columns)
        ranked_by = ranking_key(summaries)
        intervals = board_rank_intervals(summaries, queries, ranked_by, draws=draws)
        split = (split_descriptions or {}).get(key.dataset) or _registry_description("DATASETS", key.dataset)
        board = Board(key, columns, _table_rows(summaries, columns, intervals), protocol_lines(rows, key, split),
                      provenance_lines(rows), seeds=[int(s) for s in _unique(rows, "seed")],
                      split_description=split, faithful=bool(rows["faithful"].all()),
                      replication=replication(summaries, ranked_by), activity=colo_activity(summaries),
                      activity_columns=[label for _, label in ACTIVITY_COLUMNS] + ["max clean C"],
                      audited=audited or legacy_audit, ranked_by=ranked_by,
                      interval_draws=draws if any(i is not None for i in intervals) else 0)
        if studies is not None and not studies.empty:
            board_queries = queries if queries is not None and not queries.empty else None
            dataset_studies = studies[studies["dataset"].astype(str) == key.dataset]
            steps = [int(s) for s in _unique(rows, "attack_steps")]
            board.convergence = convergence_section(
                board_studies(dataset_studies, table, board_queries, _cell_weights(rows)), [s.entry for s in summaries],
                standard_steps=steps[0] if len(steps) == 1 else 32, strong_ids=_strong_ids(rows),
                strong_meaning=_strong_evaluation(rows),
                slug=key.slug, colors={s.entry: i for i, s in enumerate(summaries)}, draw=plots)
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
                        split_descriptions: Mapping[str, str] | None = None, queries: pd.DataFrame | None = None,
                        studies: pd.DataFrame | None = None) -> list[Path]:
    """Write ``<slug>.html``, ``<slug>.md`` and the PNG plots per leaderboard, plus ``index.html``/``index.md``.

    ``results`` is the store in the tidy long schema (:mod:`benchmark.schema`); ``telemetry`` the
    per-step table (``TELEMETRY_COLUMNS``) or None; ``split_descriptions`` maps a dataset name to
    the text describing its split (default: the dataset registry's description); ``queries`` the
    per-query values (rank intervals) and ``studies`` the convergence-study rows (the convergence
    section), both optional. Returns every file written, index pages last.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BenchmarkError(f"cannot create the leaderboard folder {out_dir}: {error}") from None
    boards = build_boards(results, telemetry, split_descriptions=split_descriptions, queries=queries,
                          studies=studies)
    html_env, md_env = _environment("html"), _environment("md")
    style, script = _static("leaderboard.css"), _static("leaderboard.js")
    written: list[Path] = []
    for board in boards:
        figures = board.figures + ([board.convergence.figure] if board.convergence is not None else [])
        for figure in figures:
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
    """Load the store in ``results_dir`` (rows, telemetry, per-query values and convergence studies)
    and render its leaderboards into ``out_dir``."""
    from ..store import load_queries, load_results, load_telemetry  # lazy: not needed to render frames

    results = load_results(Path(results_dir), dataset=dataset)
    if results.empty:
        raise BenchmarkError(f"no results in {results_dir}" + (f" for dataset {dataset!r}" if dataset else "")
                             + ": nothing to render (run a matrix first, e.g. `rrb run`)")
    try:
        telemetry = load_telemetry(Path(results_dir), dataset=dataset,
                                   cell_ids=results["cell_id"].astype(str).unique().tolist())
    except BenchmarkError:
        telemetry = None  # leaderboards without training curves are still leaderboards
    try:
        queries = load_queries(Path(results_dir), dataset=dataset,
                               cell_ids=results["cell_id"].astype(str).unique().tolist())
    except BenchmarkError:
        queries = None  # no rank intervals
    try:
        from ..study import load_studies

        studies = load_studies(Path(results_dir), dataset=dataset)
    except BenchmarkError:
        studies = None  # no convergence section
    return render_leaderboards(results, telemetry, Path(out_dir), split_descriptions=split_descriptions,
                               queries=queries, studies=studies)
