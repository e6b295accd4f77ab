"""An interrupted command line ends with status 130, whatever happens while the interpreter would
finalise (CI once saw -2: death by SIGINT after the "interrupted" line)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import atexit, os, signal, sys
from benchmark import cli

def late_signal():  # a second SIGINT once the interpreter's handlers are back to the defaults
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)

def interrupted(args):
    raise KeyboardInterrupt

atexit.register(late_signal)
cli.COMMANDS["list"] = interrupted
sys.argv = ["rrb", "list", "defenses"]
sys.exit(cli.main())  # argv None: a real command line
"""


def test_interrupted_command_line_exits_130_even_with_a_late_signal():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, (proc.returncode, proc.stderr)
    assert "rrb: interrupted; finished cells are kept" in proc.stderr


def test_in_process_main_returns_130_without_exiting(monkeypatch, capsys):
    from benchmark import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "list", interrupted)
    assert cli.main(["list", "defenses"]) == 130
    assert "rrb: interrupted" in capsys.readouterr().err
