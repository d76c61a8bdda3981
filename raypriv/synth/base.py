"""The paradigm interface: :class:`Paradigm`, :class:`ShadowContext`, :class:`LabeledSet`.

A paradigm takes one shadow model's *private* training set (the always-IN
samples plus its IN audit samples), makes a training set from it with
:meth:`Paradigm.synthesize`, and trains the audited model on that set with
:meth:`Paradigm.train`.  The attacks then query the trained model on the audit
samples.  ``real`` (train on the private set itself) is the baseline.

Each built-in paradigm is a subclass of :class:`Paradigm` in this package
and one entry of the table in :mod:`raypriv.synth.registry`, with its options
as a dataclass (``Paradigm.Options``) that the config loader validates.  A
synthesizer sees only the private set it is given: never another model's.
To audit one paradigm at several settings in one run, list variants
``base@tag`` with their own options.  A paradigm may also live outside the
package: an entry point in group ``raypriv.paradigms``, a ``module:Class``
reference in the config's ``paradigms``, or a class passed to
:func:`~raypriv.synth.registry.register`; its class and distribution version
enter its recipe hash.

Importing this module imports no torch: the registry imports it, and the
config checks and ``raypriv paradigms`` use the registry.  The methods that
need torch import it when called.

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
  go into ``context.info``; they are stored in the models table.  Values
  are plain JSON (numbers, strings, booleans); an ``epsilon`` comes with its
  ``delta`` (0.0 for pure DP), both finite.

What a plugin returns is checked exactly as an ``external`` command's output
is (:func:`raypriv.synth.validation.check_training_set`: shape, dtype, range,
classes, NaN, lengths, emptiness), and its ``info`` by
:func:`~raypriv.synth.validation.check_info`.  A malformed set or info, or an
exception raised by the plugin's ``__init__``, ``synthesize`` or ``train``,
fails that shadow model only (its last line is reported, the other models
are stored, a rerun retries it): see :mod:`raypriv.pipeline`.

**Packs** (``execution.pack: K``).  A worker may synthesize K pipelines of
one paradigm at once.  A paradigm that can do that as one batched
computation says so with :meth:`Paradigm.packs_synthesis` and implements
:meth:`Paradigm.synthesize_pack`; every other paradigm runs its pipelines
one by one inside the pack (correct, no speed-up).  Packs apply to
paradigms whose synthesis is separable (:attr:`Paradigm.separable_synthesis`),
and to one that keeps state for ``train`` (DFAD's student) if it declares a
batched synthesis: the worker synthesizes the pack on one instance, then
trains each model on it, so such a paradigm keeps its state per model id.
Any other paradigm with state synthesizes and trains each model in turn.
The contract a batched implementation keeps:

* pipeline p draws only from ``contexts[p]``'s generators (never torch's
  global one), in the order the single run draws from them, so its set
  equals the same pipeline run alone up to float32 summation order
  (1e-5, or 1e-4 where batched kernels sum in another order).  Packing
  therefore never enters the recipe hash, and a run may mix packed and
  single models;
* an error of one pipeline (a degenerate private set) is that pipeline's
  entry of the returned list, raised as the single run would raise it; the
  others' sets are returned;
* :meth:`Paradigm.pack_memory_bytes` estimates one pipeline's working
  memory, from which the worker sizes ``execution.pack: auto``
  (:func:`raypriv.pipeline.resolve_pack`).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from raypriv.config import ExperimentConfig, ModelConfig, TrainConfig
from raypriv.seeding import numpy_rng, torch_generator, torch_seed

if TYPE_CHECKING:
    import torch
    from torch import nn

    from raypriv.training import Normalizer


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
        import torch

        from raypriv.models import build_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch_seed(self.seed, stream, self.model_id))
            network = build_model(model or self.config.model, self.input_shape, self.num_classes)
        return network.to(self.device)

    def train_classifier(self, model: nn.Module, training_set: LabeledSet, train: TrainConfig | None = None) -> nn.Module:
        """Train ``model`` on ``training_set`` with ``train`` (default: the config's recipe)."""
        from raypriv.training import train_classifier

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
    line (else its module's) is its description in ``raypriv paradigms``.
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
    def check_data(cls, name: str, input_shape: tuple[int, ...], num_classes: int) -> None:
        """Refuse, with a RayprivError, a dataset this paradigm cannot synthesize from (e.g. images for a tabular
        generator).  The driver calls it before anything is written, so a refused run leaves its directory as it
        was.  The default accepts every dataset."""
        return None  # a hook with a default, not an abstract method

    @classmethod
    def check_raw_options(cls, raw: dict[str, Any], where: str) -> None:
        """Check the options mapping as written, before it is coerced to ``Options`` (e.g. a string where a list belongs).

        The default calls ``Options.check_raw(raw, where)`` where the options
        class has one; that is where a built-in paradigm puts such a check,
        because its options are checked without importing its class.
        """
        check = getattr(cls.Options, "check_raw", None)
        if check is not None:
            check(raw, where)

    @abstractmethod
    def synthesize(self, private: LabeledSet, context: ShadowContext) -> LabeledSet:
        """Make the training set of the audited model from ``private``."""

    def packs_synthesis(self) -> bool:
        """Whether :meth:`synthesize_pack` runs K pipelines as one batched computation (with these options).

        The default is False: a pack then synthesizes its pipelines one by
        one with :meth:`synthesize`.
        """
        return False

    def packs_bit_exact(self) -> bool:
        """Whether a packed pipeline's set equals the same pipeline run alone bit for bit (on a CPU).

        Where it is only equal in law (the batched kernels sum in another
        order and the method amplifies rounding), ``execution.pack: auto``
        packs only on a GPU, where the single run is not bit-reproducible
        either; on a CPU such a paradigm packs only at an explicit
        ``execution.pack: K``, so that by default every model's set is a
        function of ``(seed, model id)`` alone.  The default is True.
        """
        return True

    def synthesize_pack(self, privates: list[LabeledSet], contexts: list[ShadowContext]) -> list[LabeledSet | Exception]:
        """The training sets of K pipelines (``privates[p]`` with ``contexts[p]``), or each one's exception.

        Called only where :meth:`packs_synthesis` is True; see the module
        docstring for the contract.  This default is the reference: the
        pipelines one by one, each exception kept as that pipeline's entry.
        """
        results: list[LabeledSet | Exception] = []
        for private, context in zip(privates, contexts, strict=True):
            try:
                results.append(self.synthesize(private, context))
            except Exception as exc:  # noqa: BLE001 - the pipeline's own failure, raised for it by the caller
                results.append(exc)
        return results

    def pack_memory_bytes(self, input_shape: tuple[int, ...], num_classes: int, private_size: int) -> int:
        """An upper estimate of one packed pipeline's working memory in bytes (sizes ``execution.pack: auto``).

        The default: 64 float32 copies of the private set, a generous bound
        for methods that hold a few activations of it at a time.
        """
        return 64 * 4 * private_size * int(np.prod(input_shape))

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
