"""Attribute the studies stored before study rows recorded the studied model's weights digest.

One cell id can name models with other weights (trained on CPUs of another vendor), so a study is
keyed by its model's weights too (``benchmark.study.study_id``). For a study without the digest,
this finds the stored cell(s) of the same dataset, entry and seed whose standard run the study
reproduces exactly (the study's fixed-step run read at the cell's step count, last iterate, is the
cell's standard run: same loop, same queries and selections, so its per-metric means equal the
cell's stored values only for the same weights), takes their weights digest, writes it into the
study's rows and moves the study under its weighted key. A study that matches no stored cell, or
cells of different weights, is left as it is and reported.

    python tools/backfill_study_weights.py [--results results] [--dry-run]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.atomic import atomic_write  # noqa: E402
from benchmark.checkpoints import stored_weights  # noqa: E402
from benchmark.study import COLUMNS, STUDIES_DIR, _read, weighted_study_id  # noqa: E402

TOLERANCE = 1e-9


def cell_frames(results: Path, dataset: str) -> list[pd.DataFrame]:
    frames = []
    for path in sorted((results / "cells" / dataset).glob("*.parquet")):
        try:
            frames.append(pd.read_parquet(path))
        except Exception as exc:  # an unreadable cell is simply no candidate
            print(f"skipping unreadable cell {path} ({exc})", file=sys.stderr)
    return frames


def matching_weights(study: pd.DataFrame, cells: list[pd.DataFrame]) -> set[str]:
    """Weights digests of the stored cells whose standard run this study reproduces."""
    entry, seed = str(study["entry"].iloc[0]), int(study["seed"].iloc[0])
    found = set()
    for rows in cells:
        if str(rows["entry"].iloc[0]) != entry or int(rows["seed"].iloc[0]) != seed:
            continue
        digest = stored_weights(rows)
        steps = int(rows["attack_steps"].iloc[0])
        at = study[(study["run"] == "fixed") & (study["budget"] == steps)]
        if digest is None or at.empty:
            continue
        means = at.groupby(["attack", "metric"])["last"].mean()
        stored = rows[rows["variant"] == "adversarial"].set_index(["attack", "metric"])["value"]
        shared = means.index.intersection(stored.index)
        if len(shared) and len(shared) == len(means) and \
                ((means[shared] - stored[shared]).abs() <= TOLERANCE * (1 + stored[shared].abs())).all():
            found.add(digest)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    results = Path(args.results)
    cells: dict[str, list[pd.DataFrame]] = {}
    unresolved = 0
    for directory in sorted((results / STUDIES_DIR).glob("*/*")):
        if not directory.is_dir():
            continue
        files = sorted(p for p in directory.glob("*.parquet") if not p.name.startswith("."))
        parts = {path: _read(path) for path in files}
        if not parts or any(part is None for part in parts.values()):
            print(f"{directory}: unreadable or empty, left alone")
            unresolved += 1
            continue
        study = pd.concat(parts.values(), ignore_index=True)
        if study["weights"].notna().all():
            continue
        dataset = directory.parent.name
        if dataset not in cells:
            cells[dataset] = cell_frames(results, dataset)
        digests = matching_weights(study, cells[dataset])
        name = f"{dataset} {study['entry'].iloc[0]} seed {study['seed'].iloc[0]} ({directory.name[:12]})"
        if len(digests) != 1:
            print(f"{name}: {'no stored cell' if not digests else 'cells of different weights'} reproduced; left alone")
            unresolved += 1
            continue
        digest = digests.pop()
        legacy = str(study["study_id"].iloc[0])
        target = directory.parent / weighted_study_id(legacy, digest)
        print(f"{name}: weights {digest[:12]} -> {target.name[:12]}")
        if args.dry_run:
            continue
        target.mkdir(parents=True, exist_ok=True)
        for path, frame in parts.items():
            frame = frame.assign(weights=digest, study_id=target.name)[COLUMNS].astype({"weights": "string"})
            atomic_write(target / path.name, lambda tmp, f=frame: f.to_parquet(tmp))
        shutil.rmtree(directory)
    return 1 if unresolved else 0


if __name__ == "__main__":
    sys.exit(main())
