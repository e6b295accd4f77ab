"""The leaderboard's plots: matplotlib's Agg backend at dpi 100, PNG bytes, deterministic.

Embedded in the HTML as base64 data URIs (the page fetches nothing) and written as PNG files
beside the Markdown, which links them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..robustness_scores import ERS_KEYS, ERS_TERMS
from .model import Column, Figure
from .ranking import score_label
from .tables import EntrySummary, pareto_front, ranking_key


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
    key = ranking_key(summaries)  # Strong ERS, or its fallback on a store from before it
    points = [(s.mean["R@1"] * 100, s.mean.get(key, math.nan)) for s in summaries]
    usable = [i for i, p in enumerate(points) if _finite(*p)]
    front = [usable[i] for i in pareto_front([points[i] for i in usable])]
    names = ", ".join(summaries[i].entry for i in sorted(front, key=lambda i: points[i][0]))
    caption = (f"{score_label(key)} (the ranking key) against benign R@1 (mean over seeds; bars: ± std). Ringed "
               f"points form the Pareto front (no entry is better on both): {names or 'none'}.")
    if not usable:
        return Figure("ers-r1", "Robustness vs benign quality", caption, None)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.4, 4.4))
    colors = _colors(len(summaries))
    for i in usable:
        s = summaries[i]
        ax.errorbar(points[i][0], points[i][1], xerr=np.nan_to_num(s.std["R@1"] * 100),
                    yerr=np.nan_to_num(s.std.get(key, math.nan)), fmt="o", color=colors[i], ms=6, capsize=2,
                    label=_label(s.entry))
    if front:
        ordered = sorted(front, key=lambda i: points[i][0])
        ax.step([points[i][0] for i in ordered], [points[i][1] for i in ordered], where="post",
                color="0.3", lw=1, ls="--", zorder=0)
        ax.scatter([points[i][0] for i in front], [points[i][1] for i in front], s=160, facecolors="none",
                   edgecolors="black", lw=1.2, label="Pareto front", zorder=3)
    ax.set_xlabel("benign R@1 (%)")
    ax.set_ylabel(_score_label(key))
    ax.grid(alpha=0.3)
    _place_labels(fig, ax, [(points[i], _label(summaries[i].entry), colors[i]) for i in usable])
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return Figure("ers-r1", "Robustness vs benign quality", caption, _png(fig))


def plot_ers_vs_cost(summaries: Sequence[EntrySummary]) -> Figure:
    key = ranking_key(summaries)
    caption = (f"{score_label(key)} (the ranking key) against training wall time (log scale; mean over seeds). Up "
               "and to the left is cheaper robustness.")
    points = [(s.mean["train_seconds"], s.mean.get(key, math.nan)) for s in summaries]
    usable = [i for i, (x, y) in enumerate(points) if _finite(x, y) and x > 0]
    if not usable:
        return Figure("ers-cost", "Robustness vs training cost", caption, None)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.4, 4.4))
    colors = _colors(len(summaries))
    for i in usable:
        ax.scatter(*points[i], color=colors[i], s=36, label=_label(summaries[i].entry))
    ax.set_xscale("log")
    _log_seconds_axis(ax, [points[i][0] for i in usable])
    ax.set_xlabel("training time (s, log scale)")
    ax.set_ylabel(_score_label(key))
    ax.grid(alpha=0.3, which="major")
    ys = [points[i][1] for i in usable]
    pad = max(2.0, 0.08 * (max(ys) - min(ys)))
    ax.set_ylim(min(ys) - pad, max(ys) + 3 * pad)  # room above the points for their labels
    _place_labels(fig, ax, [(points[i], _label(summaries[i].entry), colors[i]) for i in usable])
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return Figure("ers-cost", "Robustness vs training cost", caption, _png(fig))


def _score_label(key: str) -> str:
    return score_label(key)


def _log_seconds_axis(ax: Any, xs: Sequence[float]) -> None:
    """Major ticks at 1, 2, 5 x 10^k seconds inside the data range, labelled as plain numbers; no
    labels on minor ticks (matplotlib's default labels them too on a short log range, where they run
    together)."""
    from matplotlib.ticker import FixedLocator, NullFormatter

    low, high = min(xs) / 1.25, max(xs) * 1.25
    ticks = [m * 10.0 ** k for k in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
             for m in (1, 2, 5) if low <= m * 10.0 ** k <= high]
    if len(ticks) > 7:
        ticks = [t for t in ticks if round(t / 10 ** math.floor(math.log10(t))) == 1] or ticks
    if len(ticks) < 2:
        ticks = [low * 1.05, high / 1.05]
    ax.set_xlim(low, high)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())


def _place_labels(fig: Any, ax: Any, items: Sequence[tuple[tuple[float, float], str, Any]],
                  fontsize: float = 7.0) -> None:
    """Label each point without labels overlapping: each label starts just above-right of its point
    and moves up (then down) in steps of one text line until its box is free; a moved label gets a
    thin leader line to its point."""
    fig.canvas.draw()
    to_display = ax.transData.transform
    k = fig.dpi / 72  # pixels per point
    line, char = fontsize * 1.25, fontsize * 0.55  # one text line and one character, in points
    placed: list[tuple[float, float, float, float]] = []  # label boxes, in points from the origin
    order = sorted(range(len(items)), key=lambda i: (-items[i][0][1], items[i][0][0]))
    for i in order:
        (x, y), text, color = items[i]
        px, py = (v / k for v in to_display((x, y)))
        width = char * len(text)
        step, box = 0, (px + 5, py + 4, px + 5 + width, py + 4 + line)
        for candidate in [0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6, 7, -7, 8]:
            trial = (px + 5, py + 4 + candidate * line, px + 5 + width, py + 4 + (candidate + 1) * line)
            if not any(trial[0] < b[2] and b[0] < trial[2] and trial[1] < b[3] and b[1] < trial[3] for b in placed):
                step, box = candidate, trial
                break
        placed.append(box)
        arrow = dict(arrowstyle="-", color=color, lw=0.5, alpha=0.7) if step else None
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, 4 + step * line), fontsize=fontsize,
                    arrowprops=arrow)


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




CONVERGENCE_CAPTION = (
    "Scale-free ERS of the per-query best iterate (the most attacker-favourable point a run visited) against "
    "the PGD budget, log2 axis: one line per entry for the fixed-step run (the profile's α, zero start; mean over "
    "its studied seeds), ▲ the APGD schedule at its budget, ○ the standard run's last iterate at {standard} "
    "steps (the RobRank protocol's reading). Lower means a stronger attack; a line still falling at the right "
    "edge has not converged.")


def plot_convergence(curves: dict[str, dict[str, dict[int, float]]], entries: Sequence[str],
                     colors: dict[str, int], standard_steps: int = 32) -> Figure:
    """ERS vs PGD budget per entry from the convergence studies (``curves``: entry -> run -> budget ->
    ERS, runs ``fixed``, ``apgd:K`` and ``standard``). ``colors``: entry -> its index in the board's
    colour order (the other plots' colours)."""
    caption = CONVERGENCE_CAPTION.format(standard=standard_steps)
    drawn = [e for e in entries if curves.get(e, {}).get("fixed")]
    if not drawn:
        return Figure("convergence", "Attack convergence", caption, None)
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullLocator

    fig, ax = plt.subplots(figsize=(7.4, 4.4))
    palette = _colors(max([len(entries), *[i + 1 for i in colors.values()]]))
    budgets: set[int] = set()
    for entry in drawn:
        color = palette[colors.get(entry, entries.index(entry)) % len(palette)]
        runs = curves[entry]
        fixed = sorted(runs["fixed"].items())
        budgets.update(b for b, _ in fixed)
        ax.plot([b for b, _ in fixed], [v for _, v in fixed], color=color, lw=1.4, marker=".", ms=5,
                label=_label(entry))
        for run, points in sorted(runs.items()):
            if run.startswith("apgd:"):
                for budget, value in points.items():
                    budgets.add(budget)
                    ax.scatter([budget], [value], marker="^", s=42, color=color, edgecolors="black", lw=0.5, zorder=3)
        for budget, value in runs.get("standard", {}).items():
            ax.scatter([budget], [value], marker="o", s=40, facecolors="none", edgecolors=color, lw=1.3, zorder=3)
    ax.set_xscale("log", base=2)
    ticks = sorted(budgets)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("PGD steps per query batch (log2 scale)")
    ax.set_ylabel("ERS (scale-free, best iterate)")
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    handles += [Line2D([], [], marker="^", ls="", color="0.5", markeredgecolor="black", label="APGD"),
                Line2D([], [], marker="o", ls="", markerfacecolor="none", markeredgecolor="0.3",
                       label=f"standard, last iterate ({standard_steps})")]
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return Figure("convergence", "Attack convergence", caption, _png(fig))
