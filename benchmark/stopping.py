"""How an rrb process stops on a signal: SIGTERM and SIGINT become KeyboardInterrupt (the CLI and
the plugin child process of :mod:`benchmark.isolation` both install it)."""

from __future__ import annotations


def handle_stop_signals() -> None:
    """Let SIGTERM and SIGINT stop a command the way Ctrl-C in a terminal does: as a
    KeyboardInterrupt, so the cell in flight releases its lock and finished cells are kept.
    SIGINT is reset as well, because a shell without job control starts background commands with
    SIGINT ignored (``kill -INT`` would otherwise do nothing). Only for real command lines, in the
    main thread."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def exit_interrupted(code: int = 130) -> None:
    """End an interrupted command line now, with ``code``: what it had to keep is kept (the cell in
    flight released its lock on the way here), so the interpreter's finalisation is skipped. A
    second signal arriving while the interpreter finalises (its handlers are back to the defaults
    then), or a KeyboardInterrupt the interpreter saw inside a C extension's nested evaluation, would
    otherwise end the process by SIGINT instead of the exit status 130 that scripts and schedulers
    read (seen once in CI: status -2 after the "interrupted" line)."""
    import os
    import signal
    import sys

    for name in ("SIGINT", "SIGTERM"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed pipe: nothing more to say
            pass
    os._exit(code)
