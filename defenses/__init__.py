"""Built-in training-time defenses (SPEC §6). Importing this package registers all of them."""

from . import act, ca_tride, colo_tride, est, ga, hm, nt  # noqa: F401
