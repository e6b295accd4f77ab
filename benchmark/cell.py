"""One matrix cell: (dataset, defense + parameters, seed) under a preset and a profile.

Data flows one way: config → train (defense) → embed the clean gallery once → attacks → rows.
The cell's config hash names its checkpoint and its results file, so an existing cell is reused
and a changed setting is a new cell, never an overwrite.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoints import (
    WEIGHTS_METRIC,
    TrainedModel,
    load_checkpoint,
    load_training_state,
    save_checkpoint,
    save_training_state,
    training_state_path,
    weights_sha256,
    weights_value,
)
from .collapseness import DEFAULT_LAMBDA_28, LAMBDA_BY_DATASET
from .datasets import DatasetBundle, load_dataset
from .defense_api import Defense
from .determinism import KERNELS, deterministic_kernels
from .embedding import embed_split
from .errors import BenchmarkError
from .models import make_model, set_precision
from .plugins import load_builtins
from .precision import DEFAULT_PRECISION, check_precision
from .presets import AttackProfile, Preset, get_preset, get_profile, profile_for_input
from .provenance import provenance
from .registry import DEFENSES, MODELS
from .strong_eval import DEFAULT_STRONG, StrongSpec
from .telemetry import training_summary
from .trainer import TrainingState, resolve_device, seed_everything, train_model


@dataclass(frozen=True)
class CellConfig:
    """Everything that decides a cell's numbers (and a few things that do not, like paths)."""

    dataset: str
    defense: str
    seed: int = 0
    preset: str = "quick"
    profile: str = "auto"  # auto | rob28 | rob224
    model: str | None = None  # None: the dataset's default model
    defense_params: tuple[tuple[str, str], ...] = ()
    attention_lambda: float | None = None  # None: per-dataset default
    attacks: tuple[str, ...] | None = None  # None: the whole built-in suite
    # torch's CPU thread count, part of a CPU cell's identity (another count adds in another order:
    # other weights, other numbers). None: this process's count when the cell is resolved.
    threads: int | None = None
    # The forward pass's precision (benchmark.precision); a non-default one is part of the identity.
    precision: str = "float32"
    # The strong evaluation (benchmark.strong_eval.DEFAULT_STRONG) beside the standard run; part of the
    # id when on. False: the standard run only (the cell id it had before the strong evaluation).
    strong: bool = True
    # Not part of the hash:
    data_root: str | None = None
    weights: str | None = None
    device: str | None = None

    def with_params(self, params: dict[str, Any]) -> CellConfig:
        return CellConfig(**{**asdict(self), "defense_params": tuple(sorted((k, str(v)) for k, v in params.items()))})


@dataclass
class ResolvedCell:
    """A CellConfig with names canonicalised, defaults filled in and the dataset loaded."""

    config: CellConfig
    bundle: DatasetBundle
    model_name: str
    defense_name: str
    defense: Defense
    preset: Preset
    profile: AttackProfile
    attention_lambda: float
    attack_names: tuple[str, ...]
    device: torch.device
    plugin_source: str | None = None
    plugin_hash: str | None = None
    threads: int = 1  # torch CPU threads the cell trains and evaluates with (CPU cells)
    precision: str = "float32"  # benchmark.precision: what the model's trunk computes in
    strong: StrongSpec | None = None  # the strong evaluation's ensemble; None: the standard run only
    cell_id: str = field(default="")
    train_id: str = field(default="")

    def __post_init__(self) -> None:
        self.train_id = config_hash(self.train_payload())
        self.cell_id = config_hash(self.hash_payload())

    def train_payload(self) -> dict[str, Any]:
        """What decides the trained weights: the checkpoint is keyed by its hash. The defense's
        implementation version (built-ins) or file hash (plugins) is part of it, so a fixed
        defense gets new cells instead of silently reusing stale ones."""
        return {
            "dataset": self.bundle.name, "model": self.model_name, "defense": self.defense_name,
            "defense_version": int(getattr(type(self.defense), "version", 1)),
            "defense_params": self.defense.params(), "seed": self.config.seed,
            "preset": self.preset.to_dict(), "train_epsilon": self.profile.train_epsilon,
            "train_alpha": self.profile.train_alpha, "attention_lambda": self.attention_lambda,
            "plugin_hash": self.plugin_hash, "weights": bool(self.config.weights),
            **({"cpu_threads": self.threads} if self.device.type == "cpu" else {}),
            "kernels": KERNELS,
            # float32 cells keep the ids they had before precision was a choice.
            **({"precision": self.precision} if self.precision != DEFAULT_PRECISION else {}),
        }

    def hash_payload(self) -> dict[str, Any]:
        """What decides the cell's rows: training plus the attack profile and suite, with each
        attack's implementation version and, for plugin attacks, the plugin file's hash."""
        return {**self.standard_payload(), **({"strong": self.strong.to_dict()} if self.strong is not None else {})}

    def standard_payload(self) -> dict[str, Any]:
        """Training plus the standard run's profile and suite: what a study of the cell's model is
        keyed by (the strong evaluation's version does not change the study)."""
        return {**self.train_payload(), "profile": self.profile.to_dict(), "attacks": list(self.attack_names),
                "attack_implementations": attack_implementations(self.attack_names)}

    @property
    def standard_id(self) -> str:
        """The id the cell has without its strong evaluation (:meth:`standard_payload`)."""
        return config_hash(self.standard_payload())

    @property
    def defense_params_json(self) -> str:
        return json.dumps(self.defense.params(), sort_keys=True, default=str)

    @property
    def entry(self) -> str:
        """Defense name plus the parameters that differ from its defaults."""
        defaults = type(self.defense)().params()
        changed = {k: v for k, v in self.defense.params().items() if defaults.get(k) != v}
        if not changed:
            return self.defense_name
        return f"{self.defense_name}(" + ", ".join(f"{k}={v}" for k, v in sorted(changed.items())) + ")"

    def checkpoint_path(self, results_dir: Path) -> Path:
        return Path(results_dir) / "checkpoints" / self.bundle.name / f"{self.defense_name}-s{self.config.seed}-{self.train_id[:16]}.pt"

    def new_model(self) -> torch.nn.Module:
        """A freshly initialised model of this cell (its architecture, input channels and weights)."""
        return set_precision(make_model(self.model_name, in_channels=self.bundle.in_channels,
                                        weights=self.config.weights), self.precision)

    def clean_gallery(self, model: torch.nn.Module, embeddings: torch.Tensor | None = None) -> Any:
        """The clean gallery every attack on this cell ranks against: the test split embedded once by
        ``model`` (``embeddings`` when already computed), on the cell's device."""
        from attacks.base import Gallery

        if embeddings is None:
            embeddings = embed_split(model, self.bundle.test, device=self.device)
        return Gallery(embeddings, self.bundle.test.labels.to(self.device))

    def query_index(self, queries: int | str | None = None) -> torch.Tensor:
        """The test images the attacks perturb, a seeded selection: the preset's count (``None``),
        ``queries`` of them, or every test image (``"all"``)."""
        from attacks.runner import select_queries

        count = self.preset.attack_queries if queries is None else (None if queries == "all" else int(queries))
        return select_queries(len(self.bundle.test), count, self.config.seed)

    def load_checkpoint(self, path: Path) -> TrainedModel | None:
        """This cell's trained model from ``path``; ``None`` when the file is corrupt or another cell's."""
        return load_checkpoint(path, self.train_id, self.new_model, self.device)


def attack_implementations(names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Per attack: its implementation version, its hyper-parameters (as the suite runs it) and, for a
    plugin, the sha256 of its file. All three decide the numbers, so all three enter the cell id."""
    from .registry import ATTACKS

    out = {}
    for name in names:
        entry = ATTACKS.get(name)
        try:
            hyperparameters = {k: str(v) for k, v in entry.obj().hyperparameters().items()}
        except Exception:  # a plugin attack that cannot be built with defaults fails later, with its own error
            hyperparameters = {}
        out[entry.name] = {"version": int(getattr(entry.obj, "version", 1)), "hyperparameters": hyperparameters,
                           "plugin_hash": entry.source_hash if entry.is_plugin else None}
    return out


def config_hash(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def resolve(config: CellConfig, bundle: DatasetBundle | None = None) -> ResolvedCell:
    """Validate names and numbers, load the dataset and fill every default."""
    load_builtins()
    if config.seed < 0:
        raise BenchmarkError(f"seed must be a non-negative integer, got {config.seed}")
    preset = get_preset(config.preset)
    precision = check_precision(config.precision)
    # The defense and its parameter ranges are checked before any data is loaded.
    defense_entry = DEFENSES.get(config.defense)
    defense = defense_entry.obj.from_params(dict(config.defense_params))
    if bundle is None:
        bundle = load_dataset(config.dataset, data_root=config.data_root)
    model_name = MODELS.canonical(config.model or bundle.default_model)
    profile = profile_for_input(bundle.input_size) if config.profile in ("auto", "", None) else get_profile(config.profile)
    lam = config.attention_lambda
    if lam is None:
        lam = LAMBDA_BY_DATASET.get(bundle.name, DEFAULT_LAMBDA_28)
    attack_names = tuple(config.attacks) if config.attacks else default_attack_names()
    from .registry import ATTACKS

    attack_names = tuple(ATTACKS.canonical(a) for a in attack_names)
    threads = torch.get_num_threads() if config.threads is None else config.threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise BenchmarkError(f"threads must be a positive integer (torch CPU threads), got {config.threads!r}")
    return ResolvedCell(config, bundle, model_name, defense_entry.name, defense, preset, profile, float(lam),
                        attack_names, resolve_device(config.device),
                        plugin_source=defense_entry.source if defense_entry.is_plugin else None,
                        plugin_hash=defense_entry.source_hash, threads=threads, precision=precision,
                        strong=DEFAULT_STRONG if config.strong else None)


@contextmanager
def cell_runtime(cell: ResolvedCell) -> Iterator[None]:
    """Run a cell's training or evaluation as its identity says: with deterministic kernels
    (:mod:`benchmark.determinism`) and, on CPU, the cell's thread count (both restored after), so
    that the same cell id always means the same numbers whoever calls."""
    with deterministic_kernels():
        if cell.device.type != "cpu" or torch.get_num_threads() == cell.threads:
            yield
            return
        previous = torch.get_num_threads()
        torch.set_num_threads(cell.threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


def default_attack_names() -> tuple[str, ...]:
    """The built-in ERS suite, in ERS order."""
    return ("ca+", "ca-", "qa+", "qa-", "tma", "es", "ltm", "gtm", "gtt")


def train_or_load(cell: ResolvedCell, results_dir: Path, *, progress: bool = True,
                  retrain: bool = False) -> TrainedModel:
    """Train the cell's model (with its thread count), or load its checkpoint when one exists
    (weights_only=True)."""
    path = cell.checkpoint_path(results_dir)
    partial = training_state_path(path)
    if path.exists() and not retrain:
        loaded = cell.load_checkpoint(path)
        if loaded is not None:
            return loaded
    with cell_runtime(cell):
        seed_everything(cell.config.seed)
        model = cell.new_model()
        resume = None if retrain else load_training_state(partial, cell.train_id)
        if resume is not None:
            print(f"rrb: resuming the training of {cell.entry} seed {cell.config.seed} on {cell.bundle.name} after "
                  f"epoch {resume.epoch} of {cell.preset.epochs_for(cell.bundle.name)} ({partial})", file=sys.stderr)

        def snapshot(state: TrainingState) -> None:
            save_training_state(partial, state, train_id=cell.train_id)

        history = train_model(model, cell.bundle, cell.defense, cell.preset, cell.profile, seed=cell.config.seed,
                              device=cell.device, attention_lambda=cell.attention_lambda,
                              model_name=cell.model_name, progress=progress, resume=resume, on_epoch=snapshot)
    save_checkpoint(path, model, history, train_id=cell.train_id, train_payload=cell.train_payload())
    partial.unlink(missing_ok=True)
    return TrainedModel(model, history, loaded=False)


def benign_metrics(cell: ResolvedCell, model: torch.nn.Module, test_embeddings: torch.Tensor) -> dict[str, float]:
    """R@1, R@2, mAP, mAP@R, mAP@10, NMI on the test split and R@1 on the train split; R@1 through
    faiss indexes; the clean test gallery's spread (``schema.BENIGN_METRICS``)."""
    from .deployment import index_recalls
    from .retrieval_metrics import retrieval_metrics
    from .shrinkage import embedding_spread

    test_labels = cell.bundle.test.labels.to(test_embeddings.device)
    metrics = retrieval_metrics(test_embeddings, test_labels,
                                nmi_clusters=cell.bundle.num_test_classes, seed=cell.config.seed)
    metrics.update(index_recalls(test_embeddings, test_labels))
    metrics.update({f"spread:{k}": v for k, v in embedding_spread(test_embeddings, seed=cell.config.seed).items()})
    train = cell.bundle.train
    if len(train) > 10000:  # R@1 on a seeded 10k subset keeps WHM cheap on SOP-sized splits
        keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(cell.config.seed))[:10000]
        train = train.subset(keep.sort().values)
    train_embeddings = embed_split(model, train, device=cell.device)
    train_metrics = retrieval_metrics(train_embeddings, train.labels.to(train_embeddings.device), ks=(1,), nmi=False)
    metrics["train:R@1"] = train_metrics["R@1"]
    return metrics


@dataclass
class CellOutput:
    """A finished cell: its tidy rows (schema.ALL_COLUMNS) and its per-step telemetry."""

    rows: Any  # pandas.DataFrame
    telemetry: Any  # pandas.DataFrame
    cell: ResolvedCell
    trained: TrainedModel
    queries: Any = None  # pandas.DataFrame (schema.QUERY_COLUMNS) with a strong evaluation, else None


def evaluate_cell(cell: ResolvedCell, trained: TrainedModel, *, progress: bool = True,
                  queries: int | str | None = None) -> CellOutput:
    """Evaluate the cell (:func:`_evaluate_cell`) as its identity says (:func:`cell_runtime`)."""
    with cell_runtime(cell):
        return _evaluate_cell(cell, trained, progress=progress, queries=queries)


def _evaluate_cell(cell: ResolvedCell, trained: TrainedModel, *, progress: bool = True,
                   queries: int | str | None = None) -> CellOutput:
    """Embed the clean gallery once, score benign retrieval, run the whole attack suite, build rows.

    ``queries`` overrides the preset's attack query budget (``"all"``: every test image); the matrix
    never passes it, so stored cells always follow their preset (``rrb attack --queries``).
    """
    import pandas as pd

    from attacks.runner import run_attacks

    from .registry import ATTACKS
    from .robustness_scores import (
        ARS_KEYS,
        ERS_KEYS,
        RANKED_SCORE,
        ROBRANK_ERS_KEYS,
        ROBRANK_SCORE,
        ROBRANK_STRONG_SCORE,
        STRONG_SCORE,
        ars,
        ars_mean,
        ers,
        ers_robrank,
        whm,
    )
    from .schema import BENIGN_METRICS, rows_frame

    eval_start = time.perf_counter()
    model = trained.model.to(cell.device).eval()
    gallery_embeddings = embed_split(model, cell.bundle.test, device=cell.device)
    benign = benign_metrics(cell, model, gallery_embeddings)
    gallery = cell.clean_gallery(model, gallery_embeddings)
    attack_objs = [ATTACKS.create(name) for name in cell.attack_names]
    query_index = cell.query_index(queries)
    report = run_attacks(model, lambda idx: cell.bundle.test.batch(idx), gallery, attack_objs, cell.profile.pgd_config(),
                         query_index=query_index, batch_size=cell.preset.attack_batch, seed=cell.config.seed,
                         device=cell.device, progress=progress, strong=cell.strong)
    eval_seconds = time.perf_counter() - eval_start

    base = {
        "dataset": cell.bundle.name, "model": cell.model_name, "defense": cell.defense_name,
        "defense_params": cell.defense_params_json, "seed": cell.config.seed, "preset": cell.preset.name,
        "preset_version": cell.preset.version, "faithful": cell.preset.faithful,
        "profile": cell.profile.name, "profile_version": cell.profile.version,
        "cell_id": cell.cell_id, "entry": cell.entry, "is_plugin": cell.plugin_source is not None,
        "plugin_source": cell.plugin_source or "", "plugin_hash": cell.plugin_hash or "",
        "attack_plugin": False,
        "epsilon": cell.profile.epsilon, "alpha": cell.profile.alpha, "attack_steps": cell.profile.steps,
        "train_pgd_steps": trained.history.pgd_steps, "epochs": cell.preset.epochs_for(cell.bundle.name),
        "batch_pairs": cell.preset.batch_pairs, "attack_queries": int(len(query_index)),
        "attention_lambda": cell.attention_lambda, "collapsed": trained.history.collapsed,
        "train_seconds": trained.history.train_seconds, "seconds_per_epoch": trained.history.seconds_per_epoch,
        "attack_seconds": 0.0, "queries_per_second": 0.0, "eval_seconds": eval_seconds,
        "config_hash": cell.cell_id, "precision": cell.precision,
        "strong_eval": cell.strong.id if cell.strong is not None else "",
        **provenance(cell.device),
    }
    rows: list[dict[str, Any]] = []

    def add(attack: str, metric: str, value: float, variant: str = "", **extra: Any) -> None:
        described = {"metric_label": metric, "direction": "", "decimals": 4, "meaning": "", "attack_params": "",
                     "attack_plugin_hash": ""}
        rows.append({**base, **described, "attack": attack, "metric": metric, "variant": variant,
                     "value": float(value), **extra})

    for key in BENIGN_METRICS:
        add("benign", key, benign[key])
    after, before, strong = {}, {}, {}
    for attack in attack_objs:
        name = attack.registry_name
        seconds = report.seconds[name]
        qps = len(query_index) / seconds if seconds > 0 else 0.0
        entry = ATTACKS.get(name)
        plugin = entry.is_plugin
        params = json.dumps({k: str(v) for k, v in attack.hyperparameters().items()}, sort_keys=True)
        for key in attack.metrics:
            spec = attack.spec(key)
            extra = {"attack_seconds": seconds, "queries_per_second": qps, "attack_plugin": plugin,
                     "metric_label": spec.label, "direction": spec.direction, "decimals": int(spec.decimals),
                     "meaning": spec.meaning, "attack_params": params,
                     "attack_plugin_hash": (entry.source_hash or "") if plugin else ""}
            add(name, key, report.after[key], "adversarial", **extra)
            add(name, key, report.before[key], "clean", **extra)
            if key in report.strong:
                add(name, key, report.strong[key], "strong", **extra)
            if not plugin:
                after[key], before[key] = report.after[key], report.before[key]
                if key in report.strong:
                    strong[key] = report.strong[key]
    if all(k in after for k in ERS_KEYS):
        add("score", RANKED_SCORE, ers(after))
    if all(k in after for k in ROBRANK_ERS_KEYS):
        add("score", ROBRANK_SCORE, ers_robrank(after))
    if all(k in strong for k in ERS_KEYS):
        add("score", STRONG_SCORE, ers(strong), meaning=cell.strong.describe(cell.profile.steps))
    if all(k in strong for k in ROBRANK_ERS_KEYS):
        add("score", ROBRANK_STRONG_SCORE, ers_robrank(strong))
    if all(k in after for k in ARS_KEYS):
        for key, value in ars(before, after).items():
            add("score", f"ARS:{key}", value)
        add("score", "ARS", ars_mean(before, after))
    add("score", "WHM", whm(benign["train:R@1"], benign["R@1"]))
    for key, value in training_summary(trained.history.telemetry).items():
        add("training", key, value)
    # The evaluated model, identified: the full sha256 in ``meaning``, its first 52 bits as the value.
    digest = weights_sha256(model)
    add("training", WEIGHTS_METRIC, weights_value(digest), meaning=digest)

    frame = rows_frame(rows)
    telemetry = pd.DataFrame(trained.history.telemetry)
    for key, value in (("cell_id", cell.cell_id), ("dataset", cell.bundle.name), ("defense", cell.defense_name),
                       ("entry", cell.entry), ("seed", cell.config.seed), ("preset", cell.preset.name)):
        telemetry[key] = value
    return CellOutput(frame, telemetry, cell, trained, query_frame(cell, attack_objs, report, query_index))


def query_frame(cell: ResolvedCell, attacks: list, report: Any, query_index: torch.Tensor) -> Any:
    """The per-query values of a strong evaluation (schema.QUERY_COLUMNS), or None without one."""
    import pandas as pd

    from .schema import QUERY_COLUMNS

    if not report.query_values:
        return None
    queries = query_index.numpy()
    parts = []
    for attack in attacks:
        values = report.query_values[attack.name]
        for key in attack.metrics:
            parts.append(pd.DataFrame({
                "attack": attack.registry_name, "metric": key, "direction": attack.spec(key).direction,
                "query": queries, **{column: values[kind][key].detach().double().cpu().numpy()
                                     for column, kind in (("clean", "before"), ("standard", "standard"),
                                                          ("strong", "strong"))}}))
    frame = pd.concat(parts, ignore_index=True)
    for column, value in (("cell_id", cell.cell_id), ("dataset", cell.bundle.name), ("entry", cell.entry),
                          ("seed", cell.config.seed)):
        frame[column] = value
    return frame[QUERY_COLUMNS].astype({"query": "int64", "seed": "int64"})


def run_cell(config: CellConfig, results_dir: Path, *, progress: bool = True,
             bundle: DatasetBundle | None = None) -> CellOutput:
    """Train (or load) and evaluate one cell. Writing the rows is the store's job."""
    cell = resolve(config, bundle=bundle)
    trained = train_or_load(cell, Path(results_dir), progress=progress)
    return evaluate_cell(cell, trained, progress=progress)
