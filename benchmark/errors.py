"""The one exception type for errors a user can cause."""


class BenchmarkError(Exception):
    """A mistake in user input (bad name, path, number or plugin).

    The message says what was wrong and what is accepted; the CLI prints it on one line
    without a traceback and exits with status 2.
    """
