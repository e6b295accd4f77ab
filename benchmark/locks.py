"""Per-cell lock files: several processes (or Dask workers on several hosts) share one results directory.

A lock file ``cells/<dataset>/<cell_id>.lock``, created with ``O_CREAT | O_EXCL``, holds the pid
and hostname of its owner; a lock whose owner is a dead process on this host is stale and is
broken (one breaker at a time, through a short-lived ``.break`` file).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# A lock file that stays empty or unparseable this long was left by a process killed between
# creating and writing it (a window of microseconds), so it may be broken.
UNREADABLE_LOCK_GRACE_S = 60.0


def lock_path(results_dir: str | os.PathLike, dataset: str, cell_id: str) -> Path:
    """``cells/<dataset>/<cell_id>.lock`` (an audit's: its audit id) beside the cell's file."""
    return Path(results_dir) / "cells" / dataset / f"{cell_id}.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@dataclass
class LockOwner:
    pid: int | None
    host: str | None
    created: float | None

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}" if self.pid is not None else "an unknown process"


def read_lock(path: Path) -> LockOwner | None:
    """The owner written in a lock file; ``None`` when there is no lock file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return LockOwner(None, None, None)
    try:
        data = json.loads(text)
        return LockOwner(int(data["pid"]), str(data["host"]), float(data.get("created", 0.0)))
    except (ValueError, KeyError, TypeError):
        return LockOwner(None, None, None)


def lock_is_stale(path: Path, owner: LockOwner) -> bool:
    """A lock is stale when its owner is a dead process on this host (or it was never written)."""
    if owner.pid is None:
        try:
            return time.time() - path.stat().st_mtime > UNREADABLE_LOCK_GRACE_S
        except FileNotFoundError:
            return True
    return owner.host == socket.gethostname() and not _pid_alive(owner.pid)


class CellLock:
    """An exclusive claim on computing one cell, held through a lock file.

    ``CellLock.acquire`` returns ``None`` when another live process holds the cell.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.token = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "created": time.time()})

    @classmethod
    def acquire(cls, results_dir: str | os.PathLike, dataset: str, cell_id: str) -> CellLock | None:
        return cls.acquire_path(lock_path(results_dir, dataset, cell_id))

    @classmethod
    def acquire_path(cls, path: Path) -> CellLock | None:
        """Claim the lock file ``path``; ``None`` when another live process holds it."""
        lock = cls(Path(path))
        lock.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if lock._create():
                return lock
            owner = read_lock(lock.path)
            if owner is None:
                continue  # released between our attempt and the read: try again
            if not lock_is_stale(lock.path, owner) or not _break_stale(lock.path, owner):
                return None
        return None

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, self.token.encode())
        finally:
            os.close(fd)
        return True

    def release(self) -> None:
        """Remove the lock file, if it is still ours."""
        try:
            if self.path.read_text() == self.token:
                self.path.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> CellLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _break_stale(path: Path, owner: LockOwner) -> bool:
    """Remove a stale lock, unless someone else breaks (and re-takes) it first.

    A short-lived ``.break`` file serialises breakers: without it, two processes that both saw
    the same stale lock could each delete it and one could delete the other's fresh lock.
    """
    breaker = path.with_name(path.name + ".break")
    try:
        fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.close(fd)
    except FileExistsError:
        try:  # a breaker that died mid-break leaves this file behind
            if time.time() - breaker.stat().st_mtime > UNREADABLE_LOCK_GRACE_S:
                breaker.unlink()
        except FileNotFoundError:
            pass
        return False
    try:
        if read_lock(path) == owner:  # still the lock we judged stale
            path.unlink()
            log.info("broke stale lock %s held by %s", path, owner.describe())
        return True
    except FileNotFoundError:
        return True
    finally:
        breaker.unlink()


def wait_for_lock(path: Path, *, timeout_s: float = 120.0, poll_s: float = 0.02) -> CellLock:
    """Claim the lock file ``path``, waiting while another live process holds it (a short critical
    section, such as the store manifest's update). A stale lock is broken as for cells."""
    from .errors import BenchmarkError

    deadline = time.monotonic() + timeout_s
    while True:
        lock = CellLock.acquire_path(path)
        if lock is not None:
            return lock
        if time.monotonic() > deadline:
            owner = read_lock(path)
            raise BenchmarkError(f"lock {path} has been held by {owner.describe() if owner else 'another process'} "
                                 f"for over {timeout_s:.0f} s; if no rrb process is running, delete it")
        time.sleep(poll_s)
