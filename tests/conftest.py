"""Shared fixtures: the shared data folder and a small, deterministic environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RRB_SHARED_DATA", REPO.parent / "shared" / "data"))
OMNIGLOT_SMALL = SHARED_DATA / "omniglot-small"

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def omniglot_root() -> Path:
    if not OMNIGLOT_SMALL.is_dir():
        pytest.skip(f"shared Omniglot data not found at {OMNIGLOT_SMALL} (set RRB_SHARED_DATA)")
    return OMNIGLOT_SMALL


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Dataset caches go to a per-session temp folder, never the user's home."""
    monkeypatch.setenv("RRB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "rrb-cache"))
