"""Packs of ``dfkd`` DeepInversion pipelines run as one batched input optimisation (``execution.pack``).

A single DeepInversion run (:func:`raypriv.synth.deepinversion.synthesize_deepinversion`)
optimises its ``n_synthetic`` inputs as ``n_synthetic // batch_size``
independent batches, one after the other, each with its own Adam through the
same frozen teacher.  Every quantity of one batch's loss (cross-entropy, the
BatchNorm statistics of the batch, the image priors) depends on that batch
alone, and Adam is element-wise, so the batches of one pipeline, and the
batches of K pipelines, can be optimised as one tensor under one Adam:

* the inputs of every (pipeline, batch) are one leaf tensor; each step makes
  one forward pass per pipeline through its own teacher with all its batches
  at once, and one backward pass for the whole pack;
* :class:`PackedStatistics` computes R_feature per batch (the batch mean and
  variance of every BatchNorm layer's input, over the batch's own inputs);
* cross-entropy, total variation and the L2 prior are reduced per batch.

Why not one grouped network for the K teachers: on a CPU, a DeepInversion
step is not overhead-bound.  Profiled on digits (cnn_small, batches of 128,
one thread, 2026-12-05), the single run spends 17.1 ms of CPU per (batch,
step) and this pack 14.1 ms (under the profiler; without it, 10.1 against
8.6 s of CPU per pipeline's DeepInversion at K = 8, 1.18x): in both, about a quarter goes to ``var`` (the
BatchNorm statistics; a scalar double-precision Welford kernel), a third to
the convolutions, a tenth to max-pooling, and their cost is per input.  A
grouped teacher would save little, and the per-pipeline teacher keeps any
architecture.  Faster formulations of those kernels (a two-pass variance, a
strided max-pool) round differently or save little (an exact max-pool
measured 2% of a step), and DeepInversion cannot afford other rounding
(below), so the pack gains only the per-operation overhead (about 1.2x).

**Bit for bit.**  DeepInversion is chaotic: a change of 1e-7 in the initial
noise grows to 0.03 in the final pixels after 50 steps (measured on digits,
2026-12-05).  So every operation here is one that gives the single run's bits:
the convolutions of a pipeline's batches stacked along the batch dimension,
the per-batch reductions (``mean``, ``var`` and ``vector_norm`` over the same
elements), a per-pipeline ``split`` (one gradient node, so the gradients of
the inputs are summed in the single run's order), the losses' gradients
(``sum`` passes ones) and the element-wise Adam.  ``tests/test_packs_dfkd.py``
checks that a packed pipeline's set, soft labels and BatchNorm-loss record are
those of the same pipeline alone (cnn_small and mlp teachers; the digits
benchmark at K = 4 and 8 measured a max abs diff of 0).  Each pipeline draws its initial noise and
its jitter and flip draws from its own ``deepinversion`` generator, in the
single run's order (all drawn first: no draw depends on the optimisation).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from raypriv.errors import RayprivError
from raypriv.synth.base import ShadowContext
from raypriv.synth.deepinversion import BatchNormStatistics
from raypriv.synth.options import DFKDOptions

# Input values per pipeline in one teacher call (at least one batch): 512 8x8 digits (4 batches of 128) ran
# DeepInversion 9% faster per input than 128 at a time, and 2,048 no faster (measured on digits, 2026-12-05);
# larger inputs (CIFAR) get one batch per call, the single run's own call.
VALUES_PER_CALL = 512 * 64


class PackedStatistics(BatchNormStatistics):
    """Forward hooks that compute R_feature per batch, for a network fed ``batches`` batches of equal size at once.

    The single run's :class:`raypriv.synth.deepinversion.BatchNormStatistics` reduces a
    layer's input ``(n, C, ...)`` over every dimension but the channel; here
    the input ``(batches * n, C, ...)`` is viewed as ``(batches, n, C, ...)``
    and reduced over the same elements of each batch, which gives the same
    bits.  :meth:`pop` returns the per-batch losses, shape ``(batches,)``.
    """

    def __init__(self, network: nn.Module, batches: int):
        self.batches = batches  # set before the hooks are registered: they read it
        super().__init__(network)

    def _hook(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0]
        x = x.reshape(self.batches, len(x) // self.batches, *x.shape[1:])
        dims = [d for d in range(1, x.ndim) if d != 2]  # all but the batch and channel dimensions
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        self.losses.append(
            torch.linalg.vector_norm(mean - layer.running_mean, 2, dim=1)
            + torch.linalg.vector_norm(var - layer.running_var, 2, dim=1)
        )


def inputs_per_call(input_shape: tuple[int, ...]) -> int:
    """How many inputs of ``input_shape`` one pipeline sends through its teacher at once (``VALUES_PER_CALL`` values;
    a chunk always holds at least one whole batch)."""
    return max(1, VALUES_PER_CALL // max(1, math.prod(input_shape)))


def batch_sizes(n_synthetic: int, batch_size: int) -> list[int]:
    """The sizes of the single run's batches (``torch.tensor_split`` of ``n_synthetic`` into nearly equal parts)."""
    n_batches = max(1, n_synthetic // batch_size)
    return [n_synthetic // n_batches + (1 if b < n_synthetic % n_batches else 0) for b in range(n_batches)]


def draw(options: DFKDOptions, context: ShadowContext, sizes: list[int]) -> list[tuple[torch.Tensor, list]]:
    """Every random draw of one pipeline, in the single run's order: per batch, its initial noise ``(n, *input_shape)``
    and per step its jitter shifts ``(dy, dx)`` (or None) and flip (bool)."""
    rng = context.generator("deepinversion")
    images = len(context.input_shape) == 3
    drawn = []
    for size in sizes:
        x = torch.randn(size, *context.input_shape, generator=rng)
        steps = []
        for _ in range(options.iterations):
            shifts = None
            if images and options.jitter > 0:
                shifts = tuple(torch.randint(-options.jitter, options.jitter + 1, (2,), generator=rng).tolist())
            flip = bool(images and options.flip and torch.rand((), generator=rng).item() < 0.5)
            steps.append((shifts, flip))
        drawn.append((x, steps))
    return drawn


def total_variation_per_batch(view: torch.Tensor, batches: int) -> torch.Tensor:
    """:func:`raypriv.synth.deepinversion.total_variation` of each of ``batches`` equal batches of ``view``
    ``(batches * n, C, H, W)``; returns ``(batches,)``."""

    def norms(difference: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(difference.reshape(batches, -1), 2, dim=1)

    return (
        norms(view[:, :, :, :-1] - view[:, :, :, 1:])
        + norms(view[:, :, :-1, :] - view[:, :, 1:, :])
        + norms(view[:, :, 1:, :-1] - view[:, :, :-1, 1:])
        + norms(view[:, :, :-1, :-1] - view[:, :, 1:, 1:])
    )


def optimise_chunk(
    teachers: list[nn.Module],
    starts: list[list[torch.Tensor]],
    steps: list[list[list]],
    targets: torch.Tensor,
    options: DFKDOptions,
    context: ShadowContext,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimise B batches of n inputs for each of K pipelines at once, as K * B single runs of ``deep_inversion``.

    ``starts[p][b]`` is pipeline p's initial noise for its batch b ``(n, *input_shape)``,
    ``steps[p][b]`` its per-step (shifts, flip) draws, ``targets`` the classes
    of the B batches one after the other ``(B * n,)`` (the same for every pipeline).  Returns the
    inputs ``(K, B, n, *input_shape)`` (pixel scale for images) and the unweighted R_feature loss at
    the first and at the last step ``(2, K, B)``.
    """
    device = context.device
    k, b, n = len(teachers), len(starts[0]), len(starts[0][0])
    shape = context.input_shape
    images = len(shape) == 3
    x = torch.cat([s for pipeline in starts for s in pipeline]).to(device)  # (K * B * n, *shape), pipeline-major
    if images:  # as deep_inversion: start and stay inside the valid pixel range, in normalised space
        low = context.normalizer(torch.zeros(1, *shape, device=device))
        high = context.normalizer(torch.ones(1, *shape, device=device))
        x = torch.maximum(torch.minimum(x, high), low)
    x.requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=options.lr)
    statistics = [PackedStatistics(teacher, b) for teacher in teachers]
    batch_targets = targets.to(device)
    first = last = None
    try:
        for step in range(options.iterations):
            view = x
            draws = [steps[p][i][step] for p in range(k) for i in range(b)]
            if images and options.jitter > 0:
                parts = zip(view.split(n), draws, strict=True)
                view = torch.cat([torch.roll(part, shifts=d[0], dims=(2, 3)) for part, d in parts])
            if images and options.flip:
                parts = zip(view.split(n), draws, strict=True)
                view = torch.cat([part.flip(-1) if d[1] else part for part, d in parts])
            losses, bn_losses = [], []
            for teacher, stats, part in zip(teachers, statistics, view.split(b * n), strict=True):
                logits = teacher(part)
                bn_loss = stats.pop()
                ce = F.cross_entropy(logits, batch_targets, reduction="none").view(b, n).mean(1)
                losses.append(ce + options.bn_weight * bn_loss)
                bn_losses.append(bn_loss.detach())
            loss = torch.cat(losses)
            if images:
                loss = loss + options.tv_weight * total_variation_per_batch(view, k * b)
            loss = loss + options.l2_weight * torch.linalg.vector_norm(view.reshape(k * b, -1), 2, dim=1)
            optimizer.zero_grad(set_to_none=True)
            loss.sum().backward()  # each batch's loss gets gradient 1, as a single run's scalar loss
            optimizer.step()
            if images:
                with torch.no_grad():
                    x.copy_(torch.maximum(torch.minimum(x, high), low))
            if step == 0:
                first = torch.stack(bn_losses)
            last = torch.stack(bn_losses)
    finally:
        for stats in statistics:
            stats.close()
    out = context.normalizer.denormalize(x.detach())
    out = out.clamp_(0.0, 1.0) if images else out
    return out.view(k, b, n, *shape), torch.stack([first, last])


def synthesize_deepinversion_pack(
    teachers: list[nn.Module], options: DFKDOptions, contexts: list[ShadowContext]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`raypriv.synth.deepinversion.synthesize_deepinversion` for K pipelines (``teachers[p]`` with ``contexts[p]``).

    Returns each pipeline's ``(x (n_synthetic, *input_shape), targets (n_synthetic,))`` and fills its
    ``context.info`` (``bn_loss_start``, ``bn_loss_end``) as the single run does.  The contexts share one
    worker (input shape, class count, normaliser, device).  Consecutive batches of equal size are optimised
    together, :func:`inputs_per_call` inputs per pipeline at a time (at least one batch).
    """
    context = contexts[0]
    num_classes = context.num_classes
    if options.n_synthetic < num_classes:
        raise RayprivError(
            f"paradigm_options.dfkd.n_synthetic={options.n_synthetic} is fewer than the {num_classes} classes; "
            f"give at least {num_classes} so every class gets inputs"
        )
    targets = torch.arange(options.n_synthetic) % num_classes
    sizes = batch_sizes(options.n_synthetic, options.batch_size)
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    drawn = [draw(options, c, sizes) for c in contexts]
    per_call = inputs_per_call(context.input_shape)
    xs: list[list[torch.Tensor | None]] = [[None] * len(sizes) for _ in contexts]
    curves = torch.zeros(2, len(contexts), len(sizes), dtype=torch.float32)
    i = 0
    while i < len(sizes):  # runs of consecutive batches of one size, a chunk at a time
        n = sizes[i]
        chunk = [i]
        while chunk[-1] + 1 < len(sizes) and sizes[chunk[-1] + 1] == n and (len(chunk) + 1) * n <= per_call:
            chunk.append(chunk[-1] + 1)
        out, curve = optimise_chunk(
            teachers,
            [[d[j][0] for j in chunk] for d in drawn],
            [[d[j][1] for j in chunk] for d in drawn],
            torch.cat([targets[offsets[j] : offsets[j] + n] for j in chunk]),
            options,
            context,
        )
        for p in range(len(contexts)):
            for c, j in enumerate(chunk):
                xs[p][j] = out[p, c]
        curves[:, :, chunk] = curve.cpu()
        i = chunk[-1] + 1
    results = []
    for p, c in enumerate(contexts):
        first, last = curves[0, p].tolist(), curves[1, p].tolist()
        c.info["bn_loss_start"] = sum(first) / len(first)
        c.info["bn_loss_end"] = sum(last) / len(last)
        results.append((torch.cat(xs[p]).float(), targets.to(c.device)))
    return results
