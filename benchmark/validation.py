"""Validating a third-party defense before it is allowed near the results store.

``validate_defense`` checks, in order, and stops at the first failure with one message:
1. the plugin imports (a ``.py`` file via ``--plugin``, or an installed ``rrb.defenses`` entry point);
2. it registers exactly one new defense, not shadowing a built-in;
3. the class subclasses :class:`benchmark.defense_api.Defense`, has the
   ``training_step(model, images, labels, ctx)`` signature, builds with its defaults and declares
   its PGD steps per batch;
4. one training step on a tiny batch returns a finite scalar loss whose gradient reaches the model,
   and, if the defense perturbs, the perturbed images stay inside ε and [0, 1].
A failed file's registrations are rolled back; nothing is written anywhere.

The same checks (3 and 4) run wherever a plugin is *used*, not only in ``rrb submit``:
:func:`check_plugins_in_use` runs them for every plugin defense and plugin attack a ``rrb train``,
``rrb attack`` or ``rrb run`` is about to use, before any work; a plugin attack is built with its
defaults and run on four digits queries (two PGD steps), and every value it reports must be finite.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import torch

from .defense_api import Defense, StepResult, TrainContext
from .errors import BenchmarkError
from .plugins import load_builtins, load_plugin_file, restore_registries, snapshot_registries
from .registry import DEFENSES, Entry


@dataclass
class ValidatedPlugin:
    entry: Entry
    path: Path | None  # None for an installed entry point
    loss: float
    pgd_steps: int
    perturbs: bool

    def describe(self) -> str:
        """The line rrb submit prints once the plugin passed."""
        entry = self.entry
        origin = f"file {self.path}" if self.path is not None else f"installed package ({entry.source})"
        return (f"rrb: plugin defense {entry.name!r} from {origin} passed validation (one step: loss "
                f"{self.loss:.4f}, {self.pgd_steps} PGD steps per batch, "
                f"{'perturbs' if self.perturbs else 'no perturbation'}"
                f"{', sha256 ' + entry.source_hash[:12] if entry.source_hash else ''})")


def load_defense_plugin(file_or_name: str) -> tuple[Entry, Path | None]:
    """Import a plugin file (registering what it holds) or find an installed plugin by name.

    A file must register exactly one new defense (it may also register attacks); a name must be
    a plugin defense, not a built-in. The caller rolls back on failure.
    """
    load_builtins()
    path = Path(file_or_name)
    if path.suffix == ".py" or path.is_file():
        registered = load_plugin_file(path)
        new = registered["defenses"]
        others = [f"{kind[:-1]} {e.name!r}" for kind, es in registered.items()
                  if kind not in ("defenses", "attacks") for e in es]
        if len(new) != 1 or others:
            names = ", ".join(e.name for e in new) or "none"
            raise BenchmarkError(f"plugin {str(path)!r} must register exactly one new defense with "
                                 f"@DEFENSES.register(\"name\") on a Defense subclass; it registered "
                                 f"{len(new)} ({names})"
                                 + (f" and {', '.join(others)}" if others else ""))
        return new[0], path
    try:
        entry = DEFENSES.get(file_or_name)
    except BenchmarkError as exc:
        installed = ", ".join(e.name for e in DEFENSES.entries() if e.is_plugin) or "none"
        raise BenchmarkError(f"{file_or_name!r} is neither a plugin .py file nor an installed plugin defense "
                             f"(rrb.defenses entry point; installed: {installed}): {exc}") from None
    if not entry.is_plugin:
        raise BenchmarkError(f"{file_or_name!r} is a built-in defense; submit a plugin .py file or the name of "
                             "an installed plugin defense")
    return entry, None


def validate_defense(file_or_name: str, *, seed: int = 0) -> ValidatedPlugin:
    """Load and check a defense plugin (see the module docstring).

    On any failure every registration made while loading it is rolled back (and the file is
    forgotten, so a fixed file can be loaded again in the same process) and one BenchmarkError
    says what is wrong. On success the plugin stays registered, ready for the matrix.
    """
    snapshot = snapshot_registries()
    try:
        entry, path = load_defense_plugin(file_or_name)
        result = _check(entry, seed)
    except BenchmarkError:
        restore_registries(snapshot)
        raise
    except Exception as exc:  # a plugin can break in ways the checks do not foresee
        restore_registries(snapshot)
        raise BenchmarkError(f"plugin {file_or_name!r} failed validation: {type(exc).__name__}: {exc}") from None
    _CHECKED.add(("defense", entry.name, entry.source_hash))  # the matrix need not check it again
    return ValidatedPlugin(entry, path, *result)


def check_plugins_in_use(defenses: list[str] | tuple[str, ...] = (), attacks: list[str] | tuple[str, ...] = (), *,
                         seed: int = 0) -> None:
    """Validate every plugin among ``defenses`` and ``attacks`` (names as given; built-ins are skipped).

    One BenchmarkError for the first problem, naming the plugin and what is accepted. Each plugin
    is checked once per process (by name and file hash)."""
    from .registry import ATTACKS

    for name in dict.fromkeys(defenses):
        entry = DEFENSES.get(name)
        if entry.is_plugin and ("defense", entry.name, entry.source_hash) not in _CHECKED:
            _guarded(entry.name, "defense", lambda e=entry: _check(e, seed))
            _CHECKED.add(("defense", entry.name, entry.source_hash))
    for name in dict.fromkeys(attacks):
        entry = ATTACKS.get(name)
        if entry.is_plugin and ("attack", entry.name, entry.source_hash) not in _CHECKED:
            _guarded(entry.name, "attack", lambda e=entry: check_attack(e, seed))
            _CHECKED.add(("attack", entry.name, entry.source_hash))


_CHECKED: set[tuple[str, str, str | None]] = set()
# The one validation step of a plugin defense runs a reduced adversary (its PGD steps divided by
# this, the step size multiplied by it, as a reduced preset does): a check of the interface and the
# budget, cheap enough to run before every use.
CHECK_PGD_DIVISOR = 8


def _guarded(name: str, kind: str, check) -> None:
    try:
        check()
    except BenchmarkError:
        raise
    except Exception as exc:  # a plugin can break in ways the checks do not foresee
        raise BenchmarkError(f"plugin {kind} {name!r} failed validation: {type(exc).__name__}: {exc}") from None


def check_attack(entry: Entry, seed: int = 0) -> None:
    """A plugin attack: an :class:`attacks.base.Attack` subclass that builds with its defaults,
    declares its metric keys, and reports a finite value for each on four digits queries."""
    from attacks.base import Attack, Gallery
    from attacks.runner import run_attacks

    from .datasets import load_digits
    from .embedding import embed_split
    from .models import C2F2
    from .presets import PROFILES

    name, cls = entry.name, entry.obj
    if not (inspect.isclass(cls) and issubclass(cls, Attack)):
        raise BenchmarkError(f"plugin attack {name!r} must be a class deriving from attacks.base.Attack, "
                             f"got {type(cls).__name__}")
    try:
        attack = cls()
    except Exception as exc:
        raise BenchmarkError(f"plugin attack {name!r} cannot be built with its defaults: "
                             f"{type(exc).__name__}: {exc}") from None
    metrics = getattr(attack, "metrics", ())
    if (not isinstance(metrics, tuple) or not metrics
            or not all(isinstance(m, str) and m.strip() for m in metrics)):
        raise BenchmarkError(f"plugin attack {name!r}: metrics must be a non-empty tuple of metric names "
                             f"(str), got {metrics!r}")
    torch.manual_seed(seed)
    bundle = load_digits()
    model = C2F2(embedding_dim=32).eval()
    test = bundle.test.subset(torch.arange(64))
    gallery = Gallery(embed_split(model, test, device=torch.device("cpu")), test.labels)
    try:
        report = run_attacks(model, lambda idx: test.batch(idx), gallery, [attack],
                             PROFILES["rob28"].pgd_config(steps=2), query_index=torch.arange(4),
                             batch_size=4, seed=seed, device=torch.device("cpu"), progress=False)
    except BenchmarkError as exc:
        raise BenchmarkError(f"plugin attack {name!r} failed on a tiny batch: {exc}") from None
    except Exception as exc:
        raise BenchmarkError(f"plugin attack {name!r} raised on a tiny batch (4 digits queries): "
                             f"{type(exc).__name__}: {exc}") from None
    for key in metrics:
        value = report.after.get(key), report.before.get(key)
        if any(v is None or not isinstance(v, (int, float)) or v != v or abs(v) == float("inf") for v in value):
            raise BenchmarkError(f"plugin attack {name!r}: metric {key!r} must be a finite number before and "
                                 f"after the attack, got {value[1]!r} / {value[0]!r}")


def _check(entry: Entry, seed: int) -> tuple[float, int, bool]:
    name = entry.name
    cls = entry.obj
    if not (inspect.isclass(cls) and issubclass(cls, Defense)):
        raise BenchmarkError(f"plugin defense {name!r} must be a class deriving from benchmark.defense_api.Defense, "
                             f"got {type(cls).__name__}")
    step_fn = getattr(cls, "training_step", None)
    if step_fn is Defense.training_step:
        raise BenchmarkError(f"plugin defense {name!r} does not implement training_step(model, images, labels, ctx)")
    try:
        inspect.signature(step_fn).bind(None, "model", "images", "labels", "ctx")
    except TypeError:
        raise BenchmarkError(f"plugin defense {name!r}: training_step{inspect.signature(step_fn)} has the wrong "
                             "signature; expected training_step(self, model, images, labels, ctx)") from None
    if not any("pgd_steps" in vars(klass) for klass in cls.__mro__ if klass is not Defense):
        raise BenchmarkError(f"plugin defense {name!r} must declare its PGD steps per training batch as a class "
                             "attribute, e.g. `pgd_steps: ClassVar[int] = 0`")
    try:
        defense = cls()
    except Exception as exc:
        raise BenchmarkError(f"plugin defense {name!r} cannot be built with its defaults: "
                             f"{type(exc).__name__}: {exc}") from None
    steps = getattr(defense, "pgd_steps", None)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise BenchmarkError(f"plugin defense {name!r}: pgd_steps must be an int >= 0, got {steps!r}")
    return _one_step(name, defense, steps, seed)


def _one_step(name: str, defense: Defense, steps: int, seed: int) -> tuple[float, int, bool]:
    from .datasets import SPC2Sampler, load_digits
    from .models import C2F2
    from .presets import PROFILES, TrainingBudget

    torch.manual_seed(seed)
    bundle = load_digits()
    generator = torch.Generator().manual_seed(seed)
    index = next(iter(SPC2Sampler(bundle.train.labels, 8, generator)))
    images, labels = bundle.train.batch(index), bundle.train.labels[index]
    model = C2F2(embedding_dim=32)
    ctx = TrainContext.under(TrainingBudget.of(PROFILES["rob28"], CHECK_PGD_DIVISOR), epoch=1, num_epochs=2,
                             step=1, generator=generator, attention_lambda=10.0)
    model.set_train_mode(adversarial=defense.trains_batchnorm)
    try:
        defense.reset()
        result = defense.training_step(model, images, labels, ctx)
    except Exception as exc:
        raise BenchmarkError(f"plugin defense {name!r} raised inside training_step: "
                             f"{type(exc).__name__}: {exc}") from None
    if not isinstance(result, StepResult):
        raise BenchmarkError(f"plugin defense {name!r}: training_step must return a benchmark.defense_api.StepResult, "
                             f"got {type(result).__name__}")
    loss = result.loss
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise BenchmarkError(f"plugin defense {name!r}: the loss must be a scalar tensor")
    if not torch.isfinite(loss):
        raise BenchmarkError(f"plugin defense {name!r}: the loss is not finite ({float(loss.detach())})")
    if not loss.requires_grad:
        raise BenchmarkError(f"plugin defense {name!r}: the loss has no gradient (was it detached?)")
    model.zero_grad(set_to_none=True)
    try:
        loss.backward()
    except Exception as exc:
        raise BenchmarkError(f"plugin defense {name!r}: backward failed: {type(exc).__name__}: {exc}") from None
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    if not any(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads):
        raise BenchmarkError(f"plugin defense {name!r}: the loss gives no finite, non-zero gradient to the model")
    perturbs = result.perturbed is not None
    if steps > 0 and not perturbs:
        raise BenchmarkError(f"plugin defense {name!r} declares {steps} PGD steps but returns no perturbed images; "
                             "set StepResult.perturbed and StepResult.originals so the budget can be checked")
    if perturbs:
        if result.originals is None or result.originals.shape != result.perturbed.shape:
            raise BenchmarkError(f"plugin defense {name!r}: StepResult.originals must hold the clean images the "
                                 "perturbed ones started from, same shape")
        if not torch.isfinite(result.perturbed).all():
            raise BenchmarkError(f"plugin defense {name!r}: the perturbed images hold NaN or infinite values")
        delta = (result.perturbed - result.originals).abs().max().item()
        if delta > ctx.epsilon + 1e-5:
            raise BenchmarkError(f"plugin defense {name!r}: perturbation {delta:.4f} exceeds the budget "
                                 f"epsilon = {ctx.epsilon:.4f}")
        if result.perturbed.min() < 0 or result.perturbed.max() > 1:
            raise BenchmarkError(f"plugin defense {name!r}: perturbed images leave the [0, 1] pixel range")
    return float(loss.detach()), steps, perturbs
