"""What every leaderboard page states about itself: the protocol (split, threat model, preset,
training adversary, seeds) and the provenance (versions, commits, devices, when), from the rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from .model import BoardKey
from .ranking import RANKING_KEY


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
        from .. import registry
        from ..plugins import load_builtins

        load_builtins()
        return getattr(registry, registry_name).get(name).description
    except Exception:  # an unknown or plugin name only loses the description line
        return ""


def _registry_preset_version(name: str) -> int | None:
    try:
        from ..plugins import load_builtins
        from ..registry import PRESETS

        load_builtins()
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
    strong = _strong_evaluation(rows)
    if strong:
        lines.append(("Strong evaluation (ranked)", strong))
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
    natural = _natural_training_r1(rows)
    if natural:
        lines.append(("Natural training R@1", natural))
    lines.append(("Batch", _join(_unique(rows, "batch_pairs"),
                                 lambda v: f"{int(v)} pairs (SPC-2, {2 * int(v)} images)")))
    lines.append(("Attack queries", _join(_unique(rows, "attack_queries"), lambda v: str(int(v)))))
    lines.append(("Seeds", _join(_unique(rows, "seed"), lambda v: str(int(v)))))
    lines.append(("Models", _join(_unique(rows, "model"))))
    return lines


def _strong_evaluation(rows: pd.DataFrame) -> str:
    """What the Strong ERS of the board's cells was computed from (the ``meaning`` of their
    ``ERS:strong`` score rows); "" on a board without a strong evaluation."""
    if not {"attack", "metric"} <= set(rows.columns) or "meaning" not in rows.columns:
        return ""
    scored = rows[(rows["attack"] == "score") & (rows["metric"] == RANKING_KEY)]
    meanings = [str(m) for m in scored["meaning"].dropna() if str(m)]
    return "; ".join(dict.fromkeys(meanings))


def _natural_training_r1(rows: pd.DataFrame) -> str:
    """Benign test R@1 of natural training (``nt``) at these epochs: how far the schedule trains a model."""
    needed = {"defense", "attack", "metric", "value", "seed"}
    if not needed <= set(rows.columns):
        return ""
    nt = rows[(rows["defense"] == "nt") & (rows["attack"] == "benign") & (rows["metric"] == "R@1")]
    values = nt.groupby("seed")["value"].first().astype(float) * 100
    if values.empty:
        return ""
    text = f"{values.mean():.1f} %"
    if len(values) > 1:
        text += f" ± {values.std(ddof=1):.1f}"
    return text + f" (nt, {len(values)} seed{'s' if len(values) > 1 else ''}; the benign quality these epochs reach)"


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
    superseded = int(rows.attrs.get("superseded_cells", 0))
    if superseded:
        lines.append(("Superseded cells", f"{superseded} older evaluation(s) of an entry and seed shown here, "
                                          "kept in the store, not on the board"))
    return lines


