"""Robust retrieval benchmark: adversarial robustness of deep-metric-learning image retrieval."""

__version__ = "0.1.0"

from .errors import BenchmarkError  # noqa: E402,F401
