"""DeepInversion's pieces: the BatchNorm-statistics loss, the image priors and the input optimisation.

Yin et al., "Dreaming to Distill: Data-free Knowledge Transfer via
DeepInversion", CVPR 2020 (the method as a whole, its departures and its
paradigm are described in :mod:`raypriv.synth.dfkd`).  The single run
(:func:`synthesize_deepinversion`) and the pack
(:mod:`raypriv.synth.dfkd_packed`) both build on what is here; neither
module imports the paradigm's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raypriv.errors import RayprivError
from raypriv.synth.base import ShadowContext
from raypriv.synth.options import DFKDOptions


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
