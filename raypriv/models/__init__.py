"""Model architectures, built by name from :class:`raypriv.config.ModelConfig`.

* ``mlp``        flatten + two hidden layers (digits, MNIST, tabular)
* ``logreg``     flatten + one linear layer: multinomial logistic regression (tabular)
* ``cnn_small``  three conv layers + global pooling (digits, MNIST)
* ``resnet18``   the CIFAR ResNet-18 (3x3 stem, no max-pool; He et al. 2016)
* ``wrn16_4``    Wide-ResNet 16-4, pre-activation (Zagoruyko & Komodakis 2016)

``norm`` picks BatchNorm, GroupNorm (the DP-SGD-compatible choice) or none.
``width`` scales each arch; ``None`` takes the arch's default width.  ``logreg``
has no hidden layer, so neither ``width`` nor ``norm`` applies to it.

A new architecture is one entry in :data:`ARCHITECTURES` (name, builder,
default width, whether it needs images, whether the ensemble engine trains it
by default on a GPU) plus its ``nn.Module`` class in
:mod:`raypriv.models.networks`.  Importing this package imports no torch (the
config checks read the table): a builder imports the networks when called.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Callable

from raypriv.config import ModelConfig
from raypriv.errors import RayprivError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Architecture:
    """One entry of the architecture table."""

    build: Callable[[tuple[int, ...], int, int, str], nn.Module]  # (input shape, classes, width, norm) -> network
    default_width: int
    needs_images: bool
    # Small enough that one model leaves a GPU mostly idle: train.engine auto uses the ensemble engine.
    ensemble_by_default: bool


def _networks() -> ModuleType:
    """:mod:`raypriv.models.networks`, imported when a network is first built (it imports torch)."""
    return importlib.import_module("raypriv.models.networks")


ARCHITECTURES: dict[str, Architecture] = {
    "mlp": Architecture(
        lambda shape, k, width, norm: _networks().MLP(math.prod(shape), k, width, norm), 256, False, True
    ),
    "cnn_small": Architecture(
        lambda shape, k, width, norm: _networks().SmallCNN(shape[0], k, width, norm), 16, True, True
    ),
    "resnet18": Architecture(
        lambda shape, k, width, norm: _networks().ResNet18(shape[0], k, width, norm), 64, True, False
    ),
    "wrn16_4": Architecture(
        lambda shape, k, width, norm: _networks().WideResNet(shape[0], k, depth=16, widen=4, base=width, norm=norm),
        16, True, False,
    ),
    "logreg": Architecture(
        lambda shape, k, width, norm: _networks().LogisticRegression(math.prod(shape), k), 0, False, True
    ),
}


def build_model(config: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build ``config.arch`` for inputs of ``input_shape`` (without the batch dimension)."""
    if config.arch not in ARCHITECTURES:
        raise RayprivError(f"model.arch={config.arch!r} is not known; choose one of {list(ARCHITECTURES)}")
    arch = ARCHITECTURES[config.arch]
    if arch.needs_images and len(input_shape) != 3:
        raise RayprivError(
            f"model.arch={config.arch!r} needs image inputs (C, H, W) but the dataset has shape {input_shape}; "
            "use model.arch: mlp or logreg for tabular data"
        )
    return arch.build(input_shape, num_classes, config.width or arch.default_width, config.norm)
