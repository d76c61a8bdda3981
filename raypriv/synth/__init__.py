"""Paradigms: how a shadow pipeline turns a private set into a trained model.

A paradigm takes one shadow model's *private* training set (the always-IN
samples plus its IN audit samples), makes a training set from it with
:meth:`Paradigm.synthesize`, and trains the audited model on that set with
:meth:`Paradigm.train`.  The attacks then query the trained model on the audit
samples.  ``real`` (train on the private set itself) is the baseline.

Each paradigm is one module in this package, a subclass of :class:`Paradigm`
registered with :func:`register`, with its options as a dataclass
(``Paradigm.Options``) that the config loader validates.  A synthesizer sees
only the private set it is given: never another model's.  To audit one
paradigm at several settings in one run, list variants ``base@tag`` with
their own options (see :func:`paradigm_class`).

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
import re
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

    def training_recipe(self, config: ExperimentConfig) -> TrainConfig | None:
        """The recipe the audited model trains with, or None if the paradigm trains it its own way.

        With a recipe, training is ``train_classifier(context.build_model(),
        training_set, recipe)``, and the ensemble engine may train many such
        models at once instead.  A paradigm returning None overrides
        :meth:`train` (DP-SGD; a student kept from synthesis).
        """
        return config.train

    def train(self, training_set: LabeledSet, context: ShadowContext) -> nn.Module:
        """Train the audited model on ``training_set`` with :meth:`training_recipe`."""
        recipe = self.training_recipe(context.config)
        if recipe is None:
            raise NotImplementedError(f"{type(self).__name__} has no training recipe, so it must override train()")
        return context.train_classifier(context.build_model(), training_set, recipe)


PARADIGMS: dict[str, type[Paradigm]] = {}


def register(cls: type[Paradigm]) -> type[Paradigm]:
    """Class decorator: make a paradigm available under ``cls.name``."""
    PARADIGMS[cls.name] = cls
    return cls


# A variant of a paradigm: ``base@tag`` (e.g. ``dpgen-marginals@eps1``).
VARIANT_SEPARATOR = "@"
_VARIANT_TAG = re.compile(r"[A-Za-z0-9_.-]+")


def paradigm_class(name: str) -> type[Paradigm]:
    """The paradigm behind ``name``: a registered name, or a variant ``base@tag`` of one.

    A variant runs its base paradigm with its own options,
    ``paradigm_options["base@tag"]``, so one run can audit a paradigm at
    several settings over the same keep matrix (``dpgen-marginals@eps1`` and
    ``dpgen-marginals@eps8`` side by side in one table).  Everywhere else a
    variant is a paradigm of its own: its own recipe hash, results, random
    streams and row in the metrics.  The tag may hold letters, digits and
    ``_.-`` (it becomes part of file paths).
    """
    base, separator, tag = name.partition(VARIANT_SEPARATOR)
    if base not in PARADIGMS:
        raise RayprivError(
            f"paradigm {name!r} is not known; choose from {sorted(PARADIGMS)} (or a variant "
            f"'<paradigm>{VARIANT_SEPARATOR}<tag>', e.g. 'dpgen-marginals{VARIANT_SEPARATOR}eps1')"
        )
    if separator and not _VARIANT_TAG.fullmatch(tag):
        raise RayprivError(
            f"paradigm {name!r}: the variant tag {tag!r} must be letters, digits, '_', '.' or '-' "
            f"(e.g. '{base}{VARIANT_SEPARATOR}eps1')"
        )
    return PARADIGMS[base]


def is_known_paradigm(name: str) -> bool:
    """Whether ``name`` is a registered paradigm or a well-formed variant of one."""
    try:
        paradigm_class(name)
    except RayprivError:
        return False
    return True


def build_options(name: str, raw: dict | None) -> Any:
    """Validate the options of paradigm (or variant) ``name`` (from ``paradigm_options.<name>``)."""
    cls = paradigm_class(name)
    try:
        return _build(cls.Options, raw or {}, f"paradigm_options.{name}")
    except RayprivError as exc:
        # An Options class names its fields after its paradigm; a variant's error names the variant.
        base_prefix, own_prefix = f"paradigm_options.{cls.name}.", f"paradigm_options.{name}."
        if name == cls.name or base_prefix not in str(exc):
            raise
        raise RayprivError(str(exc).replace(base_prefix, own_prefix)) from None


def make_paradigm(config: ExperimentConfig, name: str) -> Paradigm:
    """The paradigm (or variant) ``name`` with the options the config gives it."""
    return paradigm_class(name)(build_options(name, config.paradigm_options.get(name)))


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
