"""The results-store row schema: the contract between the matrix runner, the store and reports.

Tidy long format (SPEC §7): one row per (entry, attack, metric). An *entry* is one trained model:
(dataset, model, defense, defense parameters, seed, preset, profile). Rows of one matrix cell
share ``cell_id`` (the config hash) and every run-key, timing and provenance column.

``attack`` groups the metric:
* ``"benign"``: metric in R@1, R@2, mAP, mAP@R, mAP@10, NMI (test split) and ``train:R@1``.
* an attack's registry name (``"ca+"``, ``"es"``, ...): metric is the reported key (``"CA+"``,
  ``"ES:D"``, ``"ES:R"``); ``variant`` is ``"adversarial"`` (after the attack) or ``"clean"``
  (the same measurement with the same selections on clean inputs: ARS's "before").
  With a strong evaluation (``strong_eval`` names it) each attack value also has a ``"strong"`` row:
  the mean over queries of the per-query worst case over the strong evaluation's runs.
* ``"score"``: metric in ERS, ERS:RobRank, ERS:strong (the ranked score), ERS:RobRank:strong,
  ARS (averaged), ``ARS:<key>`` per attack, WHM.
* ``"training"``: per-run numbers from the training telemetry (``telemetry.training_summary``):
  steps, minimum and tail separability, collapseness, and for the COLO-TRIDE family and CA-TRIDE
  the share of steps that attacked, assisted or skipped.
Fractions are stored as fractions (benign metrics in [0, 1]); attack values in the units of
``attacks`` (percent for ranks and recalls, cosine for TMA, L2 for ES:D); scores 0–100 (WHM in
[0, 1] like R@1).

Per-step training telemetry lives beside the rows in a second table (TELEMETRY_COLUMNS).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

RUN_KEY_COLUMNS = [
    "dataset", "model", "defense", "defense_params",  # defense_params: JSON, sorted keys
    "seed", "preset", "preset_version", "profile", "profile_version",
]
ROW_COLUMNS = ["attack", "metric", "variant", "value"]
# What a row's metric is, stored with it so that results describe themselves: the leaderboard
# builds its columns from these, not from the registries. Attack rows carry their attack's
# declared MetricSpec, hyper-parameters (JSON) and, for a plugin attack, its file's sha256.
METRIC_COLUMNS = [
    "metric_label",  # column label, e.g. "CA−"
    "direction",  # which way is more robust: "higher", "lower", or "" (unknown / not an attack value)
    "decimals",  # printed precision
    "meaning",  # one line on what the value is
    "attack_params",  # JSON of the attack's hyper-parameters ("" for non-attack rows)
    "attack_plugin_hash",  # sha256 of a plugin attack's file ("" for built-ins)
]
CELL_COLUMNS = [
    "cell_id",  # config hash of the cell: the key that decides skip vs recompute
    "entry",  # display name: defense plus non-default parameters
    "is_plugin", "plugin_source", "plugin_hash",
    "attack_plugin",  # True for rows of a plugin attack: shown as extra columns, never in ERS/ARS
    "epsilon", "alpha", "attack_steps",  # attack profile numbers
    "train_pgd_steps",  # PGD steps per training batch actually run
    "faithful",  # True when the preset ran every defense's own published adversary (ranked boards only)
    "epochs", "batch_pairs", "attack_queries", "attention_lambda",
    "collapsed",
    "train_seconds", "seconds_per_epoch", "attack_seconds", "queries_per_second", "eval_seconds",
    "precision",  # what the model's trunk computed in (benchmark.precision): float32 or bf16
    "strong_eval",  # the strong evaluation's id (benchmark.strong_eval), "" for a standard-only cell
]
PROVENANCE_COLUMNS = [
    "package_version", "git_commit", "torch_version", "faiss_version", "device_name",
    "config_hash", "created_at",
]
ALL_COLUMNS = RUN_KEY_COLUMNS + ROW_COLUMNS + METRIC_COLUMNS + CELL_COLUMNS + PROVENANCE_COLUMNS

COLUMN_TYPES = {
    "dataset": "string", "model": "string", "defense": "string", "defense_params": "string",
    "seed": "int64", "preset": "string", "preset_version": "int64", "profile": "string", "profile_version": "int64",
    "attack": "string", "metric": "string", "variant": "string", "value": "float64",
    "metric_label": "string", "direction": "string", "decimals": "int64", "meaning": "string",
    "attack_params": "string", "attack_plugin_hash": "string",
    "cell_id": "string", "entry": "string", "is_plugin": "bool", "plugin_source": "string",
    "plugin_hash": "string", "attack_plugin": "bool",
    "epsilon": "float64", "alpha": "float64", "attack_steps": "int64", "train_pgd_steps": "int64", "faithful": "bool",
    "epochs": "int64", "batch_pairs": "int64", "attack_queries": "int64", "attention_lambda": "float64",
    "collapsed": "bool", "train_seconds": "float64", "seconds_per_epoch": "float64",
    "attack_seconds": "float64", "queries_per_second": "float64", "eval_seconds": "float64", "precision": "string",
    "strong_eval": "string",
    "package_version": "string", "git_commit": "string", "torch_version": "string",
    "faiss_version": "string", "device_name": "string", "config_hash": "string",
    "created_at": "datetime64[ns, UTC]",
}

# Columns added after cells were first stored, with the value every older cell had: a stored cell
# without one reads it (instead of being taken for a damaged file and recomputed).
COLUMN_DEFAULTS = {"precision": "float32", "strong_eval": ""}

# Per-query attack values of a cell with a strong evaluation (store: queries/<dataset>/<cell_id>.parquet):
# the clean value, the standard run's and the strong evaluation's, per attack value and attacked test
# image (``query``: its index in the test split). Rank intervals bootstrap over them.
QUERY_COLUMNS = ["cell_id", "dataset", "entry", "seed", "attack", "metric", "direction", "query",
                 "clean", "standard", "strong"]

TELEMETRY_COLUMNS = [
    "cell_id", "dataset", "defense", "entry", "seed", "preset", "step", "epoch",
    "loss", "collapseness", "hardness", "separability", "mean_distance", "embedding_shift",
]

# The clean measurements of a cell (``attack == "benign"``): exact retrieval metrics, R@1 as a faiss
# index returns it (``benchmark.deployment``) and the spread of the clean test gallery
# (``benchmark.shrinkage``).
BENIGN_METRICS = ["R@1", "R@2", "mAP", "mAP@R", "mAP@10", "NMI", "train:R@1",
                  "R@1:faiss-f32", "R@1:faiss-f16", "R@1:faiss-ip32",
                  "spread:mean_distance", "spread:median_nn_distance", "spread:centroid_norm"]


def coerce_types(frame: pd.DataFrame, columns: Iterable[str] = ALL_COLUMNS) -> pd.DataFrame:
    """Cast the schema columns to COLUMN_TYPES (the dtypes every consumer may rely on)."""
    frame = frame.copy()
    for column in columns:
        if column not in frame.columns:
            continue
        dtype = COLUMN_TYPES.get(column)
        if dtype is None:
            continue
        if dtype.startswith("datetime64"):
            frame[column] = pd.to_datetime(frame[column], utc=True).astype(dtype)
        else:
            frame[column] = frame[column].astype(dtype)
    return frame


def rows_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The one row builder: row dicts (every schema column) as a typed frame in ALL_COLUMNS order,
    for a cell's rows and an audit's alike."""
    return coerce_types(pd.DataFrame(list(rows), columns=ALL_COLUMNS))
