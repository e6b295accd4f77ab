"""The defense interface: one class, one method from a clean SPC-2 batch to the loss.

The trainer owns the loop, the optimiser, timing and telemetry; a defense only turns a batch
into the loss to minimise. Built-in defenses live in the top-level ``defenses`` package;
third-party ones subclass :class:`Defense` the same way and register with
``@DEFENSES.register("name")`` (or through the ``rrb.defenses`` entry-point group).

Hyper-parameters are dataclass fields of the defense class, with the published defaults; the
CLI's ``--defense-param name=value`` overrides them (the value is converted to the field's type)
and ``params()`` records them with the run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .errors import BenchmarkError
from .losses import Triplets
from .pgd import PGDConfig


@dataclass
class TrainContext:
    """What the trainer tells a defense at each step. Read-only for the defense."""

    epoch: int  # 0-based
    num_epochs: int
    step: int  # global step, 0-based
    epsilon: float  # training budget (profile's train_epsilon)
    alpha: float  # training step size, already scaled by the preset's divisor
    pgd_divisor: int  # the preset's divisor of PGD steps
    generator: torch.Generator  # the run's seeded RNG for mining and random directions
    attention_lambda: float  # λ of collapseness (dataset dependent, recorded)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def pgd_config(self, defense_steps: int, *, alpha_scale: float = 1.0) -> PGDConfig:
        """PGD budget for ``defense_steps`` nominal steps under this preset."""
        steps = 0 if defense_steps <= 0 else max(1, defense_steps // self.pgd_divisor)
        return PGDConfig(self.epsilon, self.alpha * alpha_scale, steps)

    @property
    def progress(self) -> float:
        """e / E with e the 0-based epoch."""
        return self.epoch / max(self.num_epochs, 1)


@dataclass
class StepResult:
    """What a defense returns for one batch."""

    loss: torch.Tensor  # scalar to minimise
    embeddings: torch.Tensor | None = None  # clean embeddings of the batch (detached), for telemetry
    triplets: Triplets | None = None  # the triplets mined on the clean embeddings
    embedding_shift: float | None = None  # mean ‖f(x̃) - f(x)‖ caused by the perturbation
    perturbed: torch.Tensor | None = None  # the perturbed images (all of them, any layout), for checks
    originals: torch.Tensor | None = None  # the clean images ``perturbed`` started from
    extras: dict[str, float] = field(default_factory=dict)  # defense-specific telemetry


@dataclass
class Defense:
    """Base class of all defenses. Subclasses are dataclasses whose fields are hyper-parameters."""

    # Nominal PGD steps per training batch at the paper preset (0 for no adversary).
    pgd_steps: ClassVar[int] = 0
    # Whether BatchNorm layers train (REFERENCE §4.0: only EST unfreezes them).
    trains_batchnorm: ClassVar[bool] = False

    def training_step(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      ctx: TrainContext) -> StepResult:
        """Turn a clean SPC-2 batch into the loss to minimise. Must be overridden."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget state kept across steps (called by the trainer before training)."""

    # -- hyper-parameters ---------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}

    @classmethod
    def from_params(cls, overrides: dict[str, Any] | None = None) -> Defense:
        """Build with defaults, overridden by ``overrides`` (strings converted to field types)."""
        overrides = dict(overrides or {})
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}
        kwargs = {}
        for name, value in overrides.items():
            if name not in fields:
                known = ", ".join(fields) or "(none)"
                raise BenchmarkError(f"defense {getattr(cls, 'registry_name', cls.__name__)!r} has no "
                                     f"parameter {name!r}; its parameters: {known}")
            kwargs[name] = _convert(name, value, fields[name])
        return cls(**kwargs)


def _convert(name: str, value: Any, fld: dataclasses.Field) -> Any:
    if not isinstance(value, str):
        return value
    default = fld.default if fld.default is not dataclasses.MISSING else None
    kind = type(default) if default is not None else str
    try:
        if kind is bool:
            lowered = value.strip().lower()
            if lowered not in {"1", "0", "true", "false", "yes", "no"}:
                raise ValueError(value)
            return lowered in {"1", "true", "yes"}
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
    except ValueError:
        raise BenchmarkError(f"parameter {name}={value!r}: expected a {kind.__name__}") from None
    return value


def parse_params(items: list[str] | None) -> dict[str, str]:
    """Parse ``["a=1", "b=x"]`` from the command line."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise BenchmarkError(f"--defense-param {item!r}: expected name=value")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def defense_pgd_steps(defense: Defense) -> int:
    """PGD steps per batch a defense declares (instance attribute wins over the class one)."""
    steps = getattr(defense, "pgd_steps", None)
    if not isinstance(steps, int) or steps < 0:
        raise BenchmarkError(f"defense {type(defense).__name__} must declare pgd_steps as an int ≥ 0")
    return steps
