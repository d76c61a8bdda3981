"""The options of the paradigms that are one module each: ``coreset``, ``dfkd``, ``dpsgd``, ``external``.

The options of a paradigm are validated from ``paradigm_options.<name>``
when a config is loaded, and listed by ``raypriv paradigms``: both happen
without torch, so they live here, apart from the modules that implement the
paradigms (:mod:`raypriv.synth.coreset`, :mod:`raypriv.synth.dfkd`,
:mod:`raypriv.synth.dpsgd`, :mod:`raypriv.synth.external`), where each
option's use is documented.  The families of several modules keep theirs in
their own ``options`` module (``raypriv.synth.distill.options``, ...).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from dataclasses import dataclass
from typing import Any, Literal

from raypriv.errors import RayprivError

# Field metadata key for an option added to a paradigm after runs were stored: at the value that reproduces what
# those runs did, it is left out of the recipe hash (raypriv.synth.registry.resolved_options), so they still resume.
UNHASHED_AT = "unhashed_at"

_CORESET = "paradigm_options.coreset"
_DPSGD = "paradigm_options.dpsgd"


# ------------------------------------------------------------------- coreset


@dataclass
class CoresetOptions:
    method: Literal["random", "herding", "kcenter", "forgetting"] = "herding"
    ipc: int = 10  # samples per class
    feature_epochs: int | None = None  # epochs of the scoring model; None: train.epochs
    # Epochs of the audited model on the coreset; None: train.epochs.  A coreset of 10 per
    # class is one batch, so the recipe's 15 epochs would be 15 steps (digits: ~0.3 test
    # accuracy); coreset benchmarks train ~200 epochs on the small set (DeepCore, Guo et al. 2022).
    train_epochs: int | None = 200

    def __post_init__(self) -> None:
        if self.ipc < 1:
            raise RayprivError(f"{_CORESET}.ipc={self.ipc!r}: the number of samples per class must be at least 1")
        for field in ("feature_epochs", "train_epochs"):
            value = getattr(self, field)
            if value is not None and value < 1:
                raise RayprivError(f"{_CORESET}.{field}={value!r}: must be at least 1, or null for train.epochs")


# ---------------------------------------------------------------------- dfkd


@dataclass
class DFKDOptions:
    """Options of ``dfkd`` (``paradigm_options.dfkd``).

    Shared: ``method``, ``teacher_epochs``, ``n_synthetic``, ``temperature``,
    ``batch_size``.  DeepInversion only: ``iterations``, ``lr``, ``bn_weight``,
    ``tv_weight``, ``l2_weight``, ``jitter``, ``flip``.  DFAD only:
    ``steps``, ``student_steps``, ``student_lr``, ``generator_lr``,
    ``latent_dim``, ``generator_width``.
    """

    method: Literal["deepinversion", "dfad"] = "deepinversion"
    teacher_epochs: int | None = None  # None: the config's train.epochs
    # The teacher's architecture (a name in raypriv.models.ARCHITECTURES, e.g. wrn16_4 as the reference
    # study on CIFAR-10) and width; None: the audited model's (model.arch / model.width).  Its norm is model.norm.
    teacher_arch: str | None = None
    teacher_width: int | None = None
    n_synthetic: int = 2048  # inputs made (DeepInversion: the student's training set; DFAD: the stored record)
    temperature: float = 1.0  # soft labels are softmax(teacher logits / temperature)
    batch_size: int = 128  # DeepInversion: inputs optimised together; DFAD: generator batch
    # DeepInversion
    iterations: int = 50  # Adam steps per batch of inputs (the paper: 2,000 on CIFAR; 8x8 digits need far fewer)
    lr: float = 0.2
    bn_weight: float = 1.0  # weight of R_feature (BatchNorm statistics)
    tv_weight: float = 1e-3  # weight of the total-variation prior
    l2_weight: float = 0.0  # weight of the L2 prior on the (normalised) inputs
    # Random roll of up to this many pixels per step; the paper uses 2 on CIFAR, but on 8x8 digits it cost accuracy.
    jitter: int = 0
    flip: bool = False  # random horizontal flip per step (off: digits are not mirror-symmetric)
    # DFAD
    steps: int = 200  # generator steps; the student takes student_steps per generator step
    student_steps: int = 5
    student_lr: float = 0.1  # SGD, momentum 0.9, weight decay 5e-4, cosine decay
    generator_lr: float = 1e-3  # Adam, cosine decay
    latent_dim: int = 64  # the paper: 256 for CIFAR; 8x8 digits need less
    # Channels of the generator's last block (the paper: 64, where the generator would cost more than cnn_small).
    generator_width: int = 16

    def __post_init__(self) -> None:
        def check(ok: bool, field: str, allowed: str) -> None:
            if not ok:
                value = getattr(self, field)
                raise RayprivError(f"config: paradigm_options.dfkd.{field}={value!r} is not allowed; it must be {allowed}")

        epochs = self.teacher_epochs
        if self.teacher_arch is not None:
            from raypriv.models import ARCHITECTURES

            check(self.teacher_arch in ARCHITECTURES, "teacher_arch", f"one of {sorted(ARCHITECTURES)}, or null for model.arch")
        check(self.teacher_width is None or self.teacher_width >= 1, "teacher_width", "at least 1, or null for the default")
        check(epochs is None or epochs >= 1, "teacher_epochs", "at least 1, or null for train.epochs")
        check(self.n_synthetic >= 2, "n_synthetic", "at least 2 (BatchNorm needs batches of two or more)")
        check(self.temperature > 0, "temperature", "positive")
        check(self.batch_size >= 2, "batch_size", "at least 2 (batch statistics need two or more inputs)")
        check(self.iterations >= 1, "iterations", "at least 1")
        check(self.lr > 0, "lr", "positive")
        for field in ("bn_weight", "tv_weight", "l2_weight"):
            check(getattr(self, field) >= 0, field, "non-negative")
        check(self.jitter >= 0, "jitter", "a non-negative number of pixels")
        check(self.steps >= 1, "steps", "at least 1")
        check(self.student_steps >= 1, "student_steps", "at least 1")
        check(self.student_lr > 0, "student_lr", "positive")
        check(self.generator_lr > 0, "generator_lr", "positive")
        check(self.latent_dim >= 1, "latent_dim", "at least 1")
        check(self.generator_width >= 1, "generator_width", "at least 1")


# --------------------------------------------------------------------- dpsgd


@dataclass
class DPSGDOptions:
    """DP-SGD settings; a ``None`` takes the experiment's ``train`` value.

    The defaults suit the digits default: DP-SGD needs more steps and a larger
    learning rate than the non-private recipe, because clipped gradients are
    small and the noise averages out only over many steps.
    """

    epsilon: float | None = 8.0  # target epsilon after all epochs; null: clipping only, no noise (no DP guarantee)
    # auto: 1e-5, or 1/(10 n) when the private set has n > 1e5 samples (always below 1/n; default_delta below);
    # a number: that delta; null: 1/n, the default before 2026-12-05 (kept for those configs; not recommended)
    delta: float | Literal["auto"] | None = "auto"
    max_grad_norm: float = 1.0  # per-sample clipping norm C
    accountant: Literal["rdp", "prv"] = "rdp"
    epochs: int | None = 30
    batch_size: int | None = 256  # expected (Poisson) batch size
    lr: float | None = 0.5
    optimizer: Literal["sgd", "adam"] | None = None  # momentum, weight decay, schedule: the train config's

    def __post_init__(self) -> None:
        if self.epsilon is not None and not self.epsilon > 0:
            raise RayprivError(f"{_DPSGD}.epsilon={self.epsilon!r}: the target epsilon must be positive (e.g. 1 or 8)")
        if isinstance(self.delta, float) and not 0.0 < self.delta < 1.0:
            raise RayprivError(
                f"{_DPSGD}.delta={self.delta!r}: delta must lie strictly between 0 and 1 "
                "(well below 1/n, e.g. 1e-5), or be auto (1e-5; 1/(10 n) from 1e5 samples on)"
            )
        if not self.max_grad_norm > 0:
            raise RayprivError(
                f"{_DPSGD}.max_grad_norm={self.max_grad_norm!r}: the clipping norm must be positive (e.g. 1.0)"
            )
        if self.epochs is not None and self.epochs < 1:
            raise RayprivError(f"{_DPSGD}.epochs={self.epochs!r}: must be at least 1, or null for train.epochs")
        if self.batch_size is not None and self.batch_size < 1:
            raise RayprivError(
                f"{_DPSGD}.batch_size={self.batch_size!r}: must be at least 1, or null for train.batch_size"
            )
        if self.lr is not None and not self.lr > 0:
            raise RayprivError(f"{_DPSGD}.lr={self.lr!r}: the learning rate must be positive, or null for train.lr")


# ------------------------------------------------------------------ external


PLACEHOLDERS = ("private", "output", "seed", "model_id", "workdir")  # replaced in external's command
_EMBEDDED = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


@dataclass
class ExternalOptions:
    command: list[str] = dataclasses.field(default_factory=list, metadata={"required": True})
    timeout_s: float = 600.0
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    output: Literal["npz"] = "npz"

    def __post_init__(self) -> None:
        where = "config: paradigm_options.external"
        if not self.command:
            raise RayprivError(
                f"{where}.command is not set; give the program as an argv list, e.g. "
                "[python3, synth.py, '{private}', '{output}']"
            )
        for argument in self.command:
            if argument not in {f"{{{p}}}" for p in PLACEHOLDERS} and _EMBEDDED.search(argument):
                raise RayprivError(
                    f"{where}.command argument {argument!r} embeds a placeholder; placeholders are replaced only "
                    "as whole arguments (write ['--out', '{output}'], not '--out={output}')"
                )
        if shutil.which(self.command[0]) is None:
            raise RayprivError(
                f"{where}.command: program {self.command[0]!r} is not found on PATH (nor as an executable path); "
                "install it on every node that trains shadow models, or give its full path"
            )
        if not self.timeout_s > 0:
            raise RayprivError(f"{where}.timeout_s={self.timeout_s} must be positive")

    @classmethod
    def check_raw(cls, raw: dict[str, Any], where: str) -> None:
        """Refuse a command written as one string, before it is coerced to a list (see :func:`raypriv.synth.build_options`)."""
        if isinstance(raw.get("command"), str):
            raise RayprivError(
                f"config: {where}.command is the string {raw['command']!r}; give an argv list instead, e.g. "
                f"{raw['command'].split()!r}: raypriv never runs a shell"
            )


# ------------------------------------------------------------------ DP-SGD's delta (torch-free: raypriv plan reads it)

DEFAULT_DELTA = 1e-5  # delta: auto below LARGE_PRIVATE_SET samples
LARGE_PRIVATE_SET = 100_000  # from here on, delta: auto is 1 / (10 n)


def default_delta(n: int) -> float:
    """The δ of ``delta: auto`` for a private set of ``n`` samples: 1e-5 below 10⁵ samples, else 1/(10 n).

    Always below 1/n (see the module docstring).
    """
    if n < 1:
        raise ValueError(f"the private set must hold at least one sample, got n={n}")
    return DEFAULT_DELTA if n < LARGE_PRIVATE_SET else 1.0 / (10 * n)


def resolve_delta(option: float | str | None, n: int) -> float:
    """The δ DP-SGD accounts at for ``paradigm_options.dpsgd.delta`` = ``option`` and ``n`` private samples."""
    if option == "auto":
        return default_delta(n)
    if option is None:  # the default before 2026-12-05
        return 1.0 / n
    return float(option)
