"""The defense interface: one class, one method from a clean SPC-2 batch to the loss.

The trainer owns the loop, the optimiser, timing and telemetry; a defense only turns a batch
into the loss to minimise. Built-in defenses live in the top-level ``defenses`` package;
third-party ones subclass :class:`Defense` the same way and register with
``@DEFENSES.register("name")`` (or through the ``rrb.defenses`` entry-point group).

Hyper-parameters are dataclass fields of the defense class, with the published defaults; the
CLI's ``--defense-param [defense:]name=value`` overrides them (the value is converted to the field's type)
and ``params()`` records them with the run. A field declared with :func:`param` carries its valid
range (or choices), checked when the defense is built, before any training: a bad value is one
clear :class:`BenchmarkError` naming what is accepted.

``version`` is the implementation version of a defense: it enters the cell id, so a change to a
built-in defense that changes its numbers must bump it (``tests/test_versions.py`` fails when a
defense's code changes while its version does not).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from .errors import BenchmarkError
from .losses import Triplets, row_distance
from .pgd import PGDConfig, pgd
from .presets import TrainingBudget


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

    @classmethod
    def under(cls, budget: TrainingBudget, **fields: Any) -> TrainContext:
        """A context whose ε, α and divisor are ``budget``'s (the other fields as keywords)."""
        return cls(epsilon=budget.epsilon, alpha=budget.alpha, pgd_divisor=budget.divisor, **fields)

    @property
    def budget(self) -> TrainingBudget:
        return TrainingBudget(self.epsilon, self.alpha, self.pgd_divisor)

    def pgd_config(self, defense_steps: int, *, alpha: float | None = None, alpha_scale: float = 1.0) -> PGDConfig:
        """PGD budget for ``defense_steps`` nominal steps under this preset
        (:meth:`benchmark.presets.TrainingBudget.pgd_config`: ``alpha`` is the defense's own step
        size where it is not the profile's training α, ``alpha_scale`` multiplies it)."""
        return self.budget.pgd_config(defense_steps, alpha=alpha, alpha_scale=alpha_scale)

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


@dataclass(frozen=True)
class ParamRange:
    """The values a defense hyper-parameter accepts: an interval, or a set of choices."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: low itself is not accepted
    high_open: bool = False
    choices: tuple[Any, ...] = ()

    def accepts(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True

    def describe(self, name: str) -> str:
        if self.choices:
            return f"{name} in {{{', '.join(str(c) for c in self.choices)}}}"
        parts = []
        if self.low is not None:
            parts.append(f"{_num(self.low)} {'<' if self.low_open else '≤'} ")
        parts.append(name)
        if self.high is not None:
            parts.append(f" {'<' if self.high_open else '≤'} {_num(self.high)}")
        return "".join(parts) if len(parts) > 1 else f"{name}: any finite number"


def _num(value: float) -> str:
    return f"{value:g}"


def param(default: Any, *, low: float | None = None, high: float | None = None, low_open: bool = False,
          high_open: bool = False, choices: tuple[Any, ...] = ()) -> Any:
    """A defense hyper-parameter with its valid range: ``margin: float = param(0.2, low=0)``."""
    return field(default=default, metadata={"range": ParamRange(low, high, low_open, high_open, tuple(choices))})


@dataclass
class Defense:
    """Base class of all defenses. Subclasses are dataclasses whose fields are hyper-parameters."""

    # Nominal PGD steps per training batch at the paper preset (0 for no adversary).
    pgd_steps: ClassVar[int] = 0
    # Whether BatchNorm layers train (REFERENCE §4.0: only EST unfreezes them).
    trains_batchnorm: ClassVar[bool] = False
    # Implementation version: part of the cell id. Bump it with any change that changes numbers.
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every hyper-parameter against its declared range; one clear error for the first bad one."""
        name = getattr(type(self), "registry_name", type(self).__name__)
        for fld in dataclasses.fields(self):
            spec = fld.metadata.get("range") if fld.metadata else None
            if spec is None or fld.name.startswith("_"):
                continue
            value = getattr(self, fld.name)
            if not spec.accepts(value):
                raise BenchmarkError(f"defense {name!r}: {fld.name}={value!r} is not accepted; "
                                     f"accepted: {spec.describe(fld.name)}")

    @classmethod
    def param_ranges(cls) -> dict[str, ParamRange]:
        """Declared ranges by parameter name (parameters without one are absent)."""
        return {f.name: f.metadata["range"] for f in dataclasses.fields(cls)
                if f.metadata and "range" in f.metadata and not f.name.startswith("_")}

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
    spec = fld.metadata.get("range") if fld.metadata else None
    if isinstance(default, str) and spec is not None and spec.choices:
        value = value.strip().lower()
    try:
        if kind is bool:
            lowered = value.strip().lower()
            if lowered not in {"1", "0", "true", "false", "yes", "no"}:
                raise ValueError(value)
            return lowered in {"1", "true", "yes"}
        if kind is int:
            return int(value)
        if kind is float:
            number = float(value)
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError(value)
            return number
    except ValueError:
        finite = " (a finite number)" if kind is float else ""
        raise BenchmarkError(f"parameter {name}={value!r}: expected a {kind.__name__}{finite}") from None
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


def parse_defense_params(items: list[str] | None, defenses: Sequence[str] | None) -> dict[str, dict[str, str]]:
    """Parse ``--defense-param`` items as ``{defense: {name: value}}``.

    One syntax for every command: ``DEFENSE:NAME=VALUE`` is accepted everywhere; the short
    ``NAME=VALUE`` where exactly one defense is named (``defenses``: the command's defenses, as
    given; ``None`` for the default matrix of every built-in), and then it belongs to that one.
    Which defenses the names refer to is checked by the caller (it knows the registry).
    """
    named = list(defenses or [])
    grouped: dict[str, list[str]] = {}
    for item in items or []:
        key, equals, value = item.partition("=")
        defense, colon, name = key.partition(":")
        if not colon:
            if len(named) != 1:
                raise BenchmarkError(f"--defense-param {item!r}: expected DEFENSE:NAME=VALUE, e.g. ga:gamma=0.05 "
                                     "(NAME=VALUE alone only where one defense is named)")
            defense, name = named[0], key
        if not equals or not defense.strip() or not name.strip():
            form = "DEFENSE:NAME=VALUE, e.g. ga:gamma=0.05" + (" (or NAME=VALUE)" if len(named) == 1 else "")
            raise BenchmarkError(f"--defense-param {item!r}: expected {form}")
        grouped.setdefault(defense.strip(), []).append(f"{name}={value}")
    return {defense: parse_params(assignments) for defense, assignments in grouped.items()}


# -- helpers for defense authors ---------------------------------------------------------------
# Every adversarial defense perturbs through ``perturb``: it puts the model in eval mode, runs the
# shared PGD loop and restores the training mode the defense asked for, so the model-mode
# convention of REFERENCE §4.0 (attack in eval mode, train forward in train mode) lives in one place.


def clean_embeddings(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Embeddings of the clean batch in eval mode, without gradient (the attacker's view)."""
    model.eval()
    with torch.no_grad():
        return model(images)


def perturb(model: torch.nn.Module, images: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor],
            config: PGDConfig, *, trains_batchnorm: bool,
            stop: Callable[[int, float], bool] | None = None) -> torch.Tensor:
    """Minimise ``loss_fn`` over the ε-ball around ``images`` with the model in eval mode.

    The model is put back into training mode (``set_train_mode(adversarial=trains_batchnorm)``)
    afterwards, even if the loss raises. A zero step size means no perturbation at all (the
    CA-/COLO-TRIDE schedule in epoch 0), so no PGD step is spent on it.
    """
    if config.steps <= 0 or config.epsilon <= 0 or config.alpha <= 0:
        return images.detach().clone()
    model.eval()
    try:
        return pgd(images, loss_fn, config, stop=stop)
    finally:
        set_train_mode(model, trains_batchnorm)


def set_train_mode(model: torch.nn.Module, trains_batchnorm: bool) -> None:
    """Training mode for the training forward; plain ``nn.Module``s just get ``train()``."""
    if hasattr(model, "set_train_mode"):
        model.set_train_mode(adversarial=trains_batchnorm)
    else:
        model.train()


def embedding_shift(model: torch.nn.Module, perturbed: torch.Tensor, clean: torch.Tensor,
                    *, trains_batchnorm: bool) -> float:
    """Mean ‖f̂(x̃) − f̂(x)‖ with ``clean`` the eval-mode embeddings of the matching clean images.

    Measured in eval mode (one extra forward without gradient) so that a defense which trains
    BatchNorm does not report a shift caused by batch statistics instead of the perturbation.
    """
    model.eval()
    try:
        with torch.no_grad():
            return float(row_distance(model(perturbed), clean).mean())
    finally:
        set_train_mode(model, trains_batchnorm)


def defense_pgd_steps(defense: Defense) -> int:
    """PGD steps per batch a defense declares (instance attribute wins over the class one)."""
    steps = getattr(defense, "pgd_steps", None)
    if not isinstance(steps, int) or steps < 0:
        raise BenchmarkError(f"defense {type(defense).__name__} must declare pgd_steps as an int ≥ 0")
    return steps
