"""The paradigm interface: :class:`Paradigm`, :class:`ShadowContext`, :class:`LabeledSet`, the registry.

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
their own options (see :func:`paradigm_class`).  A paradigm may also live
outside the package: an entry point in group ``raypriv.paradigms``, or a
``module:Class`` reference in the config's ``paradigms`` (see "plugins"
below); its class and distribution version enter its recipe hash.

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
import importlib
import importlib.metadata
import inspect
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from raypriv.config import ExperimentConfig, ModelConfig, TrainConfig, build_dataclass
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
    """Base class of every paradigm, built-in or plugin: subclass it and implement :meth:`synthesize`.

    Set ``name`` (the registry key; an entry point's name takes its place),
    ``Options`` (a dataclass of the paradigm's options, validated from
    ``paradigm_options.<name>``), and optionally ``stores_training_set``,
    :meth:`training_recipe` and :meth:`train`.  The class docstring's first
    line is its description in ``raypriv paradigms``.
    """

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

    @classmethod
    def check_raw_options(cls, raw: dict[str, Any], where: str) -> None:
        """Check the options mapping as written, before it is coerced to ``Options`` (e.g. a string where a list belongs)."""

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


def qualified_name(cls: type) -> str:
    """``module.Class``: what a plugin's recipe hash records."""
    return f"{cls.__module__}.{cls.__qualname__}"


def register(cls: type[Paradigm]) -> type[Paradigm]:
    """Class decorator: make a paradigm available under ``cls.name``; a name another class holds is refused."""
    existing = PARADIGMS.get(cls.name)
    if existing is not None and qualified_name(existing) != qualified_name(cls):
        raise RayprivError(
            f"paradigm name {cls.name!r} of {qualified_name(cls)} is already taken by {qualified_name(existing)}; "
            "give the class another name"
        )
    PARADIGMS[cls.name] = cls
    return cls


# ------------------------------------------------------------------ plugins
#
# A paradigm from outside the package: an entry point in ENTRY_POINT_GROUP (loaded on first
# use, so that importing raypriv imports no plugin), or a "module:Class" reference written in
# the config.  Either records its class and distribution version, which enter its recipe hash.

ENTRY_POINT_GROUP = "raypriv.paradigms"
PLUGINS: dict[str, dict[str, Any]] = {}  # entry-point name or module:Class -> its identity (plugin_identity)
_REFERENCED: dict[str, type[Paradigm]] = {}  # module:Class -> its class
_entry_points_loaded = False


def _distribution_version(cls: type, entry_point: importlib.metadata.EntryPoint | None = None) -> tuple[str | None, str | None]:
    """(distribution, version) that installed ``cls``; a bare module's ``__version__`` if none did."""
    dist = entry_point.dist if entry_point is not None else None
    if dist is None:
        top = cls.__module__.split(".")[0]
        names = importlib.metadata.packages_distributions().get(top, [])
        if names:
            dist = importlib.metadata.distribution(names[0])
    if dist is not None:
        return dist.metadata["Name"], dist.version
    version = getattr(importlib.import_module(cls.__module__), "__version__", None)
    return None, None if version is None else str(version)


def _import_class(reference: str, where: str) -> type[Paradigm]:
    """The :class:`Paradigm` subclass ``module:Class`` names, or an error naming what went wrong."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise RayprivError(f"{where}: {reference!r} must be 'module:Class' (e.g. 'mypkg.mix:MixupSynth')")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any error of user code is reported the same way
        raise RayprivError(
            f"{where}: module {module_name!r} does not import ({type(exc).__name__}: {exc}); install the package "
            "that provides it or put it on PYTHONPATH (on Ray: ship it with `ray job submit --working-dir` or "
            "runtime_env py_modules)"
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise RayprivError(f"{where}: module {module_name!r} has no attribute {attribute!r}; check the class name")
        target = getattr(target, part)
    if not (isinstance(target, type) and issubclass(target, Paradigm)):
        raise RayprivError(
            f"{where}: {reference} is not a subclass of raypriv.Paradigm (it is {target!r}); "
            "subclass raypriv.Paradigm and implement synthesize()"
        )
    if inspect.isabstract(target):
        raise RayprivError(f"{where}: {reference} does not implement {sorted(target.__abstractmethods__)}")
    return target


def load_entry_points() -> None:
    """Register the paradigms of group ``raypriv.paradigms`` (once); an entry point may not shadow a built-in."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    importlib.import_module("raypriv.synth")  # the built-ins first, so that collisions are seen
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist
        source = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "an unknown distribution"
        existing = PARADIGMS.get(entry_point.name)
        if existing is not None and existing.__module__.startswith("raypriv."):
            raise RayprivError(
                f"entry point {entry_point.name!r} = {entry_point.value!r} in group {ENTRY_POINT_GROUP!r} (from "
                f"{source}) collides with the built-in paradigm {entry_point.name!r}; rename the entry point in that "
                "package's pyproject.toml, or uninstall it"
            )
        cls = _import_class(entry_point.value, f"entry point {entry_point.name!r} (from {source})")
        PARADIGMS[entry_point.name] = cls
        distribution, version = _distribution_version(cls, entry_point)
        PLUGINS[entry_point.name] = {"class": qualified_name(cls), "distribution": distribution, "version": version}
    _entry_points_loaded = True


def _resolve_base(base: str, name: str) -> type[Paradigm] | None:
    """The class behind a base name: registered, an entry point, or a ``module:Class`` reference."""
    if ":" in base:
        if base not in _REFERENCED:
            cls = _import_class(base, f"paradigm {name!r}")
            distribution, version = _distribution_version(cls)
            _REFERENCED[base] = cls
            PLUGINS[base] = {"class": qualified_name(cls), "distribution": distribution, "version": version}
        return _REFERENCED[base]
    load_entry_points()
    return PARADIGMS.get(base)


def plugin_identity(name: str) -> dict[str, Any] | None:
    """The class and distribution version of plugin paradigm (or variant) ``name``; None for a built-in."""
    base = name.partition(VARIANT_SEPARATOR)[0]
    cls = _resolve_base(base, name)
    if cls is None or base not in PLUGINS:
        return None
    return dict(PLUGINS[base])


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
    cls = _resolve_base(base, name)
    if cls is None:
        raise RayprivError(
            f"paradigm {name!r} is not known; choose from {sorted(PARADIGMS)} (or a variant "
            f"'<paradigm>{VARIANT_SEPARATOR}<tag>', e.g. 'dpgen-marginals{VARIANT_SEPARATOR}eps1')"
        )
    if separator and not _VARIANT_TAG.fullmatch(tag):
        raise RayprivError(
            f"paradigm {name!r}: the variant tag {tag!r} must be letters, digits, '_', '.' or '-' "
            f"(e.g. '{base}{VARIANT_SEPARATOR}eps1')"
        )
    return cls


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
    cls.check_raw_options(raw or {}, f"paradigm_options.{name}")
    try:
        return build_dataclass(cls.Options, raw or {}, f"paradigm_options.{name}")
    except RayprivError as exc:
        # An Options class names its fields after its paradigm; a variant's error names the variant.
        own_name = getattr(cls, "name", name.partition(VARIANT_SEPARATOR)[0])
        base_prefix, own_prefix = f"paradigm_options.{own_name}.", f"paradigm_options.{name}."
        if name == own_name or base_prefix not in str(exc):
            raise
        raise RayprivError(str(exc).replace(base_prefix, own_prefix)) from None


def make_paradigm(config: ExperimentConfig, name: str) -> Paradigm:
    """The paradigm (or variant) ``name`` with the options the config gives it."""
    return paradigm_class(name)(build_options(name, config.paradigm_options.get(name)))


def resolved_options(config: ExperimentConfig, name: str) -> dict[str, Any]:
    """Paradigm ``name``'s options with defaults filled in (what its recipe hash covers)."""
    return dataclasses.asdict(build_options(name, config.paradigm_options.get(name)))
