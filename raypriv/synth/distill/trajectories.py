"""Trajectory matching for ``distill``: methods ``mtt`` and ``datm``, and the papers' evaluation of their sets.

* ``mtt``  Cazenavette et al., "Dataset Distillation by Matching Training
  Trajectories", CVPR 2022.  ``n_experts`` networks are trained on the
  private set (plain SGD at ``lr_teacher``, no momentum or weight decay, DSA
  on each batch: the authors' ``buffer.py``) and their flattened parameters
  are kept after every epoch: the expert trajectories θ*_0 … θ*_E.  Each
  iteration picks an expert and a start epoch t, starts a student at θ*_t,
  takes ``syn_steps`` differentiable SGD steps on minibatches of the
  (DSA-augmented) synthetic set with a learnable step size α, and moves the
  images and α to shrink the normalised parameter distance
  ``‖θ̂_N − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖²`` (M = ``expert_epochs``).
* ``datm`` Guo et al., "Towards Lossless Dataset Distillation via
  Difficulty-Aligned Trajectory Matching", ICLR 2024 (read against the
  authors' ``distill/DATM.py`` and ``configs/CIFAR-10/ConvIN/IPC10.yaml``).
  MTT plus (i) soft labels: learnable logits (SGD at ``lr_label``, momentum
  0.9), initialised per image with the mean logits, at their last epoch, of
  the experts that classify it correctly (:func:`average_correct_logits`);
  with ``init: real`` the images are private samples the first expert
  classifies correctly (``pix_init: samples_predicted_correctly``); the
  student trains on ``softmax(logits)``; (ii) an iteration whose matching
  loss exceeds ``loss_threshold`` (1.0) updates nothing; (iii) sequential
  generation: the upper end of the start-epoch range rises linearly from
  ``initial_max_start_epoch`` to ``max_start_epoch`` over
  ``expansion_iterations``, the lower end staying at ``min_start_epoch``.
* ``experts: ftd``  Du et al., "Minimizing the Accumulated Trajectory Error
  to Improve Dataset Distillation", CVPR 2023: flat expert trajectories
  from sharpness-aware training.  Implemented as DATM's ``buffer_FTD.py``
  trains its experts (GSAM with adaptive perturbation, ρ = ``ftd_rho`` 2.0,
  α = ``ftd_alpha`` 0.4: :class:`SharpnessAware`); ``sgd`` (MTT's) is the
  default for both methods.
* ``eval_recipe: published`` (the default for both): the audited model
  trains on the distilled set as the authors' ``evaluate_synset`` does, at
  the learned step size α (:func:`train_at_learned_lr`,
  :func:`raypriv.synth.distill.common.train_published`): SGD, momentum 0.9,
  weight decay 5e-4, batches of 256, ×0.1 (with a fresh optimiser) after
  epoch ``train_epochs // 2 + 1``, DSA on each batch.  Each model has its own
  α, so these models train one at a time (no shared recipe for the ensemble
  engine).  ``eval_recipe: config`` trains with the config's recipe instead.

Everything runs on this shadow model's private set only: the experts are
trained here, per model, and their trajectories stay in memory (or, above
:data:`MEMORY_LIMIT_BYTES`, in a private temporary directory removed at the
end); nothing is shared between models.

Packs (``execution.pack``): :mod:`raypriv.synth.distill.packed_trajectories`
trains each pipeline's experts alone with :func:`train_experts` and
:func:`initial_set` (bit for bit), then runs the matching of K pipelines as
one batched computation, equal to the single run in law (its docstring says
how far).

Departures from the papers and the authors' code (see also
:mod:`raypriv.synth.distill.matching`):

* No ZCA whitening: images live in the normaliser's space (the papers whiten
  CIFAR).  The images' learning rate is therefore not the papers' (1,000 in
  ZCA space for MTT on CIFAR-10 at ipc 10, 100 for DATM).
* The start epoch is drawn from ``min_start_epoch..max_start_epoch``
  *inclusive*; the authors' code draws below an exclusive bound, so their
  ``max_start_epoch`` 20 is our 19 and DATM's ``current_max_start_epoch`` 10
  our ``initial_max_start_epoch`` 9.
* Defaults are a CPU budget on small images (2 experts of 10 epochs, 60
  iterations of 10 student steps, ConvNet width 32 with fewer blocks on
  8x8 images, evaluation for 300 epochs, instead of 100 experts of 50
  epochs, 5,000 / 10,000 iterations of 30 / 80 steps, width 128, 1,000
  evaluation epochs); ``jobs/configs/cifar10-paradigms.yaml`` sets the
  papers' budgets.
* Each iteration draws its expert uniformly at random; the authors walk a
  shuffled list of experts (file by file) without replacement.  raypriv runs
  ``iterations`` updates; their loop runs ``Iteration + 1``.
* The audited model is the config's architecture (``model.arch``, its own
  initialisation), not the ConvNet the papers evaluate on; α was learned
  for the ConvNet student, as in the papers' cross-architecture tables.  One
  model per shadow pipeline, where the papers average 5 evaluations.
* The published evaluation runs ``train_epochs`` epochs; the authors' loop
  runs ``epoch_eval_train + 1`` (the decay epoch is theirs).  Like every
  raypriv training it drops a trailing batch of one image.  A learned α that
  is not a positive number fails that model (the authors would train at it).
* DSA is raypriv's implementation (:mod:`raypriv.synth.distill.common`) with
  the authors' ranges; its random draws are not theirs.
* DATM's initial images: ``ipc`` random private samples of the class that
  the first expert classifies correctly, all of the class's samples where
  fewer are; the authors scan the class in batches and move on to other
  experts when short.  An image no expert classifies correctly starts from
  the mean logits of all experts (the authors' code divides by zero).  With
  ``init: noise`` or ``public`` there is no correct-classification filter
  (nothing private to choose from) and the labels follow the same averaged
  rule (the authors' code initialises no labels for noise).
* FTD: only the sharpness-aware expert training is implemented, with
  GSAM's constant ρ as DATM's buffer (its rho scheduler is constant there);
  the FTD authors' own code was not read.  BatchNorm running statistics are
  left alone in the perturbed pass, as in GSAM's code.
* ``datm`` does not default to FTD experts (the authors' CIFAR buffers are
  FTD): they cost two passes per batch; the CIFAR-10 config sets them.
"""


from __future__ import annotations

import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from raypriv.errors import ModelFailed
from raypriv.seeding import torch_generator
from raypriv.synth.base import LabeledSet, ShadowContext
from raypriv.synth.distill.common import apply_dsa, sample_dsa, train_published

# Trajectories larger than this (all experts together) go to a per-model temporary directory.
MEMORY_LIMIT_BYTES = 512 * 2**20
IMAGE_MOMENTUM = 0.5  # MTT's SGD momentum for images and the step size
LABEL_MOMENTUM = 0.9  # DATM's SGD momentum for the label logits


# ------------------------------------------------------------ parameter layout


@dataclass
class ParameterLayout:
    """How a network's trainable parameters map to one flat vector (and back)."""

    names: list[str]
    shapes: list[torch.Size]

    @classmethod
    def of(cls, net: nn.Module) -> ParameterLayout:
        named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
        return cls([n for n, _ in named], [p.shape for _, p in named])

    @property
    def sizes(self) -> list[int]:
        return [int(torch.Size(s).numel()) for s in self.shapes]

    def flatten(self, net: nn.Module) -> torch.Tensor:
        params = dict(net.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t.view(s) for n, t, s in zip(self.names, flat.split(self.sizes), self.shapes, strict=True)}


class TrajectoryBuffer:
    """The experts' trajectories, each a tensor (epochs + 1, parameters), private to one model.

    In memory when they fit :data:`MEMORY_LIMIT_BYTES`, otherwise one file per
    expert in a temporary directory created for this model and removed by
    :meth:`close` (use as a context manager).
    """

    def __init__(self, n_experts: int, snapshots: int, n_params: int, limit: int = MEMORY_LIMIT_BYTES):
        self.on_disk = n_experts * snapshots * n_params * 4 > limit
        self.directory = tempfile.mkdtemp(prefix="raypriv-mtt-") if self.on_disk else None
        self.items: list[Any] = []
        self._cached: tuple[int, torch.Tensor] | None = None

    def append(self, trajectory: torch.Tensor) -> None:
        if self.directory is None:
            self.items.append(trajectory)
            return
        path = os.path.join(self.directory, f"expert{len(self.items)}.pt")
        torch.save(trajectory.cpu(), path)
        self.items.append(path)

    def get(self, index: int, device: torch.device) -> torch.Tensor:
        item = self.items[index]
        if self.directory is None:
            return item
        if self._cached is None or self._cached[0] != index:
            self._cached = (index, torch.load(item, map_location=device))
        return self._cached[1]

    def __len__(self) -> int:
        return len(self.items)

    def close(self) -> None:
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
        self.items, self._cached = [], None

    def __enter__(self) -> TrajectoryBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------- experts


def _augment(x: torch.Tensor, strategy: tuple[str, ...], generator: torch.Generator | None) -> torch.Tensor:
    if not strategy or generator is None:
        return x
    return apply_dsa(x, sample_dsa(strategy, len(x), tuple(x.shape[-2:]), generator))


@dataclass
class SharpnessAware:
    """FTD's expert update (DATM's ``buffer_FTD.py``: GSAM, Zhuang et al. 2022, with adaptive perturbation).

    With g = ∇L(w): the perturbation e = ρ w² ⊙ g / ‖|w| ⊙ g‖ (element-wise),
    g_p = ∇L(w + e) on the same batch, and the update direction
    d = g_p − α (g − cos(g, g_p) ‖g‖ g_p / ‖g_p‖), the part of g orthogonal to
    g_p scaled by α and subtracted; the SGD step then uses d at w.
    """

    rho: float
    alpha: float
    eps: float = 1e-12  # the authors' perturb_eps

    def direction(self, params: list[torch.Tensor], loss_at: Callable[[bool], torch.Tensor]) -> list[torch.Tensor]:
        """d at the current ``params`` (left unchanged); ``loss_at(perturbed)`` evaluates the batch loss at them."""
        grads = torch.autograd.grad(loss_at(False), params)
        norm = torch.stack([(p.detach().abs() * g).norm() for p, g in zip(params, grads, strict=True)]).norm()
        scale = self.rho / (norm + self.eps)
        shifts = [g * scale * p.detach().pow(2) for p, g in zip(params, grads, strict=True)]
        with torch.no_grad():
            for p, e in zip(params, shifts, strict=True):
                p.add_(e)
        try:
            perturbed = torch.autograd.grad(loss_at(True), params)
        finally:
            with torch.no_grad():
                for p, e in zip(params, shifts, strict=True):
                    p.sub_(e)
        g_norm = torch.stack([g.norm() for g in grads]).norm()
        p_norm = torch.stack([g.norm() for g in perturbed]).norm()
        inner = sum((g * h).sum() for g, h in zip(grads, perturbed, strict=True))
        cosine = inner / (p_norm * g_norm + self.eps)
        return [
            h - self.alpha * (g - cosine * g_norm * h / (p_norm + self.eps)) for g, h in zip(grads, perturbed, strict=True)
        ]


@contextmanager
def frozen_running_stats(net: nn.Module):
    """BatchNorm running statistics left as they are (the authors' second, perturbed pass sets momentum 0)."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum


def _batch_loss(net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, perturbed: bool) -> torch.Tensor:
    """Cross-entropy of one batch; the perturbed pass leaves BatchNorm statistics alone (as the authors')."""
    if not perturbed:
        return F.cross_entropy(net(inputs), targets)
    with frozen_running_stats(net):
        return F.cross_entropy(net(inputs), targets)


def train_expert(
    net: nn.Module,
    layout: ParameterLayout,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    lr: float,
    batch_size: int,
    strategy: tuple[str, ...],
    generator: torch.Generator,
    sharpness: SharpnessAware | None = None,
) -> torch.Tensor:
    """Train ``net`` on (x, y) with plain SGD, or FTD's sharpness-aware steps when ``sharpness`` is given.

    Returns its flat parameters before and after each epoch, shape (epochs + 1, parameters).
    """
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    params = [p for p in net.parameters() if p.requires_grad]
    snapshots = [layout.flatten(net)]
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator).to(x.device)
        for batch in order.split(batch_size):
            inputs = _augment(x[batch], strategy, generator)  # one draw: both of FTD's passes see the same batch
            optimizer.zero_grad(set_to_none=True)
            if sharpness is None:
                F.cross_entropy(net(inputs), y[batch]).backward()
            else:
                directions = sharpness.direction(params, partial(_batch_loss, net, inputs, y[batch]))
                for p, d in zip(params, directions, strict=True):
                    p.grad = d
            optimizer.step()
        snapshots.append(layout.flatten(net))
    return torch.stack(snapshots)


# ------------------------------------------------------------------ matching


def matching_loss(
    net: nn.Module,
    layout: ParameterLayout,
    start: torch.Tensor,
    target: torch.Tensor,
    syn: torch.Tensor,
    labels: torch.Tensor,
    syn_lr: torch.Tensor,
    syn_steps: int,
    batch_syn: int | None,
    strategy: tuple[str, ...] = (),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MTT's objective ‖θ̂_N − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖², differentiable w.r.t. syn, labels and syn_lr.

    The student starts at ``start`` (θ*_t) and takes ``syn_steps`` steps
    θ ← θ − syn_lr ∇θ CE(net_θ(syn_batch), labels_batch) on minibatches of
    ``batch_syn`` synthetic samples (all of them when None), cycling through
    random permutations as the authors do.  ``labels`` are class ids or class
    probabilities (N, K).
    """
    theta = start.detach().clone().requires_grad_(True)
    current = theta
    batches: list[torch.Tensor] = []
    batch = len(syn) if batch_syn is None else min(batch_syn, len(syn))
    for _ in range(syn_steps):
        if not batches:
            order = torch.randperm(len(syn), generator=generator) if generator is not None else torch.arange(len(syn))
            batches = list(order.to(syn.device).split(batch))
        index = batches.pop()
        x = _augment(syn[index], strategy, generator)
        logits = functional_call(net, layout.unflatten(current), (x,))
        loss = F.cross_entropy(logits, labels[index])
        (grad,) = torch.autograd.grad(loss, current, create_graph=True)
        current = current - syn_lr * grad
    start, target = start.detach(), target.detach()
    return (current - target).pow(2).sum() / (start - target).pow(2).sum().clamp_min(1e-12)


def start_range(options: Any, iteration: int) -> tuple[int, int]:
    """The (inclusive) range of start epochs at ``iteration``: fixed for MTT, rising for DATM."""
    if options.method != "datm":
        return options.min_start_epoch, options.max_start_epoch
    span = options.expansion_iterations or options.iterations
    fraction = min(1.0, iteration / span) if span > 0 else 1.0
    low = options.min_start_epoch + int(fraction * (options.final_min_start_epoch - options.min_start_epoch))
    high = options.initial_max_start_epoch + int(fraction * (options.max_start_epoch - options.initial_max_start_epoch))
    return low, max(low, high)


def trajectory_matching(
    syn: torch.Tensor,
    labels: torch.Tensor,
    label_logits: torch.Tensor | None,
    buffer: TrajectoryBuffer,
    student: nn.Module,
    layout: ParameterLayout,
    options: Any,
    generator: torch.Generator,
    augment_generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None, float, list[float]]:
    """Optimise the images (and, for DATM, the label logits) and the step size.

    Returns the images, the logits (None for MTT), the learned step size and
    the matching loss of every iteration.  An iteration whose loss exceeds
    ``options.loss_threshold`` (DATM's 1.0) updates nothing, optimiser
    momentum included, as in the authors' code.
    """
    syn = syn.detach().clone().requires_grad_(True)
    syn_lr = torch.tensor(float(options.lr_teacher), device=syn.device).requires_grad_(True)
    optimizers = [
        torch.optim.SGD([syn], lr=options.lr_image, momentum=IMAGE_MOMENTUM),
        torch.optim.SGD([syn_lr], lr=options.lr_lr, momentum=IMAGE_MOMENTUM),
    ]
    if label_logits is not None:
        label_logits = label_logits.detach().clone().requires_grad_(True)
        optimizers.append(torch.optim.SGD([label_logits], lr=options.lr_label, momentum=LABEL_MOMENTUM))
    losses = []
    for iteration in range(options.iterations):
        low, high = start_range(options, iteration)
        expert = int(torch.randint(len(buffer), (1,), generator=generator))
        t = int(torch.randint(low, high + 1, (1,), generator=generator))
        trajectory = buffer.get(expert, syn.device)
        targets = labels if label_logits is None else F.softmax(label_logits, dim=1)
        loss = matching_loss(
            student, layout, trajectory[t], trajectory[t + options.expert_epochs], syn, targets, syn_lr,
            options.syn_steps, options.batch_syn, options.strategy, augment_generator,
        )
        losses.append(loss.detach())
        if options.loss_threshold is not None and float(loss.detach()) > options.loss_threshold:
            continue  # DATM: a start epoch the synthetic set cannot reach yet would only add noise
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
    out_logits = None if label_logits is None else label_logits.detach()
    return syn.detach(), out_logits, float(syn_lr.detach()), torch.stack(losses).tolist() if losses else []


def average_correct_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """DATM's soft-label initialisation: per image, the mean logits of the experts that classify it correctly.

    ``logits`` (experts, N, K), ``labels`` (N,) class ids; returns (N, K).
    An image no expert classifies correctly gets the mean over all experts
    (the authors' code divides by zero there).
    """
    correct = (logits.argmax(2) == labels[None]).to(logits.dtype)  # (experts, N)
    counts = correct.sum(0)  # (N,)
    averaged = (logits * correct[:, :, None]).sum(0) / counts.clamp_min(1)[:, None]
    return torch.where((counts > 0)[:, None], averaged, logits.mean(0))


def expert_logits(
    student: nn.Module, layout: ParameterLayout, buffer: TrajectoryBuffer, images: torch.Tensor
) -> torch.Tensor:
    """Every expert's logits at its last epoch on ``images`` (N, C, H, W): shape (experts, N, K).

    The student network is in train mode: trajectories keep parameters only, not
    BatchNorm running statistics (the default ConvNet's instance norm is the same
    in either mode).
    """
    student.train()
    with torch.no_grad():
        return torch.stack(
            [functional_call(student, layout.unflatten(buffer.get(e, images.device)[-1]), (images,)).float()
             for e in range(len(buffer))]
        )


def train_experts(
    real: torch.Tensor, y: torch.Tensor, new_network: Callable[[], nn.Module], options: Any,
    streams: Callable[[str], torch.Generator],
) -> tuple[nn.Module, ParameterLayout, TrajectoryBuffer]:
    """The student network, its parameter layout, and the experts' trajectories on (real, y).

    The first network drawn is the student (its weights are never used: only
    its structure); then each expert.  The caller closes the buffer (a
    context manager).
    """
    student = new_network()
    layout = ParameterLayout.of(student)
    expert_generator = streams("experts")
    sharpness = SharpnessAware(options.ftd_rho, options.ftd_alpha) if options.experts == "ftd" else None
    buffer = TrajectoryBuffer(options.n_experts, options.expert_train_epochs + 1, sum(layout.sizes))
    try:
        for _ in range(options.n_experts):
            buffer.append(
                train_expert(
                    new_network(), layout, real, y, options.expert_train_epochs, options.lr_teacher,
                    options.expert_batch, options.strategy, expert_generator, sharpness,
                )
            )
    except BaseException:
        buffer.close()
        raise
    return student, layout, buffer


def initial_set(
    real: torch.Tensor,
    init_images: Callable[[nn.Module | None], tuple[torch.Tensor, torch.Tensor]],
    new_network: Callable[[], nn.Module],
    student: nn.Module,
    layout: ParameterLayout,
    buffer: TrajectoryBuffer,
    options: Any,
    info: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The starting images (N, C, H, W), their class ids (N,) and, for DATM, the label logits (N, K) (else None).

    DATM picks the initial images with the first expert at its last epoch
    (``samples_predicted_correctly``) and labels them with the mean logits of
    the experts that classify each image correctly.
    """
    datm = options.method == "datm"
    teacher = None
    if datm:
        teacher = new_network()
        teacher.load_state_dict({**teacher.state_dict(), **layout.unflatten(buffer.get(0, real.device)[-1])})
        teacher.train()  # batch statistics, as expert_logits explains
    syn, syn_y = init_images(teacher)
    logits = None
    if datm:
        logits = average_correct_logits(expert_logits(student, layout, buffer, syn), syn_y)
        info["distill_label_init_agreement"] = float((logits.argmax(1) == syn_y).float().mean())
    return syn, syn_y, logits


def record_matching(info: dict[str, Any], options: Any, lr: float, losses: list[float]) -> None:
    """The facts of one matching run kept in the model's ``info``: the learned step size, skips, losses."""
    info["distill_learned_lr"] = lr
    if options.loss_threshold is not None:
        info["distill_skipped_iterations"] = sum(loss > options.loss_threshold for loss in losses)
    if losses:
        tail = max(1, len(losses) // 10)
        info["distill_loss_first"] = sum(losses[:tail]) / tail
        info["distill_loss_last"] = sum(losses[-tail:]) / tail
        info["distill_final_loss"] = losses[-1]


def distill_trajectories(
    real: torch.Tensor,
    y: torch.Tensor,
    init_images: Callable[[nn.Module | None], tuple[torch.Tensor, torch.Tensor]],
    new_network: Callable[[], nn.Module],
    options: Any,
    streams: Callable[[str], torch.Generator],
    info: dict[str, Any],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole method on one private set (normalised images ``real``, labels ``y``).

    ``init_images(teacher)`` returns the initial synthetic images and their
    class ids (class-major); for DATM it gets an expert to pick correctly
    classified private samples with.  Returns the images (normalised) and
    the labels: int64 ids (MTT) or float32 probabilities (DATM).
    """
    student, layout, buffer = train_experts(real, y, new_network, options, streams)
    with buffer:
        syn, syn_y, logits = initial_set(real, init_images, new_network, student, layout, buffer, options, info)
        syn, logits, lr, losses = trajectory_matching(
            syn, syn_y, logits, buffer, student, layout, options, streams("matching"), streams("dsa")
        )
    record_matching(info, options, lr, losses)
    labels = syn_y if logits is None else F.softmax(logits, dim=1).float()
    return syn, labels


def train_at_learned_lr(training_set: LabeledSet, context: ShadowContext, options: Any) -> nn.Module:
    """``eval_recipe: published``: the audited model trained as the papers evaluate, at the learned step size.

    :func:`~raypriv.synth.distill.common.train_published` for ``train_epochs``
    (None: the config's ``train.epochs``) with the method's DSA strategy, the
    audited architecture and initialisation, and the data order and
    augmentation streams every paradigm's training uses.  A step size that is
    not a positive number fails this model (:class:`ModelFailed`).
    """
    lr = context.info.get("distill_learned_lr")
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ModelFailed(
            f"distill {options.method} (model {context.model_id}): the learned step size is {lr!r}, so the "
            "published evaluation cannot train at it; lower lr_lr, or set eval_recipe: config"
        )
    epochs = options.train_epochs or context.config.train.epochs
    generators = (
        torch_generator(context.seed, "order", context.model_id),
        torch_generator(context.seed, "augment", context.model_id),
    )
    return train_published(
        context.build_model(), training_set.x, training_set.y, float(lr), epochs, options.strategy,
        context.normalizer, generators, context.config.train.amp,
    )
