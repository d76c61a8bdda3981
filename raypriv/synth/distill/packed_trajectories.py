"""Packs of ``distill`` ``mtt`` / ``datm`` pipelines (``execution.pack``): K trajectory matchings as one computation.

Every pipeline of a pack runs the same method on its own private set.  Per
pipeline, as the single run (:func:`raypriv.synth.distill.trajectories.distill_trajectories`)
and from the same code: the checks, the experts (:func:`~raypriv.synth.distill.trajectories.train_experts`,
plain SGD or FTD), DATM's teacher, initial images and label logits
(:func:`~raypriv.synth.distill.trajectories.initial_set`).  The experts are
trained one pipeline at a time, so a packed pipeline's trajectories equal its
single run's bit for bit.  Batched across the K pipelines: the matching
iterations (:func:`trajectory_matching_pack`), where the time goes:

* :class:`PackedConvNet` runs the K unrolled students (ConvNets with
  pipeline-own flat parameters, shape ``(K, P)``) as grouped convolutions
  (``groups=K``), one ``group_norm`` with a group per (pipeline, channel)
  (instance norm), and one batched matrix product for the K linear heads;
  no number crosses from one pipeline to another;
* every (pipeline, step) DSA draw of a student step is applied in one call
  per transform (:func:`raypriv.synth.distill.packed.augment_pack`);
* the images, step sizes and (DATM) label logits of all pipelines are
  single ``(K, ...)`` tensors under :class:`MaskedSGD`, torch's SGD update
  applied to the pipelines that update this iteration only: DATM's loss
  threshold skips an iteration per pipeline (one pipeline may skip while the
  others update), momentum included, as the single run.

Each pipeline draws from its own generators (``matching``: expert and start
epoch; ``dsa``: minibatch order and augmentation) in the single run's order.

**Equality with the single run: in law, not bit for bit.**  The packed
student's forward pass gives the single run's bits, but the backward of the
grouped convolution (the inner gradient of every student step, and the
double backward) sums in another order: the first iteration's matching
losses agree to ~1e-7 relative and its images to ~1e-7.  Trajectory matching
amplifies such differences (measured on digits with the default options,
2026-12-05: a relative 1e-7 change of a single run's starting images moves
its final images by 1.4e-5 after 1 iteration, 8e-4 after 10, 8e-3 after 60;
the pack's difference from the single run: 2.4e-3 after 10, 2.4e-2 after
60, the learned step size 2.4e-6 of 0.0099).  So
``tests/test_packs_trajectories.py`` checks the first iterations to 1e-5 and
whole runs in law (the same draws and skip decisions, learned step sizes and
losses close), not the final sets to 1e-5.  Packing still never enters the
recipe hash: a packed and a single set are the same procedure on the same
streams, apart in rounding.

**Speed on a CPU.**  One MTT pipeline on digits (default options, one
thread) spends ~90% of its time in the matching iterations, and those in
large-tensor kernels, not in per-operation overhead (profiled 2026-12-05, 8
pipelines, self CPU per pipeline-iteration): loop 293 ms in 13,200 op calls
(convolutions 42%, element-wise 23%, dispatch/autograd 14%, pooling 14%);
pack of 8: 314 ms in 4,500 calls (dispatch/autograd halves, convolutions
124 -> 96 ms, but element-wise work doubles, 66 -> 134 ms: a packed
activation (100, 256, 8, 8) is 6.5 MB, out of a core's cache, where one
pipeline's 0.8 MB fits).  Batching removes overhead, not arithmetic, so on
CPU cores a pack gains 1.1-2x (bench_synthesis.py); on a GPU, where one
pipeline's small kernels leave the device idle, packs are what fills it.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from raypriv.synth.base import LabeledSet, ShadowContext
from raypriv.synth.distill.common import ConvNet, sample_dsa
from raypriv.synth.distill.options import TRAJECTORY_METHODS, DistillOptions
from raypriv.synth.distill.packed import augment_pack
from raypriv.synth.distill.trajectories import (
    IMAGE_MOMENTUM,
    LABEL_MOMENTUM,
    ParameterLayout,
    TrajectoryBuffer,
    initial_set,
    record_matching,
    start_range,
    train_experts,
)

# A first convolution with fewer input channels than this runs pipeline by pipeline: oneDNN's grouped kernel sums
# 1 or 3 channels in another order than the single run's convolution (raypriv.synth.distill.packed, measured 2026-12-05).
GROUPED_MIN_CHANNELS = 8


class PackedConvNet:
    """K :class:`~raypriv.synth.distill.common.ConvNet` students with flat parameters ``(K, P)``, as one network.

    Built from one student (its structure and :class:`ParameterLayout`);
    :meth:`__call__` maps parameters ``(K, P)`` and images ``(K, N, C, H, W)``
    to logits ``(K, N, classes)``, differentiable twice w.r.t. both (the
    unrolled student steps need it).  Pipeline p's logits depend on row p of
    each input only.
    """

    def __init__(self, student: nn.Module, layout: ParameterLayout):
        if not isinstance(student, ConvNet):
            raise TypeError(f"a packed student must be a ConvNet, not {type(student).__name__}")
        self.layout = layout
        self.steps: list[tuple[str, Any]] = []
        for index, module in enumerate(student.features):
            name = f"features.{index}"
            if isinstance(module, nn.Conv2d):
                self.steps.append(("conv", (name, module.padding, module.in_channels)))
            elif isinstance(module, nn.GroupNorm):
                self.steps.append(("norm", (name, module.num_groups, module.eps)))
            elif isinstance(module, nn.ReLU):
                self.steps.append(("relu", None))
            elif isinstance(module, nn.AvgPool2d):
                self.steps.append(("pool", module.kernel_size))
            elif isinstance(module, nn.Flatten):
                self.steps.append(("flatten", None))
            else:
                raise TypeError(f"PackedConvNet cannot run a {type(module).__name__} layer")

    def __call__(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        k, n = x.shape[:2]
        params = {
            name: part.reshape(k, *shape)
            for name, part, shape in zip(self.layout.names, flat.split(self.layout.sizes, dim=1), self.layout.shapes, strict=True)
        }
        out = x.transpose(0, 1).reshape(n, k * x.shape[2], *x.shape[3:])  # pipeline p's channels side by side
        for kind, arg in self.steps:
            if kind == "conv":
                name, padding, channels = arg
                weight, bias = params[f"{name}.weight"], params[f"{name}.bias"]
                if channels < GROUPED_MIN_CHANNELS:
                    out = torch.cat([
                        F.conv2d(out[:, p * channels : (p + 1) * channels], weight[p], bias[p], padding=padding)
                        for p in range(k)
                    ], 1)
                else:
                    out = F.conv2d(out, weight.flatten(0, 1), bias.flatten(), padding=padding, groups=k)
            elif kind == "norm":
                name, groups, eps = arg
                out = F.group_norm(out, k * groups, params[f"{name}.weight"].flatten(), params[f"{name}.bias"].flatten(), eps)
            elif kind == "relu":
                out = F.relu(out)
            elif kind == "pool":
                out = F.avg_pool2d(out, arg)
            else:  # flatten: each pipeline's features in the single network's order
                out = out.reshape(n, k, -1).transpose(0, 1)
        weight, bias = params["classifier.weight"], params["classifier.bias"]
        return torch.baddbmm(bias.unsqueeze(1), out, weight.transpose(1, 2))


class MaskedSGD:
    """torch's SGD with momentum (no dampening, weight decay or Nesterov) on a ``(K, ...)`` tensor, per pipeline.

    :meth:`step` updates only the pipelines whose entry of ``update`` is
    True: their momentum buffers and rows, with the element-wise operations
    of ``torch.optim.SGD`` (the buffer starts as the first gradient); a
    skipped pipeline's row and buffer stay as they are, as when the single
    run skips ``optimizer.step()``.
    """

    def __init__(self, param: torch.Tensor, lr: float, momentum: float):
        self.param, self.lr, self.momentum = param, lr, momentum
        self.buffer: torch.Tensor | None = None
        self.started = torch.zeros(len(param), dtype=torch.bool, device=param.device)

    def zero_grad(self) -> None:
        self.param.grad = None

    @torch.no_grad()
    def step(self, update: torch.Tensor) -> None:
        """``update``: ``(K,)`` bools, the pipelines that step."""
        grad = self.param.grad
        if grad is None:
            return
        shape = (-1,) + (1,) * (self.param.dim() - 1)
        if self.buffer is None:
            self.buffer = torch.zeros_like(self.param)
        moved = torch.where(self.started.view(shape), self.buffer.mul(self.momentum).add(grad), grad)
        self.buffer = torch.where(update.view(shape), moved, self.buffer)
        stepped = self.param.add(self.buffer, alpha=-self.lr)
        self.param.copy_(torch.where(update.view(shape), stepped, self.param))
        self.started |= update


def packed_matching_loss(
    net: PackedConvNet,
    start: torch.Tensor,
    target: torch.Tensor,
    syn: torch.Tensor,
    labels: torch.Tensor,
    syn_lr: torch.Tensor,
    syn_steps: int,
    batch_syn: int | None,
    strategy: tuple[str, ...],
    generators: list[torch.Generator] | None,
) -> torch.Tensor:
    """:func:`raypriv.synth.distill.trajectories.matching_loss` of K pipelines: shape ``(K,)``.

    ``start``, ``target`` ``(K, P)``; ``syn`` ``(K, N, C, H, W)``; ``labels``
    ``(K, N)`` class ids or ``(K, N, classes)`` probabilities; ``syn_lr``
    ``(K,)``.  Pipeline p draws its minibatch order and DSA from
    ``generators[p]`` as the single run does.  The K losses are summed for
    the inner gradient: each pipeline's parameters get the gradient of its
    own loss only.
    """
    k, n_syn = syn.shape[:2]
    device = syn.device
    theta = start.detach().clone().requires_grad_(True)
    current = theta
    batch = n_syn if batch_syn is None else min(batch_syn, n_syn)
    pending: list[list[torch.Tensor]] = [[] for _ in range(k)]
    rows = torch.arange(k, device=device)[:, None]
    for _ in range(syn_steps):
        chosen, draws = [], []
        for p in range(k):
            generator = None if generators is None else generators[p]
            if not pending[p]:
                order = torch.randperm(n_syn, generator=generator) if generator is not None else torch.arange(n_syn)
                pending[p] = list(order.to(device).split(batch))
            index = pending[p].pop()
            chosen.append(index)
            if strategy and generator is not None:
                draws.append(sample_dsa(strategy, len(index), tuple(syn.shape[-2:]), generator))
        index = torch.stack(chosen)  # (K, b): every pipeline's batches have the same sizes
        x = syn[rows, index]
        if draws:
            x = torch.stack(augment_pack(list(x.unbind(0)), draws))
        logits = net(current, x)
        chosen_labels = labels[rows, index]
        losses = F.cross_entropy(
            logits.flatten(0, 1), chosen_labels.flatten(0, 1), reduction="none"
        ).view(k, -1).mean(1)
        (grad,) = torch.autograd.grad(losses.sum(), current, create_graph=True)
        current = current - syn_lr[:, None] * grad
    start, target = start.detach(), target.detach()
    return (current - target).pow(2).sum(1) / (start - target).pow(2).sum(1).clamp_min(1e-12)


def trajectory_matching_pack(
    syn: torch.Tensor,
    labels: torch.Tensor,
    label_logits: torch.Tensor | None,
    buffers: list[TrajectoryBuffer],
    net: PackedConvNet,
    options: Any,
    generators: list[torch.Generator],
    augment_generators: list[torch.Generator],
) -> tuple[torch.Tensor, torch.Tensor | None, list[float], list[list[float]]]:
    """:func:`raypriv.synth.distill.trajectories.trajectory_matching` for K pipelines at once.

    ``syn`` ``(K, N, C, H, W)`` initial images, ``labels`` ``(K, N)`` class
    ids, ``label_logits`` ``(K, N, classes)`` (DATM) or None; pipeline p
    matches against ``buffers[p]`` and draws from ``generators[p]``
    (``matching``) and ``augment_generators[p]`` (``dsa``).  Returns the
    images ``(K, N, C, H, W)``, the logits (or None), each pipeline's learned
    step size and its matching loss of every iteration.  A pipeline whose
    loss exceeds ``options.loss_threshold`` skips that iteration alone.
    """
    k = len(buffers)
    device = syn.device
    syn = syn.detach().clone().requires_grad_(True)
    syn_lr = torch.full((k,), float(options.lr_teacher), device=device).requires_grad_(True)
    optimizers = [MaskedSGD(syn, options.lr_image, IMAGE_MOMENTUM), MaskedSGD(syn_lr, options.lr_lr, IMAGE_MOMENTUM)]
    if label_logits is not None:
        label_logits = label_logits.detach().clone().requires_grad_(True)
        optimizers.append(MaskedSGD(label_logits, options.lr_label, LABEL_MOMENTUM))
    losses: list[list[float]] = [[] for _ in range(k)]
    for iteration in range(options.iterations):
        low, high = start_range(options, iteration)
        starts, targets = [], []
        for p in range(k):
            expert = int(torch.randint(len(buffers[p]), (1,), generator=generators[p]))
            t = int(torch.randint(low, high + 1, (1,), generator=generators[p]))
            trajectory = buffers[p].get(expert, device)
            starts.append(trajectory[t])
            targets.append(trajectory[t + options.expert_epochs])
        wanted = labels if label_logits is None else F.softmax(label_logits, dim=2)
        loss = packed_matching_loss(
            net, torch.stack(starts), torch.stack(targets), syn, wanted, syn_lr, options.syn_steps, options.batch_syn,
            options.strategy, augment_generators,
        )
        values = loss.detach().tolist()
        for p, value in enumerate(values):
            losses[p].append(value)
        update = [options.loss_threshold is None or not value > options.loss_threshold for value in values]
        if not any(update):
            continue
        mask = torch.tensor(update, device=device)
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss[mask].sum().backward()
        for optimizer in optimizers:
            optimizer.step(mask)
    out_logits = None if label_logits is None else label_logits.detach()
    return syn.detach(), out_logits, [float(v) for v in syn_lr.detach()], losses


def trajectories_packable(options: DistillOptions) -> bool:
    """Whether :func:`synthesize_trajectories_pack` runs these options: ``mtt`` or ``datm`` with the ConvNet student.

    ``embed_arch: model`` students are the audited architecture (anything
    :mod:`raypriv.models` builds), which :class:`PackedConvNet` does not
    group; they run one by one.  FTD experts are packed like SGD ones (the
    experts train one pipeline at a time in either case).
    """
    return options.method in TRAJECTORY_METHODS and options.embed_arch == "convnet"


def trajectory_pack_memory_bytes(options: DistillOptions, input_shape: tuple[int, ...], num_classes: int,
                                 private_size: int) -> int:
    """An upper estimate of one packed MTT/DATM pipeline's working memory in bytes.

    The private set (a normalised copy and DSA batches), the experts'
    trajectories, and the unrolled student graph: per student step and per
    synthetic image, ~16 activation-sized tensors of the first block
    (``embed_width`` maps of the input size) kept for the double backward.
    """
    pixels = math.prod(input_shape)
    h, w = input_shape[-2:]
    n_syn = num_classes * options.ipc
    batch = n_syn if options.batch_syn is None else min(options.batch_syn, n_syn)
    params = options.embed_width * (input_shape[0] * 9 + 1 + 2) + options.embed_width * (options.embed_width * 9 + 3) * 2
    params += options.embed_width * h * w * num_classes  # a generous bound on the linear head
    trajectories = options.n_experts * (options.expert_train_epochs + 1) * params
    graph = options.syn_steps * (16 * batch * options.embed_width * h * w + 4 * params)
    images = 4 * private_size * pixels + 8 * n_syn * pixels
    return 4 * (images + trajectories + graph)


def synthesize_trajectories_pack(
    paradigm: Any, privates: list[LabeledSet], contexts: list[ShadowContext]
) -> list[LabeledSet | Exception]:
    """MTT or DATM on K private sets (``paradigm``: the :class:`~raypriv.synth.distill.Distill` whose options run).

    Per pipeline, alone and from the single run's code: the checks, the
    experts, the initial set; a pipeline that fails there gets its own
    exception.  The others are matched together
    (:func:`trajectory_matching_pack`), and each one's ``context.info`` gets
    what the single run records (learned step size, skips, losses, DATM's
    label agreement).
    """
    options = paradigm.options
    results: list[LabeledSet | Exception | None] = [None] * len(privates)
    ready: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None, TrajectoryBuffer]] = []
    structure: tuple[nn.Module, ParameterLayout] | None = None
    with ExitStack() as stack:
        for p, (private, context) in enumerate(zip(privates, contexts, strict=True)):
            try:
                real, _ = paradigm.split_by_class(private, context)
                init_generator = context.generator("init_images")
                labels = private.y.to(real.device)
                ids = torch.arange(context.num_classes, device=context.device).repeat_interleave(options.ipc)
                init_images = _initializer(paradigm, real, labels, context, init_generator, ids)
                new_network = paradigm.network_factory(context, context.generator("networks"))
                student, layout, buffer = train_experts(real, labels, new_network, options, context.generator)
                stack.enter_context(buffer)
                syn, syn_y, logits = initial_set(real, init_images, new_network, student, layout, buffer, options, context.info)
            except Exception as exc:  # noqa: BLE001 - this pipeline's own failure, raised for it by the caller
                results[p] = exc
                continue
            structure = structure or (student, layout)
            ready.append((p, syn, syn_y, logits, buffer))
        if ready and structure is not None:
            chosen = [contexts[p] for p, *_ in ready]
            datm = ready[0][3] is not None
            syn, logits, lrs, losses = trajectory_matching_pack(
                torch.stack([entry[1] for entry in ready]),
                torch.stack([entry[2] for entry in ready]),
                torch.stack([entry[3] for entry in ready]) if datm else None,
                [entry[4] for entry in ready],
                PackedConvNet(*structure),
                options,
                [context.generator("matching") for context in chosen],
                [context.generator("dsa") for context in chosen],
            )
            for i, (p, _, syn_y, _, _) in enumerate(ready):
                context = contexts[p]
                record_matching(context.info, options, lrs[i], losses[i])
                y = syn_y if logits is None else F.softmax(logits[i], dim=1).float()
                results[p] = LabeledSet(context.normalizer.denormalize(syn[i]).clamp(0.0, 1.0).float(), y)
    return results  # type: ignore[return-value]


def _initializer(
    paradigm: Any, real: torch.Tensor, labels: torch.Tensor, context: ShadowContext, generator: torch.Generator,
    ids: torch.Tensor,
) -> Callable[[nn.Module | None], tuple[torch.Tensor, torch.Tensor]]:
    """The single run's ``init_images(teacher)`` (``Distill._trajectory_matching``) for one pipeline."""

    def init_images(teacher: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
        return paradigm.initial_images(real, labels, context, generator, teacher), ids

    return init_images
