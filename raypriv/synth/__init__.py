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
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from raypriv.config import ExperimentConfig, _build
from raypriv.errors import RayprivError
from raypriv.models import build_model
from raypriv.seeding import torch_seed
from raypriv.training import Normalizer, train_classifier


@dataclass
class LabeledSet:
    """Inputs and labels on one device (``uint8`` images or ``float32`` features)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class ShadowContext:
    """What a paradigm may know about the shadow pipeline it runs in."""

    config: ExperimentConfig
    model_id: int
    num_classes: int
    input_shape: tuple[int, ...]
    normalizer: Normalizer
    device: torch.device

    @property
    def seed(self) -> int:
        return self.config.seed


@dataclass
class NoOptions:
    """A paradigm without options."""


class Paradigm(ABC):
    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()

    @abstractmethod
    def synthesize(self, private: LabeledSet, context: ShadowContext) -> LabeledSet:
        """Make the training set of the audited model from ``private``."""

    def train(self, training_set: LabeledSet, context: ShadowContext) -> nn.Module:
        """Train the audited model on ``training_set`` with the config's recipe."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch_seed(context.seed, "init", context.model_id))
            model = build_model(context.config.model, context.input_shape, context.num_classes)
        model = model.to(context.device)
        return train_classifier(
            model,
            training_set.x,
            training_set.y,
            context.config.train,
            context.normalizer,
            context.seed,
            context.model_id,
        )


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


def options_dict(paradigm: Paradigm) -> dict[str, Any]:
    return dataclasses.asdict(paradigm.options)


# Each paradigm module registers itself on import.
from raypriv.synth import real  # noqa: E402,F401
