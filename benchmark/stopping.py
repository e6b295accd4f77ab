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
