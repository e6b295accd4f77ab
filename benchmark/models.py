"""Embedding networks. Every model maps images in [0, 1] to L2-normalised embeddings.

Any input normalisation happens inside ``forward`` so attacks work in [0, 1] pixel space and
their gradient flows through it (REFERENCE §1.1).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import BenchmarkError
from .precision import DEFAULT_PRECISION, autocast, check_precision
from .registry import MODELS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EmbeddingModel(nn.Module):
    """Base: subclasses implement ``embed_raw``; ``forward`` returns unit-norm embeddings.

    ``embed_raw`` is ``embed_head(embed_trunk(x))``: subclasses that split their network that way
    (the built-ins do) can run the trunk in bfloat16 while the head and the normalisation stay in
    float32 (``precision``, :mod:`benchmark.precision`); a subclass that only overrides
    ``embed_raw`` runs in float32.
    """

    input_size: int = 28
    in_channels: int = 1
    embedding_dim: int = 512
    precision: str = "float32"

    def embed_trunk(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed_head(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed_raw(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_head(self.embed_trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision == "float32":
            return F.normalize(self.embed_raw(x), p=2, dim=-1)
        with autocast(self.precision, x.device.type):
            h = self.embed_trunk(x)
        return F.normalize(self.embed_head(h.float()), p=2, dim=-1)

    def set_train_mode(self, adversarial: bool = False) -> None:
        """Put the model in training mode (subclasses may keep parts frozen)."""
        self.train()


@MODELS.register("c2f2", description="2 conv + 2 fc layers for 1x28x28 inputs (RobRank rc2f2), 512-d")
class C2F2(EmbeddingModel):
    input_size = 28
    in_channels = 1

    def __init__(self, embedding_dim: int = 512, in_channels: int = 1):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.in_channels = in_channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 1024), nn.ReLU(),
                                  nn.Linear(1024, embedding_dim))

    def embed_trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.head[:-1](self.features(x))

    def embed_head(self, h: torch.Tensor) -> torch.Tensor:
        return self.head[-1](h)


@MODELS.register("resnet18", aliases=("rres18",),
                 description="torchvision ResNet-18, fc -> Linear(512, 512), ImageNet norm inside, BN frozen")
class ResNet18Embedding(EmbeddingModel):
    """ResNet-18 for 3x224x224 inputs.

    ImageNet weights are used when given (a local ``.pth`` state dict, or ``"imagenet"`` to use
    torchvision's weights cache); nothing is downloaded when no network exists. BatchNorm layers
    stay in eval mode during training except for EST-style defenses (REFERENCE §4.0).
    """

    input_size = 224
    in_channels = 3

    def __init__(self, embedding_dim: int = 512, weights: str | Path | None = None):
        super().__init__()
        from torchvision.models import resnet18

        self.embedding_dim = embedding_dim
        self.backbone = resnet18(weights=None)
        if weights is not None:
            self._load_weights(weights)
        self.backbone.fc = nn.Linear(512, embedding_dim)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.freeze_bn = True

    def _load_weights(self, weights: str | Path) -> None:
        if str(weights).lower() == "imagenet":
            from torchvision.models import ResNet18_Weights

            try:
                state = ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
            except Exception as exc:
                raise BenchmarkError(
                    "ImageNet weights for resnet18 are not in the torchvision cache and cannot be "
                    f"downloaded ({type(exc).__name__}); pass a local .pth file instead"
                ) from exc
        else:
            path = Path(weights)
            if not path.is_file():
                raise BenchmarkError(f"weights file {str(path)!r} does not exist (expected a .pth state dict)")
            state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = self.backbone.load_state_dict(state, strict=False)
        bad = [k for k in missing if not k.startswith("fc.")]
        if bad:
            raise BenchmarkError(f"weights file {str(weights)!r} is not a ResNet-18 state dict "
                                 f"(missing {len(bad)} keys, e.g. {bad[0]!r})")

    def embed_trunk(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = (x - self.mean) / self.std
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        x = b.layer4(b.layer3(b.layer2(b.layer1(x))))
        return torch.flatten(b.avgpool(x), 1)

    def embed_head(self, h: torch.Tensor) -> torch.Tensor:
        return self.backbone.fc(h)

    def set_train_mode(self, adversarial: bool = False) -> None:
        self.train()
        if self.freeze_bn and not adversarial:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()


def set_precision(model: torch.nn.Module, precision: str | None) -> torch.nn.Module:
    """Run ``model`` at ``precision`` (:mod:`benchmark.precision`); returns it. A non-default
    precision needs the trunk/head split: an :class:`EmbeddingModel` that does not override
    ``embed_raw``."""
    precision = check_precision(precision)
    split = isinstance(model, EmbeddingModel) and type(model).embed_raw is EmbeddingModel.embed_raw
    if precision != DEFAULT_PRECISION and not split:
        raise BenchmarkError(f"model {type(model).__name__} does not compute its embedding as "
                             "embed_head(embed_trunk(x)) (it overrides embed_raw or is not an EmbeddingModel); "
                             f"only precision {DEFAULT_PRECISION} is accepted for it")
    model.precision = precision
    return model


def build_model(name: str, **kwargs) -> EmbeddingModel:
    return MODELS.create(name, **kwargs)


def make_model(name: str, *, in_channels: int = 1, weights: str | Path | None = None) -> EmbeddingModel:
    """The model a cell trains: ``name`` (canonical) built for a dataset with ``in_channels``
    channels (c2f2), with ImageNet ``weights`` (resnet18: a local ``.pth`` or ``"imagenet"``)."""
    kwargs: dict[str, object] = {}
    if name == "resnet18" and weights:
        kwargs["weights"] = weights
    if name == "c2f2" and in_channels != 1:
        kwargs["in_channels"] = in_channels
    return build_model(name, **kwargs)


# Adam settings per model (SPEC §3).
OPTIMIZER_SETTINGS = {"c2f2": {"lr": 1e-3, "weight_decay": 1e-7},
                      "resnet18": {"lr": 1e-5, "weight_decay": 4e-4}}


def optimizer_settings(model: torch.nn.Module, name: str) -> dict[str, float]:
    """Adam's settings for ``model`` (registered as ``name``): its own ``optimizer_settings``
    attribute where it declares one (a plugin model), else the built-in model it is or derives
    from (:data:`OPTIMIZER_SETTINGS`); a model that is neither is one clear error, not silently
    c2f2's settings."""
    declared = getattr(model, "optimizer_settings", None)
    if declared is not None:
        return dict(declared)
    if name in OPTIMIZER_SETTINGS:
        return OPTIMIZER_SETTINGS[name]
    for base, key in ((C2F2, "c2f2"), (ResNet18Embedding, "resnet18")):
        if isinstance(model, base):
            return OPTIMIZER_SETTINGS[key]
    raise BenchmarkError(f"model {name!r} has no optimiser settings: give its class an `optimizer_settings` "
                         "attribute, e.g. {'lr': 1e-3, 'weight_decay': 1e-7} (Adam's), or derive it from a "
                         f"built-in model ({', '.join(OPTIMIZER_SETTINGS)})")
