"""``dfkd``: data-free knowledge distillation.

A *teacher* is trained on the private set.  The audited *student* never sees a
private sample: it learns from inputs that are made from the teacher alone.
Any membership signal the student carries has to pass through the teacher's
weights and the synthesis.  The teacher is the audited architecture unless
``teacher_arch`` (and ``teacher_width``) name another one, e.g. ``wrn16_4``
as the reference study's teacher on CIFAR-10; it trains with the config's
recipe and ``model.norm``.  Two published methods:

``deepinversion``
    Yin et al., "Dreaming to Distill: Data-free Knowledge Transfer via
    DeepInversion", CVPR 2020.  Batches of inputs are optimised from Gaussian
    noise (in the network's normalised input space) with Adam so that

    * the teacher classifies them as assigned target classes (cross-entropy);
    * at every BatchNorm layer, the batch mean and variance of the layer's
      input match the layer's ``running_mean`` / ``running_var`` (the
      *R_feature* loss: the sum over layers of
      ``||mu_l(x) - running_mean_l||_2 + ||var_l(x) - running_var_l||_2``),
      so the inputs look like the training data to every layer;
    * image priors hold: total variation (the L2 norms of the differences of
      neighbouring pixels in four directions) and the L2 norm of the inputs.

    Each step sees the batch randomly jittered (rolled by up to ``jitter``
    pixels) and optionally flipped, as in the paper, and the inputs are kept
    within the valid pixel range (as the official ImageNet code does).  Each
    batch of at least ``batch_size`` inputs holds every class equally.  The
    finished inputs are labelled with the teacher's softened outputs
    (``temperature``) and the student is trained on them by the config's
    standard recipe, i.e. knowledge distillation with soft cross-entropy.  The Adaptive DeepInversion
    competition term (student-teacher disagreement) is not used.

``dfad``
    Fang et al., "Data-Free Adversarial Distillation", 2019 (the same game as
    Micaelli & Storkey, "Zero-shot Knowledge Transfer via Adversarial Belief
    Matching", NeurIPS 2019).  A small DCGAN-style generator and the student
    play a minimax game on the L1 distance between teacher and student logits
    on generated inputs: the student takes ``student_steps`` SGD steps to
    minimise it, then the generator takes one Adam step to maximise it, so it
    keeps producing the inputs on which the student still disagrees with the
    teacher.  The generator ends, as in the paper, in tanh and an affine-free
    BatchNorm (see :class:`raypriv.synth.dfad.Generator`).  The student (the audited
    architecture and initialisation) is trained *during* synthesis;
    ``train`` returns it, so the two stages must run in one process, on one
    paradigm instance (``separable_synthesis`` is False for this method).
    The training set ``synthesize`` returns (stored with the run) is
    ``n_synthetic`` samples of the final generator with the teacher's soft
    labels: a record of what the student was trained on, not its training data.
    The generator and the game live in :mod:`raypriv.synth.dfad`.

DeepInversion's loss, priors and input optimisation live in
:mod:`raypriv.synth.deepinversion`; this module holds the teacher and the
paradigm.

Packs (``execution.pack``): a worker runs K pipelines at once, each teacher
still trained alone by the single run's code.  DeepInversion optimises the K
pipelines' inputs as one batch (:mod:`raypriv.synth.dfkd_packed`), each
pipeline bit for bit its single run.  DFAD plays the K generator/student
games as one vmapped computation (:mod:`raypriv.synth.dfad_packed`), each
pipeline equal to its single run in law (the first steps to float32
rounding; the game amplifies it), so ``execution.pack: auto`` packs DFAD on
a GPU only.  Its K students are kept on this instance by model id, and the
shadow-model worker, which synthesizes and trains a group on one instance,
hands each to ``train`` of its own model.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raypriv.config import ExperimentConfig, ModelConfig, TrainConfig
from raypriv.errors import RayprivError
from raypriv.synth.base import LabeledSet, Paradigm, ShadowContext
from raypriv.synth.deepinversion import synthesize_deepinversion
from raypriv.synth.dfad import Generator, adversarial_distillation, initial_generator
from raypriv.synth.options import DFKDOptions
from raypriv.training import accuracy

# ------------------------------------------------------------------ teacher


def teacher_model(options: DFKDOptions, model: ModelConfig) -> ModelConfig | None:
    """The teacher's architecture: None (the audited model's) unless ``teacher_arch``/``teacher_width`` say otherwise."""
    if options.teacher_arch is None and options.teacher_width is None:
        return None
    arch = options.teacher_arch or model.arch
    width = options.teacher_width if options.teacher_width is not None else (model.width if arch == model.arch else None)
    return dataclasses.replace(model, arch=arch, width=width)


def train_teacher(
    private: LabeledSet, context: ShadowContext, epochs: int | None, model: ModelConfig | None = None
) -> nn.Module:
    """A teacher trained on the private set (the only use of private data).

    Its architecture is the config's, or ``model`` where ``teacher_arch`` or
    ``teacher_width`` name another (see :func:`teacher_model`); it trains with
    the config's recipe (``epochs`` overriding its epoch count), then is
    frozen in eval mode: BatchNorm keeps its running statistics, which
    DeepInversion matches.
    """
    recipe = context.config.train if epochs is None else dataclasses.replace(context.config.train, epochs=epochs)
    teacher = context.train_classifier(context.build_model(model, stream="dfkd-teacher"), private, recipe)
    teacher.eval()  # BatchNorm uses its running statistics from now on
    teacher.requires_grad_(False)  # only inputs, students and generators are optimised
    return teacher


@torch.no_grad()
def soft_labels(teacher: nn.Module, x: torch.Tensor, context: ShadowContext, temperature: float) -> torch.Tensor:
    """softmax(teacher(x) / temperature) for pixel-scale inputs ``x``, float32 (N, num_classes)."""
    chunks = [teacher(context.normalizer(x[i : i + 1024])) for i in range(0, len(x), 1024)]
    return F.softmax(torch.cat(chunks).float() / temperature, dim=1)


# ---------------------------------------------------------------------- DFAD


def record_l1(losses: list[float], context: ShadowContext) -> None:
    """``context.info``'s ``l1_start`` and ``l1_end``: the student's mean L1 loss over the first and last tenth of its steps."""
    tail = max(1, len(losses) // 10)
    context.info["l1_start"] = sum(losses[:tail]) / tail
    context.info["l1_end"] = sum(losses[-tail:]) / tail


def recorded_set(generator: Generator, teacher: nn.Module, options: DFKDOptions, context: ShadowContext) -> LabeledSet:
    """What DFAD stores: ``n_synthetic`` samples of the final generator (eval mode; latents from ``dfad-record``)
    with the teacher's soft labels."""
    with torch.no_grad():
        z = torch.randn(options.n_synthetic, options.latent_dim, generator=context.generator("dfad-record"))
        x = torch.cat([generator(chunk.to(context.device)) for chunk in z.split(1024)]).float()
    return LabeledSet(x, soft_labels(teacher, x, context, options.temperature))


# ------------------------------------------------------------------ paradigm


class DataFreeKD(Paradigm):
    name = "dfkd"
    Options = DFKDOptions

    def __init__(self, options: DFKDOptions | None = None):
        super().__init__(options)
        # DFAD trains the student during synthesis; kept here for train(), by the model id it belongs to
        # (a pack synthesizes K models before the first of them trains).
        self._students: dict[int, nn.Module] = {}

    @property
    def separable_synthesis(self) -> bool:
        # DFAD's student is trained during synthesis and handed over by train(): both stages
        # must run on this instance.  DeepInversion's student needs only the stored set.
        return self.options.method == "deepinversion"

    def check_context(self, context: ShadowContext) -> None:
        """Refuse, with a RayprivError, data or a model the method cannot run on (before the teacher trains)."""
        options = self.options
        if options.method == "dfad" and len(context.input_shape) != 3:
            raise RayprivError(
                f"paradigm_options.dfkd.method='dfad' generates images, but the dataset has inputs of shape "
                f"{context.input_shape}; for tabular data use method: deepinversion "
                "(with model.arch: mlp, model.norm: batch)"
            )
        if options.method == "deepinversion" and context.config.model.norm != "batch":
            raise RayprivError(
                f"paradigm dfkd with method 'deepinversion' matches the teacher's BatchNorm statistics, but "
                f"model.norm={context.config.model.norm!r} gives a teacher without BatchNorm; set model.norm: batch "
                "(or use paradigm_options.dfkd.method: dfad)"
            )

    def synthesize(self, private: LabeledSet, context: ShadowContext) -> LabeledSet:
        options = self.options
        self.check_context(context)
        teacher = train_teacher(
            private, context, options.teacher_epochs, teacher_model(options, context.config.model)
        )
        context.info["teacher_train_acc"] = accuracy(teacher, private.x, private.y, context.normalizer)

        if options.method == "deepinversion":
            x, targets = synthesize_deepinversion(teacher, options, context)
            y = soft_labels(teacher, x, context, options.temperature)
            context.info["teacher_target_agreement"] = float((y.argmax(1) == targets).float().mean())
            return LabeledSet(x, y)
        return self.play_dfad(teacher, context)

    def play_dfad(self, teacher: nn.Module, context: ShadowContext) -> LabeledSet:
        """DFAD after the teacher: the game, its L1 record in ``context.info``, the student kept for ``train``,
        and the recorded set."""
        options = self.options
        student = context.build_model()  # the audited architecture and initialisation
        generator, losses = adversarial_distillation(teacher, student, options, context)
        record_l1(losses, context)
        self._students[context.model_id] = student
        return recorded_set(generator, teacher, options, context)

    def packs_synthesis(self) -> bool:
        """Both methods pack: K pipelines' teachers trained one by one, then one batched computation.

        DeepInversion optimises the K pipelines' inputs as one batch
        (:mod:`raypriv.synth.dfkd_packed`, bit for bit the single runs).
        DFAD plays the K generator/student games as one vmapped computation
        (:mod:`raypriv.synth.dfad_packed`, equal in law: see
        :meth:`packs_bit_exact`); its synthesis is not separable, so the
        pipeline packs it where synthesis and training run on this instance,
        the K students kept here by model id until ``train`` hands each over.
        """
        return True

    def packs_bit_exact(self) -> bool:
        """DeepInversion's pack gives the single run's bits; DFAD's is equal in law only (vmapped kernels round
        otherwise and the game amplifies it), so on a CPU ``execution.pack: auto`` leaves DFAD one by one."""
        return self.options.method == "deepinversion"

    def synthesize_pack(self, privates: list[LabeledSet], contexts: list[ShadowContext]) -> list[LabeledSet | Exception]:
        """K pipelines: each teacher trained alone (the single run's code), then the method batched.

        DeepInversion: pipeline p equals the same pipeline run alone bit for
        bit (see :mod:`raypriv.synth.dfkd_packed`).  DFAD: pipeline p's
        student (kept for ``train`` under its model id), record and
        ``info`` equal its single run's in law (see
        :mod:`raypriv.synth.dfad_packed`); where one pipeline alone is left
        after the teachers, its game is the single run's code.  A pipeline
        that raises (a private set the teacher cannot train on) gets its
        own exception; the others go on.
        """
        options = self.options
        results: list[LabeledSet | Exception | None] = [None] * len(contexts)
        teachers = {}
        for p, (private, context) in enumerate(zip(privates, contexts, strict=True)):
            try:
                self.check_context(context)
                teacher = train_teacher(private, context, options.teacher_epochs, teacher_model(options, context.config.model))
                context.info["teacher_train_acc"] = accuracy(teacher, private.x, private.y, context.normalizer)
                teachers[p] = teacher
            except Exception as exc:  # noqa: BLE001 - this pipeline's own failure, returned as its entry
                results[p] = exc
        if teachers and options.method == "deepinversion":
            self.deepinversion_pack(teachers, contexts, results)
        elif teachers:
            self.dfad_pack(teachers, contexts, results)
        return results  # type: ignore[return-value]

    def deepinversion_pack(
        self, teachers: dict[int, nn.Module], contexts: list[ShadowContext], results: list[LabeledSet | Exception | None]
    ) -> None:
        """Fill ``results[p]`` for each pipeline p with a trained teacher: its DeepInversion set, or its exception."""
        from raypriv.synth.dfkd_packed import synthesize_deepinversion_pack

        options = self.options
        alive = list(teachers)
        try:
            made = synthesize_deepinversion_pack([teachers[p] for p in alive], options, [contexts[p] for p in alive])
        except Exception as exc:  # noqa: BLE001 - what every pipeline's single run would raise (the same options)
            made = [exc] * len(alive)
        for p, outcome in zip(alive, made, strict=True):
            if isinstance(outcome, Exception):
                results[p] = outcome
                continue
            x, targets = outcome
            y = soft_labels(teachers[p], x, contexts[p], options.temperature)
            contexts[p].info["teacher_target_agreement"] = float((y.argmax(1) == targets).float().mean())
            results[p] = LabeledSet(x, y)

    def dfad_pack(
        self, teachers: dict[int, nn.Module], contexts: list[ShadowContext], results: list[LabeledSet | Exception | None]
    ) -> None:
        """Fill ``results[p]`` for each pipeline p with a trained teacher: its DFAD record (its student kept for
        ``train``), or its exception."""
        from raypriv.synth.dfad_packed import adversarial_distillation_pack

        options = self.options
        alive = list(teachers)
        if len(alive) == 1:  # one game: the single run's own code, bit for bit
            try:
                results[alive[0]] = self.play_dfad(teachers[alive[0]], contexts[alive[0]])
            except Exception as exc:  # noqa: BLE001 - this pipeline's own failure
                results[alive[0]] = exc
            return
        games = [contexts[p] for p in alive]
        try:
            students = [context.build_model() for context in games]  # the audited architecture and initialisation
            generators = [initial_generator(options, context) for context in games]
            curves = adversarial_distillation_pack([teachers[p] for p in alive], students, generators, options, games)
        except Exception as exc:  # noqa: BLE001 - what every pipeline's single run would raise (the same options)
            for p in alive:
                results[p] = exc
            return
        for p, context, student, generator, losses in zip(alive, games, students, generators, curves, strict=True):
            try:
                record_l1(losses, context)
                results[p] = recorded_set(generator, teachers[p], options, context)
                self._students[context.model_id] = student
            except Exception as exc:  # noqa: BLE001 - this pipeline's own failure
                results[p] = exc

    def pack_memory_bytes(self, input_shape: tuple[int, ...], num_classes: int, private_size: int) -> int:
        """One packed pipeline: its teacher's training (the default bound) plus the method's working set.

        DeepInversion: the inputs of one teacher call with the teacher's
        activations and gradients (bounded by 1,024 float32 copies of each
        input: cnn_small on 8x8 digits holds about 400) and the Adam state of
        all ``n_synthetic`` inputs.  DFAD: the game's working set,
        :func:`raypriv.synth.dfad_packed.game_memory_bytes`.
        """
        from raypriv.synth.dfad_packed import game_memory_bytes
        from raypriv.synth.dfkd_packed import inputs_per_call

        teacher_training = super().pack_memory_bytes(input_shape, num_classes, private_size)
        if self.options.method == "dfad":
            return teacher_training + game_memory_bytes(self.options, tuple(input_shape), num_classes)
        per_input = 4 * int(np.prod(input_shape))
        working = 1024 * per_input * max(inputs_per_call(tuple(input_shape)), self.options.batch_size)
        adam = 4 * per_input * self.options.n_synthetic  # inputs, gradients and two moments
        return teacher_training + working + adam

    def training_recipe(self, config: ExperimentConfig) -> TrainConfig | None:
        """DeepInversion distils by the standard recipe; DFAD's student is trained during synthesis."""
        return config.train if self.options.method == "deepinversion" else None

    def train(self, training_set: LabeledSet, context: ShadowContext) -> nn.Module:
        if self.options.method == "deepinversion":
            return super().train(training_set, context)  # knowledge distillation by the standard recipe
        # Handed over once, so the instance keeps no trained model (nothing kept at all: no synthesize() ran).
        student = self._students.pop(context.model_id, None) if self._students else None
        if student is None:
            raise RuntimeError("dfkd/dfad: train() called without synthesize() for this model")
        return student
