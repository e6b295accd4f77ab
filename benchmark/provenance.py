"""Where a row came from: package, commit, library versions, device and time, stored in every row."""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .trainer import device_name


def provenance(device: torch.device) -> dict[str, Any]:
    try:
        import faiss

        faiss_version = faiss.__version__
    except Exception:
        faiss_version = "unavailable"
    return {
        "package_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "faiss_version": faiss_version,
        "device_name": device_name(device),
        "created_at": datetime.now(timezone.utc),
    }


def git_commit() -> str:
    """The checkout's commit, with ``+dirty`` when tracked files differ from it ("unknown" outside git)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                             cwd=here, timeout=5)
        commit = out.stdout.strip()
        if not commit:
            return "unknown"
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, cwd=here, timeout=5)
        return commit + ("+dirty" if status.stdout.strip() else "")
    except Exception:
        return "unknown"
