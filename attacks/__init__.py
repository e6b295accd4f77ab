"""The attack suite: one module per attack family on the one shared PGD loop.

Importing this package registers every built-in attack in ``benchmark.registry.ATTACKS``:
``ca+``, ``ca-``, ``qa+``, ``qa-``, ``tma``, ``es``, ``ltm``, ``gtm``, ``gtt`` (REFERENCE §2).
"""

from . import candidate, embshift, misrank, query, tma, translocation  # noqa: F401  (registers)
from .base import Attack, Gallery, MetricSpec
from .runner import AttackReport, attack_batch, run_attacks, select_queries

__all__ = ["Attack", "AttackReport", "Gallery", "MetricSpec", "attack_batch", "run_attacks", "select_queries"]
