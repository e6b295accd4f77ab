"""``rrb results``: the store as one line per entry and seed, or as its tidy rows (csv, json)."""

from __future__ import annotations

import pandas as pd

from .errors import BenchmarkError

TABLE_FORMATS = ("table", "csv", "json")

SUMMARY_METRICS = (("benign", "R@1", "R@1"), ("benign", "R@1:faiss-f32", "R@1_f32"),
                   ("score", "ERS:strong", "Strong_ERS"), ("score", "ERS", "ERS"),
                   ("score", "ERS:RobRank", "ERS_RobRank"), ("score", "ARS", "ARS"), ("score", "WHM", "WHM"))
SUMMARY_KEYS = ["dataset", "preset", "profile", "entry", "seed"]


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, preset, profile, entry, seed): R@1, R@1 from a float32 faiss index, Strong
    ERS (the strong evaluation's, what boards rank by; "-" for a cell without it), ERS (scale-free,
    the standard 32-step run), ERS (RobRank), ARS, WHM, train seconds and the training PGD steps per batch actually
    run (each defense's own count at a faithful preset). A cell stored before the scale-free ERS
    existed shows its ERS, which is RobRank's, under ERS_RobRank."""
    columns = SUMMARY_KEYS + [label for _, _, label in SUMMARY_METRICS] + ["train_s", "pgd_steps", "cell_id"]
    if df.empty:
        return pd.DataFrame(columns=columns)
    keys = SUMMARY_KEYS + ["cell_id"]
    out = df.groupby(keys, sort=True, observed=True).agg(train_s=("train_seconds", "first"),
                                                          pgd_steps=("train_pgd_steps", "first")).reset_index()
    for attack, metric, label in SUMMARY_METRICS:
        picked = df[(df["attack"] == attack) & (df["metric"] == metric)]
        values = picked.groupby("cell_id", observed=True)["value"].first().rename(label)
        out = out.merge(values, left_on="cell_id", right_index=True, how="left")
    legacy = out["ERS_RobRank"].isna() & out["ERS"].notna()
    out.loc[legacy, "ERS_RobRank"] = out.loc[legacy, "ERS"]
    out.loc[legacy, "ERS"] = float("nan")
    out["cell_id"] = out["cell_id"].str.slice(0, 12)
    return out[columns].reset_index(drop=True)


def format_results(df: pd.DataFrame, fmt: str = "table") -> str:
    """Render results for ``rrb results``: ``table`` (one line per entry and seed), or the long rows as csv/json."""
    if fmt not in TABLE_FORMATS:
        raise BenchmarkError(f"unknown results format {fmt!r}; accepted: {', '.join(TABLE_FORMATS)}")
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return df.to_json(orient="records", date_format="iso", indent=1) + "\n"
    if df.empty:
        return "(no results)\n"
    table = summary_table(df)
    formatters = {"R@1": "{:.4f}".format, "R@1_f32": "{:.4f}".format, "WHM": "{:.4f}".format,
                  "Strong_ERS": "{:.1f}".format, "ERS": "{:.1f}".format, "ERS_RobRank": "{:.1f}".format,
                  "ARS": "{:.1f}".format, "train_s": "{:.1f}".format}
    return table.to_string(index=False, formatters=formatters, na_rep="-") + "\n"
