"""Packs of ``dc`` / ``dsa`` pipelines (gradient matching) run as one batched computation (``execution.pack``).

:func:`raypriv.synth.distill.matching.gradient_matching` on K private sets
at once.  Each outer iteration draws a fresh ConvNet per pipeline; per class
the gradient of the network's loss on a real batch and on the synthetic
images is matched layer by layer; the images take one step; then every
network trains ``inner_loop`` full-batch steps on its own synthetic set.
Here the K networks are one :class:`PackedClassifier`:

* the convolutions are grouped (``groups=K``, the first layer one call per
  pipeline, as :class:`raypriv.synth.distill.packed.PackedConvNet` and for its
  reason), instance norm is ``group_norm`` with one group per channel and the
  K networks' affines side by side, and the K linear heads one batched
  matrix product: no number crosses from one pipeline to another;
* a weight gradient of the grouped network, taken of the *sum* of the K
  pipelines' losses, is the K networks' own gradients side by side (each
  pipeline's loss depends on its own slice only), so one ``autograd.grad``
  gives every pipeline's real and synthetic gradients;
* the matching losses are summed over pipelines before ``backward``: the
  gradient of the sum w.r.t. pipeline p's images is the gradient of p's
  own loss;
* DSA draws come from each pipeline's own ``dsa`` generator in the single
  run's order and are applied with :func:`~raypriv.synth.distill.packed.augment_pack`.

Each pipeline draws its networks (``network_factory``, the same modules),
real batches and DSA parameters from its own generators in the single run's
order.

**Equality with the single run.**  The batched kernels (grouped convolution
backward, ``baddbmm`` for the heads, the double backward through them) sum
in another order than the single run's, so a packed pipeline differs from
its run alone by float32 rounding, and gradient matching amplifies it: the
cosine distance normalises gradients, and every network update feeds the
next matching step.  Measured on digits (2026-12-05, torch CPU, 1 thread,
the defaults: 10 iterations of 10 image steps, real batches of 64; three
pipelines of 200 private images), largest pixel difference (scale 0..1)
between packed and alone after 1, 3 and 10 iterations: dc 1e-7 (one
pipeline 4e-5), 6e-4..2e-2, 4e-2..8e-2; dsa 1e-7..2e-7, 2e-3..8e-3,
4e-2..6e-2.  So the pack equals the single run over its first steps
(tested to 1e-5 after one iteration of 2 image steps; after 10 steps one pipeline of
three already differed by 4e-5) and is equal in law afterwards (the
same algorithm on the same random draws; tested: a packed set stays far
closer to its own single run than to another pipeline's), not bit for bit.

**Speed.**  Measured on 2 shared CPU cores (AMD EPYC, 1 MiB L2 per core,
torch 1 thread, 2026-12-05, load average 5-7 from other jobs), digits
defaults, 8 pipelines: dc 232 models/h in the loop against 192 (K=4) and
213 (K=8); dsa 157 against 194 and 192 (``benchmarks/bench_synthesis.py``;
an interleaved rerun of one iteration gave 12.6 s for the loop against
12.1, 13.2 and 13.8 s for K = 2, 4, 8).  Unlike DM, whose real batches
are embedded without gradients, every matching step here runs a forward,
a backward and (for the synthetic batch) a double backward of each class's
64 real images, and that time is spent in bandwidth-bound passes over
the activations (average pooling, instance norm, ReLU and their backward:
as much time packed as in the loop, torch.profiler) rather than in
per-operation overhead; a pack of K also multiplies the working set by K
(K x 0.5 MB per activation at 8x8), past the core's L2 cache.  So packs
save the per-operation overhead only, which a GPU pays far more of:
:func:`gradient_packable` packs only where one is present.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from raypriv.synth.base import LabeledSet, ShadowContext
from raypriv.synth.distill.common import ConvNet, RealSampler, sample_dsa
from raypriv.synth.distill.options import DistillOptions
from raypriv.synth.distill.packed import augment_pack, draw_and_augment, prepare_pipelines

IMAGE_MOMENTUM = 0.5  # as raypriv.synth.distill.matching (the papers' SGD momentum for the images)


class PackedClassifier:
    """K :class:`~raypriv.synth.distill.common.ConvNet` classifiers (head included) as one grouped network.

    :attr:`params` lists the K networks' parameters in the single
    network's ``parameters()`` order, each tensor the K copies side by side:
    per block the conv weight ``(K * width, c_in, 3, 3)`` and bias
    ``(K * width,)``, the norm's weight and bias ``(K * width,)``; then the
    head's weight ``(K, classes, D)`` and bias ``(K, classes)``.  They are
    leaves that require gradients; :meth:`logits` maps ``(K, N, C, H, W)``
    to ``(K, N, classes)``.
    """

    def __init__(self, nets: list[nn.Module]):
        self.k = len(nets)
        blocks: list[list[nn.Module]] = []
        for net in nets:
            if not isinstance(net, ConvNet):
                raise TypeError(f"PackedClassifier packs ConvNets, not {type(net).__name__}")
            modules = list(net.features)
            blocks.append([m for m in modules if isinstance(m, (nn.Conv2d, nn.GroupNorm))])
        params = []
        for i in range(len(blocks[0])):
            params.append(torch.cat([b[i].weight.detach() for b in blocks]))
            params.append(torch.cat([b[i].bias.detach() for b in blocks]))
        params.append(torch.stack([net.classifier.weight.detach() for net in nets]))
        params.append(torch.stack([net.classifier.bias.detach() for net in nets]))
        self.params = [p.clone().requires_grad_(True) for p in params]
        # After each block's conv, norm and ReLU, whether it pools (ConvNet pools while the maps are at least 2x2).
        self.pools_after: list[bool] = []
        for module in nets[0].features:
            if isinstance(module, nn.Conv2d):
                self.pools_after.append(False)
            elif isinstance(module, nn.AvgPool2d):
                self.pools_after[-1] = True

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(K, N, C, H, W)`` -> ``(K, N, classes)``: every pipeline's images through its own network."""
        k, n, c, h, w = x.shape
        out = x.transpose(0, 1).reshape(n, k * c, h, w)  # pipeline p's channels at p*c .. (p+1)*c
        blocks = (len(self.params) - 2) // 4
        for layer in range(blocks):
            weight, bias, norm_weight, norm_bias = self.params[4 * layer : 4 * layer + 4]
            if layer == 0:
                # A grouped kernel over a few input channels (the image's 1 or 3) rounds differently from the
                # single run's conv (raypriv.synth.distill.packed.PackedConvNet): one call per pipeline.
                cin, width = out.shape[1] // k, weight.shape[0] // k
                out = torch.cat([
                    F.conv2d(out[:, p * cin : (p + 1) * cin], weight[p * width : (p + 1) * width],
                             bias[p * width : (p + 1) * width], padding=1)
                    for p in range(k)
                ], 1)
            else:
                out = F.conv2d(out, weight, bias, padding=1, groups=k)
            out = F.relu(F.group_norm(out, out.shape[1], norm_weight, norm_bias, eps=1e-5))
            if self.pools_after[layer]:
                out = F.avg_pool2d(out, 2)
        features = out.reshape(n, k, -1).transpose(0, 1)  # (K, N, D), each pipeline's ConvNet flatten order
        head_weight, head_bias = self.params[-2:]
        return torch.baddbmm(head_bias.unsqueeze(1), features, head_weight.transpose(1, 2))


def pipeline_losses(logits: torch.Tensor, targets: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Each pipeline's mean cross-entropy, ``(K,)``, from ``logits (K, N, classes)`` and ``targets (K, N)``.

    ``sizes[p]``: pipeline p's real rows (the rest padding, weighted 0);
    None when every pipeline has all N.
    """
    k, n, classes = logits.shape
    per_sample = F.cross_entropy(logits.reshape(k * n, classes), targets.reshape(k * n), reduction="none").view(k, n)
    if sizes is None or all(s == n for s in sizes):
        return per_sample.mean(1)
    mask = torch.zeros(k, n, device=logits.device)
    for p, size in enumerate(sizes):
        mask[p, :size] = 1.0 / size
    return (per_sample * mask).sum(1)


def layerwise_distances(real_grads: list[torch.Tensor], syn_grads: list[torch.Tensor], k: int) -> torch.Tensor:
    """:func:`raypriv.synth.distill.matching.layerwise_distance` of each pipeline, ``(K,)``.

    Packed gradients (:attr:`PackedClassifier.params`' shapes): a conv
    weight's rows are pipeline-major, a head weight has the pipeline first,
    so ``view(K, rows, -1)`` gives each pipeline's ``flatten(1)``.  Biases
    and norm parameters are left out, as in the single run.
    """
    total = torch.zeros(k, device=syn_grads[0].device)
    for g_real, g_syn in zip(real_grads, syn_grads, strict=True):
        if g_real.dim() < 3:
            continue  # a bias or norm parameter ((K * width,); the head's bias is (K, classes))
        rows = g_real.shape[0] // k if g_real.dim() == 4 else g_real.shape[1]
        a, b = g_real.reshape(k, rows, -1), g_syn.reshape(k, rows, -1)
        total = total + (1 - (a * b).sum(2) / (a.norm(dim=2) * b.norm(dim=2) + 1e-6)).sum(1)
    return total


def stack_padded(batches: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
    """``(K, N_max, ...)`` from K batches of possibly different sizes (zero rows after the short ones), and their sizes."""
    sizes = [len(b) for b in batches]
    longest = max(sizes)
    padded = [b if len(b) == longest else torch.cat([b, b.new_zeros(longest - len(b), *b.shape[1:])]) for b in batches]
    return torch.stack(padded), sizes


def gradient_matching_pack(
    syn: torch.Tensor,
    ipc: int,
    samplers: list[RealSampler],
    new_networks: list[Callable[[], nn.Module]],
    options: DistillOptions,
    augment_generators: list[torch.Generator],
) -> tuple[torch.Tensor, list[float]]:
    """DC / DSA (:func:`raypriv.synth.distill.matching.gradient_matching`) for K pipelines at once.

    ``syn``: ``(K, classes * ipc, C, H, W)`` initial images (normalised,
    class-major).  Pipeline p draws its real batches from ``samplers[p]``,
    its networks from ``new_networks[p]`` (ConvNets) and its DSA from
    ``augment_generators[p]``, in the single run's order.  Returns the
    optimised images ``(K, classes * ipc, C, H, W)`` and each pipeline's last
    matching loss (summed class after class, as the single run sums it).
    """
    k, total = syn.shape[:2]
    classes = total // ipc
    device = syn.device
    strategy = options.strategy
    image_shape = tuple(syn.shape[-2:])
    syn = syn.detach().clone().requires_grad_(True)
    optimizer_image = torch.optim.SGD([syn], lr=options.lr_image, momentum=IMAGE_MOMENTUM)
    labels = torch.arange(classes, device=device).repeat_interleave(ipc).expand(k, total)
    per_class_loss = torch.zeros(k, classes)
    for _ in range(options.iterations):
        net = PackedClassifier([new() for new in new_networks])
        for outer in range(options.outer_loop):
            # (i) one image step: every (pipeline, class) batch drawn and augmented, then matched class by class
            real, syn_parts = draw_and_augment(syn, ipc, samplers, options.batch_real, strategy, augment_generators)
            losses = []
            for c in range(classes):
                real_c, sizes = stack_padded([real[p * classes + c] for p in range(k)])
                syn_c = torch.stack([syn_parts[p * classes + c] for p in range(k)])
                target = torch.full(real_c.shape[:2], c, device=device)
                real_grads = torch.autograd.grad(pipeline_losses(net.logits(real_c), target, sizes).sum(), net.params)
                syn_grads = torch.autograd.grad(
                    pipeline_losses(net.logits(syn_c), torch.full((k, ipc), c, device=device)).sum(), net.params,
                    create_graph=True,
                )
                losses.append(layerwise_distances([g.detach() for g in real_grads], syn_grads, k))
            loss = torch.zeros(k, device=device)
            for value in losses:  # class after class, as dc_loss accumulates
                loss = loss + value
            per_class_loss = torch.stack(losses, 1).detach()
            optimizer_image.zero_grad(set_to_none=True)
            loss.sum().backward()  # pipeline p's images get the gradient of its own loss only
            optimizer_image.step()
            if outer == options.outer_loop - 1:
                break
            # (ii) each network trains on its own (fixed) synthetic set: plain SGD, one full batch per step
            images = syn.detach()
            for _ in range(options.inner_loop):
                inputs = images
                if strategy:
                    params = [sample_dsa(strategy, total, image_shape, g) for g in augment_generators]
                    inputs = torch.stack(augment_pack(list(images.unbind(0)), params))
                grads = torch.autograd.grad(pipeline_losses(net.logits(inputs), labels).sum(), net.params)
                with torch.no_grad():
                    for param, grad in zip(net.params, grads, strict=True):
                        param.add_(grad, alpha=-options.lr_net)
    finals = []
    for p in range(k):  # the last step's loss summed as the single run sums it
        value = torch.zeros((), device=device)
        for c in range(classes):
            value = value + per_class_loss[p, c]
        finals.append(float(value))
    return syn.detach(), finals


def gradient_packable(options: DistillOptions) -> bool:
    """Whether a pack runs :func:`gradient_matching_pack`: DC or DSA with the ConvNet, where a GPU is present.

    ``embed_arch: model`` (the audited architecture, BatchNorm frozen from a
    mixed real batch) always runs one by one.  On a CPU-only host the
    batched code is not faster than the loop (module docstring, "Speed") and
    is only equal in law to it, so packs run one by one there, bit for bit
    the single run.  On a GPU the single run is not bit-reproducible either
    (cuDNN's backward kernels), and K pipelines share each kernel launch.
    """
    return options.method in ("dc", "dsa") and options.embed_arch == "convnet" and torch.cuda.is_available()


def synthesize_gradient_pack(
    paradigm: Any, privates: list[LabeledSet], contexts: list[ShadowContext]
) -> list[LabeledSet | Exception]:
    """DC / DSA on K private sets at once (:func:`gradient_matching_pack`).

    ``paradigm`` is the :class:`~raypriv.synth.distill.Distill` whose options
    run.  Each pipeline's checks and initial images run alone; a pipeline
    that fails them gets its own exception, the others are matched together.
    """
    results, ready = prepare_pipelines(paradigm, privates, contexts)
    if ready:
        chosen = [contexts[p] for p, _, _ in ready]
        syn, losses = gradient_matching_pack(
            torch.stack([syn for _, _, syn in ready]),
            paradigm.options.ipc,
            [RealSampler(by_class, contexts[p].generator("real_batches")) for p, by_class, _ in ready],
            [paradigm.network_factory(context, context.generator("networks")) for context in chosen],
            paradigm.options,
            [context.generator("dsa") for context in chosen],
        )
        for (p, _, _), images, loss in zip(ready, syn, losses, strict=True):
            results[p] = paradigm.as_result(images, loss, contexts[p])
    return results  # type: ignore[return-value]
