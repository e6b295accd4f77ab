"""Plugins run apart from the store: ``rrb submit FILE.py`` and ``rrb run --plugin FILE.py``.

The trust model. A plugin file is Python code that runs with your user's rights: nothing here can
stop it from reading or writing anything you can. What rrb protects is its own output, the
results store (``cells/``, ``telemetry/``, ``audits/``, ``queries/`` and ``MANIFEST.sha256``) and the boards
rendered from it, against a plugin that writes where it should not, or hands back rows that are
not what the protocol computed:

1. The parent process (this module, called by the CLI) never imports a plugin file. It copies the
   store into a scratch folder (and shares the trained-checkpoint cache), then starts a child
   process, ``python -m benchmark.isolation REQUEST.json``, which loads the plugins, validates
   them, and runs the matrix with the scratch folder as its results directory.
2. When the child ends (finished, failed or interrupted), the parent compares the results
   directory with what it was before: a file the child added, changed or removed there, other
   than a cell another rrb process stored meanwhile (its hash is in the manifest), is put back
   from the copy taken before (an added file is removed), and the run stops with one line naming
   the files. Nothing from such a run is stored.
3. Otherwise the parent reads every cell and audit file the child wrote into the scratch folder,
   validates it (store schema and completeness marker, a cell id the child planned, the plugin's
   file hash, that is the sha256 the parent computed itself, on every row that claims a plugin, a
   cell that runs at least one plugin, no infinite value) and stores it with
   :func:`benchmark.store.write_cell`, which records its hash in the manifest. Built-in cells of
   an ``rrb run --plugin`` matrix are computed by the parent itself, with no plugin loaded.

Installed plugins (entry points) are imported by every rrb process, like any installed package,
so ``rrb submit NAME`` of an installed plugin runs in-process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import store
from .errors import BenchmarkError

REQUEST_FORMAT = 1
# Names in a results directory that change while rrb works and say nothing about the rows.
_TRANSIENT_SUFFIXES = (".lock", ".break", ".tmp")
_TRANSIENT_PREFIXES = (".rrb-write-probe.",)  # benchmark.store.check_results_dir's probe
SCRATCH_PREFIX = ".rrb-plugin-run-"


@dataclass
class ChildOutcome:
    """What the child reported, and what the parent stored from its scratch folder."""

    cell_ids: list[str]
    summary: str
    entry: str | None = None
    stored: list[str] = field(default_factory=list)
    audits: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# The parent


def plugin_file_hashes(paths: Sequence[str | os.PathLike]) -> dict[str, str]:
    """Resolved path → sha256 of each plugin file, read by the parent (never imported)."""
    from .plugins import file_sha256

    out = {}
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.is_file():
            raise BenchmarkError(f"plugin file {str(raw)!r} does not exist (expected a .py file)")
        if path.suffix != ".py":
            raise BenchmarkError(f"plugin file {str(raw)!r} is not a .py file")
        source = path.read_bytes()
        try:
            compile(source, str(path), "exec")  # compiling runs nothing: a syntax error needs no child
        except (SyntaxError, ValueError) as exc:
            raise BenchmarkError(f"plugin {str(raw)!r} failed to import: {type(exc).__name__}: {exc}") from None
        out[str(path.resolve())] = file_sha256(path)
    return out


def _snapshot(results: Path) -> dict[str, str]:
    """Relative path → sha256 of every file in the results directory, except the checkpoint cache
    (shared with the child) and lock and temp files."""
    out: dict[str, str] = {}
    if not results.is_dir():
        return out
    for path in results.rglob("*"):
        rel = path.relative_to(results)
        if rel.parts[0] == "checkpoints" or rel.parts[0].startswith(SCRATCH_PREFIX):
            continue
        if not path.is_file() or path.is_symlink():
            continue
        if path.name.endswith(_TRANSIENT_SUFFIXES) or path.name.startswith(_TRANSIENT_PREFIXES):
            continue
        out[rel.as_posix()] = store.sha256_file(path)
    return out


def _prepare_scratch(results: Path, inside: bool) -> Path:
    """The child's results directory: in the system temp folder, or (``inside``, for Dask workers on
    other hosts, which see the results directory) a hidden folder inside the results directory."""
    if inside:
        results.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=results if inside else None))
    for folder in store.STORE_FOLDERS:
        source = results / folder
        if source.is_dir():
            shutil.copytree(source, scratch / folder,
                            ignore=shutil.ignore_patterns("*.lock", "*.break", "*.tmp"))
    if store.manifest_path(results).is_file():
        shutil.copy2(store.manifest_path(results), store.manifest_path(scratch))
    checkpoints = results / "checkpoints"
    if checkpoints.is_dir():  # the trained-model cache is shared: a plugin cell resumes from it
        (scratch / "checkpoints").symlink_to(checkpoints.resolve(), target_is_directory=True)
    return scratch


def _restore(results: Path, scratch_backup: Path, before: dict[str, str]) -> list[str]:
    """Undo what the child did to the results directory. Returns the relative paths it changed.

    A store file whose new bytes are recorded in the manifest was written by another rrb process
    sharing the folder, and is kept."""
    after = _snapshot(results)
    manifest = store.read_manifest(results) if store.manifest_path(results).is_file() else {}
    changed = []
    for name in sorted(set(before) | set(after)):
        if before.get(name) == after.get(name):
            continue
        if name == store.MANIFEST_NAME:
            continue  # judged through the files it lists, below
        if name in after and manifest.get(name) == after[name] and name.split("/")[0] in store.STORE_FOLDERS:
            continue  # stored meanwhile by another rrb process
        changed.append(name)
    for name in changed:
        target = results / name
        if name not in before:
            target.unlink(missing_ok=True)
            continue
        backup = scratch_backup / name
        if backup.is_file() and store.sha256_file(backup) == before[name]:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(backup, target)
    if store.MANIFEST_NAME in before and store.manifest_path(results).is_file():
        # Reconcile the manifest with the files as they now are: an entry the child altered for a
        # file that is back to its old bytes returns to its old value; entries of planted files go;
        # entries other processes added for their files stay.
        entries = store.read_manifest(results)
        previous = store.read_manifest(scratch_backup)
        for name in sorted(set(entries) | set(previous)):
            path = results / name
            if not path.is_file():
                if name in previous:
                    entries[name] = previous[name]
                else:
                    entries.pop(name, None)
                continue
            digest = store.sha256_file(path)
            if entries.get(name) != digest and previous.get(name) == digest:
                entries[name] = previous[name]
        if entries == previous:
            if store.sha256_file(store.manifest_path(results)) != before[store.MANIFEST_NAME]:
                shutil.copy2(store.manifest_path(scratch_backup), store.manifest_path(results))
                changed.append(store.MANIFEST_NAME)
        elif entries != store.read_manifest(results):
            store._write_manifest(results, entries)
            changed.append(store.MANIFEST_NAME)
    if store.MANIFEST_NAME in before and not store.manifest_path(results).is_file():
        shutil.copy2(store.manifest_path(scratch_backup), store.manifest_path(results))
        changed.append(store.MANIFEST_NAME)
    # Empty folders the child created are part of "byte-identical": remove them (deepest first).
    for folder in sorted((p for p in results.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        rel = folder.relative_to(results).as_posix()
        if rel.split("/")[0] == "checkpoints" or rel.startswith(SCRATCH_PREFIX) or any(n == rel or n.startswith(rel + "/") for n in before):
            continue
        try:
            folder.rmdir()
        except OSError:
            pass
    return changed


def run_apart(request: dict[str, Any], results_dir: str | os.PathLike, plugin_hashes: dict[str, str]) -> ChildOutcome:
    """Run ``request`` (see :func:`_child_main`) in a child process on a scratch copy of the store,
    then validate and store what it computed. Raises one BenchmarkError for anything wrong."""
    results = Path(results_dir).expanduser()
    results_existed = results.exists()
    before = _snapshot(results)
    scratch = _prepare_scratch(results, inside=bool(request.get("matrix", {}).get("options", {}).get("scheduler")))
    backup = Path(tempfile.mkdtemp(prefix="rrb-plugin-backup-"))
    try:
        for folder in store.STORE_FOLDERS:  # the copy the child never sees: what _restore puts back
            if (scratch / folder).is_dir():
                shutil.copytree(scratch / folder, backup / folder)
        if store.manifest_path(scratch).is_file():
            shutil.copy2(store.manifest_path(scratch), store.manifest_path(backup))
        outcome_path = scratch / ".outcome.json"
        request = {**request, "format": REQUEST_FORMAT, "scratch": str(scratch), "outcome": str(outcome_path)}
        request_path = Path(tempfile.mkdtemp(prefix="rrb-plugin-request-")) / "request.json"
        request_path.write_text(json.dumps(request))
        interrupted = False
        try:
            code = _run_child(request_path)
        except KeyboardInterrupt:
            interrupted, code = True, 130
        finally:
            shutil.rmtree(request_path.parent, ignore_errors=True)
        changed = _restore(results, backup, before)
        if not results_existed and results.is_dir() and not any(results.iterdir()):
            results.rmdir()
        names = ", ".join(sorted(plugin_hashes)) or "the plugin"
        if changed:
            shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
            try:
                ended = json.loads(outcome_path.read_text()).get("error")
            except (OSError, ValueError, AttributeError):
                ended = None
            shown += f" (the run then stopped: {ended})" if ended else ""
            raise BenchmarkError(f"plugin code ({names}) changed the results directory {str(results)!r} while it "
                                 f"ran: {shown}; put back as it was (added files removed), nothing from this run "
                                 "was stored. A plugin may write only through rrb (see README: trust model)")
        outcome = _read_outcome(outcome_path, code)
        if outcome.get("error") and not outcome.get("interrupted"):
            raise BenchmarkError(outcome["error"])
        stored = _store_from_scratch(scratch, results, outcome, plugin_hashes)
        if interrupted or outcome.get("interrupted"):
            raise KeyboardInterrupt
        return ChildOutcome(cell_ids=list(outcome.get("cell_ids", [])), summary=str(outcome.get("summary", "")),
                            entry=outcome.get("entry"), stored=stored[0], audits=stored[1])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(backup, ignore_errors=True)


def _run_child(request_path: Path) -> int:
    """Start the child; relay its output through this process's sys.stdout/sys.stderr when they are
    not the real terminal streams (a caller capturing them), else let it write there directly.
    On Ctrl-C (which reaches the child too) or SIGTERM, wait for the child to stop cleanly."""
    import signal

    command = [sys.executable, "-m", "benchmark.isolation", str(request_path)]
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root] + ([os.environ["PYTHONPATH"]]
                                                                 if os.environ.get("PYTHONPATH") else []))}
    direct = sys.stderr is sys.__stderr__ and sys.stdout is sys.__stdout__
    pipe = None if direct else subprocess.PIPE
    process = subprocess.Popen(command, env=env, stdout=pipe, stderr=pipe)

    def relay(stream, target) -> None:
        for chunk in iter(lambda: stream.read1(4096), b""):
            target.write(chunk.decode(errors="replace"))
            target.flush()

    threads = [] if direct else [threading.Thread(target=relay, args=(process.stdout, sys.stdout), daemon=True),
                                 threading.Thread(target=relay, args=(process.stderr, sys.stderr), daemon=True)]
    for thread in threads:
        thread.start()
    try:
        return process.wait()
    except KeyboardInterrupt:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # a SIGTERM sent to us alone; Ctrl-C reached it already
        process.wait()
        raise
    finally:
        for thread in threads:
            thread.join()


def _read_outcome(path: Path, code: int) -> dict[str, Any]:
    try:
        outcome = json.loads(path.read_text())
    except (OSError, ValueError):
        if code in (130, -2):
            return {"interrupted": True, "cell_ids": []}
        raise BenchmarkError(f"the plugin run ended without a result (child exit status {code}); "
                             "nothing from it was stored") from None
    if not isinstance(outcome, dict):
        raise BenchmarkError("the plugin run reported an unreadable result; nothing from it was stored")
    return outcome


def _check_rows(rows, name: str, planned: set[str] | None, hashes: set[str]) -> None:
    import numpy as np

    cell_id = str(rows["cell_id"].iloc[0])
    if planned is not None and cell_id not in planned:
        raise BenchmarkError(f"the plugin run returned {name}, a cell it did not plan; nothing from it was stored")
    claims = set(rows.loc[rows["is_plugin"], "plugin_hash"]) | set(
        rows.loc[rows["attack_plugin"], "attack_plugin_hash"])
    if not claims or not claims <= hashes:
        raise BenchmarkError(f"the plugin run returned {name}, whose rows do not carry the sha256 of the plugin "
                             f"file(s) given ({', '.join(sorted(h[:12] for h in hashes))}); nothing from it was "
                             "stored")
    if (rows["plugin_hash"].ne("") & ~rows["is_plugin"]).any() or np.isinf(rows["value"].to_numpy(float)).any():
        raise BenchmarkError(f"the plugin run returned {name} with inconsistent or infinite values; nothing from "
                             "it was stored")


def _store_from_scratch(scratch: Path, results: Path, outcome: dict[str, Any],
                        hashes: dict[str, str]) -> tuple[list[str], list[str]]:
    """Validate the cells and audits the child wrote, then store them (all of them or none)."""
    import pyarrow.parquet as pq

    from .locks import CellLock

    # An interrupted child reports no plan: its finished cells are kept when their rows check out.
    planned = None if outcome.get("interrupted") else {str(c) for c in outcome.get("cell_ids", [])}
    digests = set(hashes.values())
    new_cells, new_audits = [], []
    for path in store.cell_files(scratch):
        rel = path.relative_to(scratch).as_posix()
        if (results / rel).is_file() and store.sha256_file(results / rel) == store.sha256_file(path):
            continue  # the copy the child started from
        cell = store.read_cell_file(path)
        if not cell.valid:
            raise BenchmarkError(f"the plugin run returned an unusable cell file {rel} ({cell.problem}); nothing "
                                 "from it was stored")
        _check_rows(cell.rows, rel, planned, digests)
        telemetry = store.telemetry_path(scratch, path.parent.name, path.stem)
        frame = None
        if telemetry.is_file():
            try:
                frame = pq.read_table(telemetry).to_pandas()
            except Exception as exc:
                raise BenchmarkError(f"the plugin run returned an unreadable telemetry file for {rel} "
                                     f"({type(exc).__name__}); nothing from it was stored") from None
            if "cell_id" in frame and set(frame["cell_id"].astype(str)) - {path.stem}:
                raise BenchmarkError(f"the plugin run returned telemetry of another cell beside {rel}; nothing "
                                     "from it was stored")
        queries = None
        values = store.queries_path(scratch, path.parent.name, path.stem)
        if values.is_file():
            queries, problem = store.read_queries(values)
            if problem is not None:
                raise BenchmarkError(f"the plugin run returned an unusable per-query values file beside {rel} "
                                     f"({problem}); nothing from it was stored")
        new_cells.append((path, cell.rows, frame, queries))
    cell_ids = {str(rows["cell_id"].iloc[0]) for _, rows, _, _ in new_cells} | (planned or set())
    for path in store.cell_files(scratch, folder=store.AUDITS_DIR):
        rel = path.relative_to(scratch).as_posix()
        if (results / rel).is_file() and store.sha256_file(results / rel) == store.sha256_file(path):
            continue
        audit = store.read_cell_file(path)
        if not audit.valid:
            raise BenchmarkError(f"the plugin run returned an unusable audit file {rel} ({audit.problem}); "
                                 "nothing from it was stored")
        if str(audit.rows["cell_id"].iloc[0]) not in cell_ids:
            raise BenchmarkError(f"the plugin run returned {rel}, an audit of a cell it did not plan; nothing "
                                 "from it was stored")
        new_audits.append((path, audit.rows))
    stored, audits = [], []
    for path, rows, telemetry, queries in new_cells:
        dataset, cell_id = path.parent.name, path.stem
        lock = CellLock.acquire(results, dataset, cell_id)
        if lock is None:
            continue  # another process is storing this very cell
        with lock:
            if not store.check_cell_file(results, store.cell_path(results, dataset, cell_id)).valid:
                store.write_cell(results, rows, telemetry, queries=queries)
                stored.append(cell_id)
    for path, rows in new_audits:
        dataset, audit_id = path.parent.name, path.stem
        lock = CellLock.acquire(results, dataset, audit_id)
        if lock is None:
            continue
        with lock:
            if not store.check_cell_file(results, store.audit_path(results, dataset, audit_id)).valid:
                store.write_audit(results, rows)
                audits.append(audit_id)
    return stored, audits


# ---------------------------------------------------------------------------------------------
# The child


def _child_main(request_path: str) -> int:
    """Load the plugins, (for submit) validate the defense, run the matrix into the scratch folder,
    and write the outcome JSON. Prints progress; errors go to the outcome, not to stderr."""
    request = json.loads(Path(request_path).read_text())
    outcome_path = Path(request["outcome"])
    outcome: dict[str, Any] = {}
    try:
        outcome = _child_run(request)
        code = 0
    except BenchmarkError as exc:
        outcome, code = {"error": str(exc)}, 2
    except KeyboardInterrupt:
        outcome, code = {"interrupted": True}, 130
    except Exception as exc:  # noqa: BLE001 - third-party code failing: one line, not a traceback
        outcome, code = {"error": f"the plugin run failed: {type(exc).__name__}: {exc}"}, 2
    outcome_path.write_text(json.dumps(outcome))
    return code


def _child_run(request: dict[str, Any]) -> dict[str, Any]:
    from .matrix import MatrixOptions, run_matrix
    from .stopping import handle_stop_signals

    handle_stop_signals()
    matrix = request["matrix"]
    options = MatrixOptions.from_json(matrix["options"])
    defenses = matrix["defenses"]
    entry_name = None
    if request["command"] == "submit":
        from .plugins import load_plugins
        from .validation import validate_defense

        load_plugins(request.get("extra_plugins", []))
        checked = validate_defense(request["plugin"], seed=matrix["seeds"][0])
        entry_name = checked.entry.name
        print(checked.describe(), file=sys.stderr)
        if options.audit is not None:
            print("rrb: its cells are audited after they run (at --preset smoke that is most of the submission's "
                  "time; --no-audit skips it and the board marks the entry UNAUDITED)", file=sys.stderr)
        defenses = [entry_name]
        options = dataclasses.replace(options, plugins=(*request.get("extra_plugins", []), request["plugin"]))
    try:
        summary = run_matrix(matrix["datasets"], defenses, matrix["seeds"], options, results_dir=request["scratch"])
    except (BenchmarkError, KeyboardInterrupt):
        raise
    except Exception as exc:
        what = f"plugin defense {entry_name!r}" if entry_name else "plugin code"
        raise BenchmarkError(f"{what} failed while its matrix ran: {type(exc).__name__}: {exc}") from exc
    ids = sorted({c.cell_id for c in summary.cells} | set(summary.cell_ids))
    return {"cell_ids": ids, "summary": summary.describe().replace(request["scratch"], request["results"]),
            "entry": entry_name}


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))
