"""Paradigms: how a shadow pipeline turns a private set into a trained model.

A paradigm takes one shadow model's *private* training set (the always-IN
samples plus its IN audit samples), makes a training set from it with
:meth:`Paradigm.synthesize`, and trains the audited model on that set with
:meth:`Paradigm.train`.  The attacks then query the trained model on the audit
samples.  ``real`` (train on the private set itself) is the baseline.

Each paradigm is one module in this package, a subclass of :class:`Paradigm`
registered with :func:`register`, with its options as a dataclass
(``Paradigm.Options``) that the config loader validates.  A synthesizer sees
only the private set it is given: never another model's.

Conventions a paradigm follows:

* Images are ``uint8`` (0..255) or ``float32`` in pixel scale 0..1, shape
  ``(N, C, H, W)``; tabular inputs are raw ``float32`` features.
  ``context.normalizer`` maps either to the network's normalised input, and
  ``context.normalizer.denormalize`` maps back (for sets optimised in
  normalised space).
* Labels are ``int64`` class ids ``(N,)``, or ``float32`` class
  probabilities ``(N, num_classes)`` (soft labels; the standard recipe then
  trains with soft cross-entropy).
* All randomness comes from ``context.rng(stream)`` / ``context.generator(stream)``
  and ``context.build_model()`` (seeded from ``(seed, model id)``), so each
  pipeline is reproducible.
* Facts worth keeping per model (an accounted epsilon, a noise multiplier)
  go into ``context.info``; they are stored in the models table.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

import numpy as np

from raypriv.config import ExperimentConfig, ModelConfig, TrainConfig, _build
from raypriv.errors import RayprivError
from raypriv.models import build_model
from raypriv.seeding import numpy_rng, torch_generator, torch_seed
from raypriv.training import Normalizer, train_classifier


@dataclass
class LabeledSet:
    """Inputs and labels on one device (see the conventions above)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class ShadowContext:
    """What a paradigm may know and use in the shadow pipeline it runs in."""

    config: ExperimentConfig
    paradigm: str
    model_id: int
    num_classes: int
    input_shape: tuple[int, ...]
    normalizer: Normalizer
    device: torch.device
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.config.seed

    def rng(self, stream: str) -> np.random.Generator:
        """A NumPy generator private to this paradigm, model and stream."""
        return numpy_rng(self.seed, f"{self.paradigm}/{stream}", self.model_id)

    def generator(self, stream: str) -> torch.Generator:
        """A CPU torch generator private to this paradigm, model and stream."""
        return torch_generator(self.seed, f"{self.paradigm}/{stream}", self.model_id)

    def build_model(self, model: ModelConfig | None = None, stream: str = "init") -> nn.Module:
        """A freshly initialised network on the device, seeded from ``stream``.

        The default (``model=None``, ``stream="init"``) is the audited model's
        architecture and initialisation, shared by every paradigm.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch_seed(self.seed, stream, self.model_id))
            network = build_model(model or self.config.model, self.input_shape, self.num_classes)
        return network.to(self.device)

    def train_classifier(self, model: nn.Module, training_set: LabeledSet, train: TrainConfig | None = None) -> nn.Module:
        """Train ``model`` on ``training_set`` with ``train`` (default: the config's recipe)."""
        return train_classifier(
            model, training_set.x, training_set.y, train or self.config.train, self.normalizer, self.seed, self.model_id
        )


@dataclass
class NoOptions:
    """A paradigm without options."""


class Paradigm(ABC):
    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    # False for paradigms that train on the private set itself (nothing new to keep).
    stores_training_set: ClassVar[bool] = True

    @property
    def separable_synthesis(self) -> bool:
        """Whether ``train`` needs nothing from ``synthesize`` but the training set it returned.

        Then a synthesis worker may run ``synthesize`` and store the set, and
        a shadow-model actor elsewhere trains on it.  A paradigm that keeps
        state between the two (a student trained during synthesis) says False.
        """
        return self.stores_training_set

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()

    @abstractmethod
    def synthesize(self, private: LabeledSet, context: ShadowContext) -> LabeledSet:
        """Make the training set of the audited model from ``private``."""

    def train(self, training_set: LabeledSet, context: ShadowContext) -> nn.Module:
        """Train the audited model on ``training_set`` with the config's recipe."""
        return context.train_classifier(context.build_model(), training_set)


PARADIGMS: dict[str, type[Paradigm]] = {}


def register(cls: type[Paradigm]) -> type[Paradigm]:
    """Class decorator: make a paradigm available under ``cls.name``."""
    PARADIGMS[cls.name] = cls
    return cls


def build_options(name: str, raw: dict | None) -> Any:
    """Validate the options of paradigm ``name`` (from ``paradigm_options.<name>``)."""
    if name not in PARADIGMS:
        raise RayprivError(f"paradigm {name!r} is not known; choose from {sorted(PARADIGMS)}")
    return _build(PARADIGMS[name].Options, raw or {}, f"paradigm_options.{name}")


def make_paradigm(config: ExperimentConfig, name: str) -> Paradigm:
    """The paradigm ``name`` with the options the config gives it."""
    return PARADIGMS[name](build_options(name, config.paradigm_options.get(name)))


def resolved_options(config: ExperimentConfig, name: str) -> dict[str, Any]:
    """Paradigm ``name``'s options with defaults filled in (what its recipe hash covers)."""
    return dataclasses.asdict(build_options(name, config.paradigm_options.get(name)))


def _import_paradigm_modules() -> None:
    """Import every module of this package; each registers its paradigm."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_import_paradigm_modules()
