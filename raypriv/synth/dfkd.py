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
    BatchNorm (see :class:`Generator`).  The student (the audited
    architecture and initialisation) is trained *during* synthesis;
    ``train`` returns it, so the two stages must run in one process
    (``separable_synthesis`` is False for this method).
    The training set ``synthesize`` returns (stored with the run) is
    ``n_synthetic`` samples of the final generator with the teacher's soft
    labels: a record of what the student was trained on, not its training data.

Packs (``execution.pack``): a worker runs K DeepInversion pipelines with
their inputs optimised as one batch (:mod:`raypriv.synth.dfkd_packed`), each
pipeline bit for bit its single run; each teacher still trains alone.  DFAD
keeps its student between the stages, so it is never packed.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raypriv.config import ExperimentConfig, ModelConfig, TrainConfig
from raypriv.errors import RayprivError
from raypriv.synth.base import LabeledSet, Paradigm, ShadowContext
from raypriv.synth.options import DFKDOptions
from raypriv.training import Normalizer, accuracy, make_scheduler

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


# ------------------------------------------------------------- DeepInversion


class BatchNormStatistics:
    """Forward hooks that compute R_feature over every BatchNorm layer of a network."""

    def __init__(self, network: nn.Module):
        self.layers = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not self.layers:
            raise RayprivError(
                "paradigm dfkd with method 'deepinversion' matches the teacher's BatchNorm statistics, but the "
                "teacher has no BatchNorm layer; set model.norm: batch (or use paradigm_options.dfkd.method: dfad)"
            )
        self.losses: list[torch.Tensor] = []
        self.handles = [layer.register_forward_hook(self._hook) for layer in self.layers]

    def _hook(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0]
        dims = [d for d in range(x.ndim) if d != 1]  # all but the channel (feature) dimension
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        self.losses.append(torch.norm(mean - layer.running_mean, 2) + torch.norm(var - layer.running_var, 2))

    def pop(self) -> torch.Tensor:
        """The summed loss of the forward pass just made (and reset for the next one)."""
        total, self.losses = sum(self.losses), []
        return total

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """DeepInversion's TV prior: L2 norms of the differences to the right, down and both diagonal neighbours."""
    return (
        torch.norm(x[:, :, :, :-1] - x[:, :, :, 1:])
        + torch.norm(x[:, :, :-1, :] - x[:, :, 1:, :])
        + torch.norm(x[:, :, 1:, :-1] - x[:, :, :-1, 1:])
        + torch.norm(x[:, :, :-1, :-1] - x[:, :, 1:, 1:])
    )


def deep_inversion(
    teacher: nn.Module,
    targets: torch.Tensor,
    input_shape: tuple[int, ...],
    options: DFKDOptions,
    context: ShadowContext,
    rng: torch.Generator,
) -> tuple[torch.Tensor, list[float]]:
    """Optimise one batch of inputs for ``targets``; returns them (images: pixel scale 0..1, tabular:
    raw features) and the unweighted R_feature loss at each step.

    ``teacher`` must be in eval mode (running statistics are the targets of R_feature).
    """
    device = context.device
    images = len(input_shape) == 3
    x = torch.randn(len(targets), *input_shape, generator=rng).to(device)
    if images:
        # Pixels 0..1 in normalised space.  Inputs are kept inside after each step (as the official
        # ImageNet code does), so the images returned are exactly those the teacher was optimised on.
        low = context.normalizer(torch.zeros(1, *input_shape, device=device))
        high = context.normalizer(torch.ones(1, *input_shape, device=device))
        x = torch.maximum(torch.minimum(x, high), low)
    x.requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=options.lr)
    statistics = BatchNormStatistics(teacher)
    curve = []
    try:
        for _ in range(options.iterations):
            view = x
            if images and options.jitter > 0:  # random roll: the objective must hold for shifted copies too
                dy, dx = torch.randint(-options.jitter, options.jitter + 1, (2,), generator=rng).tolist()
                view = torch.roll(view, shifts=(dy, dx), dims=(2, 3))
            if images and options.flip and torch.rand((), generator=rng).item() < 0.5:
                view = view.flip(-1)
            logits = teacher(view)
            bn_loss = statistics.pop()
            loss = F.cross_entropy(logits, targets) + options.bn_weight * bn_loss
            if images:
                loss = loss + options.tv_weight * total_variation(view)
            loss = loss + options.l2_weight * torch.norm(view)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if images:
                with torch.no_grad():
                    x.copy_(torch.maximum(torch.minimum(x, high), low))
            curve.append(bn_loss.detach())  # no .item() here: it would wait for the GPU every step
    finally:
        statistics.close()
    out = context.normalizer.denormalize(x.detach())
    return (out.clamp_(0.0, 1.0) if images else out), torch.stack(curve).tolist()


def synthesize_deepinversion(
    teacher: nn.Module, options: DFKDOptions, context: ShadowContext
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_synthetic`` inputs in batches of at least ``batch_size``, with balanced targets; returns (x, targets)."""
    k = context.num_classes
    if options.n_synthetic < k:
        raise RayprivError(
            f"paradigm_options.dfkd.n_synthetic={options.n_synthetic} is fewer than the {k} classes; "
            f"give at least {k} so every class gets inputs"
        )
    # Class i % k for input i: every batch of at least k inputs holds every class equally (up to one).
    targets = torch.arange(options.n_synthetic, device=context.device) % k
    n_batches = max(1, options.n_synthetic // options.batch_size)  # so no batch is smaller than batch_size
    rng = context.generator("deepinversion")
    xs, first, last = [], [], []
    for batch_targets in torch.tensor_split(targets, n_batches):  # nearly equal consecutive batches
        x, curve = deep_inversion(teacher, batch_targets, context.input_shape, options, context, rng)
        xs.append(x)
        first.append(curve[0])
        last.append(curve[-1])
    context.info["bn_loss_start"] = sum(first) / len(first)
    context.info["bn_loss_end"] = sum(last) / len(last)
    return torch.cat(xs).float(), targets


# ---------------------------------------------------------------------- DFAD


class Generator(nn.Module):
    """DFAD's DCGAN-style generator, making images of ``shape`` (C, H, W) in pixel scale 0..1.

    z -> linear -> (2w, H/4, W/4) -> BN -> 2 x (upsample, conv, BN, LeakyReLU) -> conv -> tanh -> BN without affine.

    As in the paper, the last layer is a BatchNorm without learnt scale and
    shift: every generated batch has zero mean and unit variance per channel
    in the network's normalised input space, i.e. the training data's pixel
    mean and spread, so the generator cannot drift to saturated or blank
    images (with a plain sigmoid output the students on digits were far
    worse).  The output is then mapped back to pixels with the run's
    normaliser and clamped to 0..1.  The second upsampling goes to (H, W)
    exactly, so sizes need not divide by 4.
    """

    def __init__(self, latent_dim: int, width: int, shape: tuple[int, int, int], normalizer: Normalizer):
        super().__init__()
        channels, height, width_px = shape
        self.normalizer = normalizer
        self.start = (math.ceil(height / 4), math.ceil(width_px / 4))
        self.project = nn.Linear(latent_dim, 2 * width * self.start[0] * self.start[1])
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2),
            nn.Upsample(size=(height, width_px)),
            nn.Conv2d(2 * width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, channels, 3, padding=1),
            nn.Tanh(),
            nn.BatchNorm2d(channels, affine=False),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        normalised = self.body(self.project(z).view(len(z), -1, *self.start))
        return self.normalizer.denormalize(normalised).clamp(0.0, 1.0)


def adversarial_distillation(
    teacher: nn.Module, student: nn.Module, options: DFKDOptions, context: ShadowContext
) -> tuple[Generator, list[float]]:
    """Play DFAD's game; ``student`` is trained in place.  Returns the generator and the student's L1 losses."""
    device = context.device
    noise = context.generator("dfad-noise")
    with torch.random.fork_rng(devices=[]):  # the generator's initial weights, seeded per model
        torch.manual_seed(int(context.rng("dfad-generator-init").integers(2**62)))
        generator = Generator(options.latent_dim, options.generator_width, context.input_shape, context.normalizer)
        generator = generator.to(device)

    student_optimizer = torch.optim.SGD(student.parameters(), lr=options.student_lr, momentum=0.9, weight_decay=5e-4)
    generator_optimizer = torch.optim.Adam(generator.parameters(), lr=options.generator_lr)
    schedules = [
        make_scheduler(opt, "cosine", options.steps)
        for opt in (student_optimizer, generator_optimizer)
    ]

    def sample() -> torch.Tensor:
        return torch.randn(options.batch_size, options.latent_dim, generator=noise).to(device)

    student.train()
    generator.train()
    losses = []
    for _ in range(options.steps):
        # Student: imitate the teacher on the generator's current inputs (the generator is held fixed).
        for _ in range(options.student_steps):
            with torch.no_grad():
                x = context.normalizer(generator(sample()))
                target = teacher(x)
            loss = F.l1_loss(student(x), target)
            student_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            student_optimizer.step()
            losses.append(loss.detach())
        # Generator: move towards the inputs where student and teacher disagree most.
        x = context.normalizer(generator(sample()))
        loss = -F.l1_loss(student(x), teacher(x))
        generator_optimizer.zero_grad(set_to_none=True)
        loss.backward()  # also fills the student's gradients; its next zero_grad discards them
        generator_optimizer.step()
        for schedule in schedules:
            schedule.step()
    generator.eval()
    return generator, torch.stack(losses).tolist()


# ------------------------------------------------------------------ paradigm


class DataFreeKD(Paradigm):
    name = "dfkd"
    Options = DFKDOptions

    def __init__(self, options: DFKDOptions | None = None):
        super().__init__(options)
        # DFAD trains the student during synthesis; kept here for train(), with the model it belongs to.
        self._student: tuple[int, nn.Module] | None = None

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

        student = context.build_model()  # the audited architecture and initialisation
        generator, losses = adversarial_distillation(teacher, student, options, context)
        tail = max(1, len(losses) // 10)
        context.info["l1_start"] = sum(losses[:tail]) / tail
        context.info["l1_end"] = sum(losses[-tail:]) / tail
        self._student = (context.model_id, student)
        with torch.no_grad():
            z = torch.randn(options.n_synthetic, options.latent_dim, generator=context.generator("dfad-record"))
            x = torch.cat([generator(chunk.to(context.device)) for chunk in z.split(1024)]).float()
        return LabeledSet(x, soft_labels(teacher, x, context, options.temperature))

    def packs_synthesis(self) -> bool:
        """DeepInversion: K pipelines' inputs optimised as one batch (:mod:`raypriv.synth.dfkd_packed`).

        DFAD is not packed: its student is trained during synthesis and kept
        for ``train`` (``separable_synthesis`` is False), and the pipeline
        packs only separable paradigms.
        """
        return self.options.method == "deepinversion"

    def synthesize_pack(self, privates: list[LabeledSet], contexts: list[ShadowContext]) -> list[LabeledSet | Exception]:
        """DeepInversion for K pipelines: each teacher trained alone, all inputs optimised at once.

        Pipeline p equals the same pipeline run alone bit for bit (the
        teacher is trained by the same code; the batched optimisation gives
        the single run's bits, see :mod:`raypriv.synth.dfkd_packed`).  A
        pipeline that raises (a private set the teacher cannot train on)
        gets its own exception; the others go on.
        """
        if not self.packs_synthesis():
            return super().synthesize_pack(privates, contexts)
        from raypriv.synth.dfkd_packed import synthesize_deepinversion_pack

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
        if teachers:
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
        return results  # type: ignore[return-value]

    def pack_memory_bytes(self, input_shape: tuple[int, ...], num_classes: int, private_size: int) -> int:
        """One packed DeepInversion pipeline: its teacher's training (the default bound) plus the optimisation's
        working set, the inputs of one teacher call with the teacher's activations and gradients (bounded by
        1,024 float32 copies of each input: cnn_small on 8x8 digits holds about 400) and the Adam state of all
        ``n_synthetic`` inputs."""
        from raypriv.synth.dfkd_packed import inputs_per_call

        per_input = 4 * int(np.prod(input_shape))
        working = 1024 * per_input * max(inputs_per_call(tuple(input_shape)), self.options.batch_size)
        adam = 4 * per_input * self.options.n_synthetic  # inputs, gradients and two moments
        return super().pack_memory_bytes(input_shape, num_classes, private_size) + working + adam

    def training_recipe(self, config: ExperimentConfig) -> TrainConfig | None:
        """DeepInversion distils by the standard recipe; DFAD's student is trained during synthesis."""
        return config.train if self.options.method == "deepinversion" else None

    def train(self, training_set: LabeledSet, context: ShadowContext) -> nn.Module:
        if self.options.method == "deepinversion":
            return super().train(training_set, context)  # knowledge distillation by the standard recipe
        if self._student is None or self._student[0] != context.model_id:
            raise RuntimeError("dfkd/dfad: train() called without synthesize() for this model")
        student = self._student[1]
        self._student = None
        return student
