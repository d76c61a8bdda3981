"""Packs of ``distill`` pipelines run as one batched computation (``execution.pack``).

Every shadow pipeline of a pack runs the *same* algorithm on its *own*
private set.  The per-iteration work of distribution matching is tiny (a
2-block ConvNet on per-class batches of 8x8 images), so one pipeline spends
most of its time in per-operation overhead.  Here K pipelines share each
operation:

* :class:`PackedConvNet` runs K ConvNets (one per pipeline, each with its own
  weights) as one grouped convolution: the K networks' channels side by side,
  ``groups=K``, and instance norm per channel (``GroupNorm`` with one group
  per channel of each pipeline), so no number crosses from one pipeline to
  another;
* :func:`augment_pack` applies every (pipeline, class) DSA draw of an
  iteration in one call per transform (every DSA transform acts on each image
  on its own);
* :func:`distribution_matching_pack` is :func:`raypriv.synth.distill.matching.distribution_matching`
  on K pipelines, the synthetic images of all of them one tensor under one SGD
  (an element-wise update: the same as K optimisers).

Each pipeline draws from its own generators in the order the single run
draws from them, so a packed pipeline's synthetic set equals the same
pipeline run alone up to float32 summation order (``tests/test_packs.py``
checks 1e-4).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from raypriv.synth.base import LabeledSet, ShadowContext
from raypriv.synth.distill.common import DSAParams, RealSampler, apply_dsa, default_depth, sample_dsa
from raypriv.synth.distill.options import DistillOptions

IMAGE_MOMENTUM = 0.5  # as raypriv.synth.distill.matching (the papers' SGD momentum for the images)
# Real images per grouped call, all pipelines together: K * N_chunk about this many keeps a 2-block, 32-channel
# ConvNet's activations on 8x8 images within a CPU core's cache (measured on digits, 2026-12-05).
IMAGES_PER_CALL = 512


def convnet_parameters(
    input_shape: tuple[int, ...], width: int, depth: int | None, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The conv weights and biases of :class:`~raypriv.synth.distill.common.ConvNet` built after ``torch.manual_seed(seed)``.

    Drawn straight from a generator seeded like the global one, in the
    order ``nn.Conv2d.reset_parameters`` draws them (kaiming-uniform with
    a=sqrt(5), i.e. U(±1/sqrt(fan_in)), then the bias from the same range),
    without building the module: the same numbers (checked by
    ``tests/test_packs.py``) at a fraction of the cost.  Instance norm's
    affine starts at (1, 0) and DM never uses the linear head, so only the
    convolutions are returned: ``[(weight (width, c_in, 3, 3), bias (width,))] * depth``.
    """
    generator = torch.Generator().manual_seed(seed)
    channels, h, w = input_shape
    layers = []
    for _ in range(depth or default_depth((h, w))):
        bound = 1.0 / math.sqrt(channels * 9)
        weight = torch.empty(width, channels, 3, 3).uniform_(-bound, bound, generator=generator)
        bias = torch.empty(width).uniform_(-bound, bound, generator=generator)
        layers.append((weight, bias))
        channels = width
    return layers


class PackedConvNet:
    """The feature extractor (everything before the linear head) of K ConvNets, as grouped convolutions.

    ``layers[p]`` are pipeline p's convolutions (:func:`convnet_parameters`);
    the instance norms have their initial affine (1, 0), as a fresh DM
    network's.  :meth:`features` maps ``(K, N, C, H, W)`` to ``(K, N, D)``,
    ``D = width * h * w`` in the single ConvNet's flatten order.
    """

    def __init__(self, layers: list[list[tuple[torch.Tensor, torch.Tensor]]], device: torch.device):
        self.k = len(layers)
        self.weights = [torch.cat([net[i][0] for net in layers]).to(device) for i in range(len(layers[0]))]
        self.biases = [torch.cat([net[i][1] for net in layers]).to(device) for i in range(len(layers[0]))]

    def features(self, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """``(K, N, C, H, W)`` -> ``(K, N, D)``, ``chunk`` images of every pipeline per call (None: all).

        Every image is embedded on its own, so chunking changes nothing but
        speed: on a CPU, a chunk whose activations fit in the cache runs about
        twice as fast per image as the whole pack at once (2026-12-05, see
        benchmarks/RESULTS.md).
        """
        k, n, c, h, w = x.shape
        step = n if chunk is None else max(1, chunk)
        out = x.transpose(0, 1).reshape(n, k * c, h, w)  # pipeline p's channels at p*c .. (p+1)*c
        features = torch.cat([self._features(part, k) for part in out.split(step)])
        return features.reshape(n, k, -1).transpose(0, 1).contiguous()

    def _features(self, out: torch.Tensor, k: int) -> torch.Tensor:
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            if layer == 0:
                # oneDNN's grouped kernel sums a few input channels (the image's 1 or 3) in another order than the
                # single run's conv; with >= 8 channels per group it gives the same bits (measured 2026-12-05,
                # torch 2.x CPU).  DM is chaotic (a 1e-7 change grows to 1e-2 in 100 steps), so bits matter.
                c, w = out.shape[1] // k, weight.shape[0] // k
                out = torch.cat([
                    F.conv2d(out[:, p * c : (p + 1) * c], weight[p * w : (p + 1) * w], bias[p * w : (p + 1) * w], padding=1)
                    for p in range(k)
                ], 1)
            else:
                out = F.conv2d(out, weight, bias, padding=1, groups=k)
            # Instance norm with the fresh affine (1, 0) passed explicitly: the fused kernel rounds differently
            # without one, and the single run's nn.GroupNorm has one.
            ones = torch.ones(out.shape[1], device=out.device)
            out = F.relu(F.group_norm(out, out.shape[1], ones, torch.zeros_like(ones), eps=1e-5))
            if min(out.shape[-2:]) >= 2:
                # Strided adds are faster forward, but each slice's backward fills a zero tensor: the kernel for
                # the (small) synthetic batch that needs gradients, the adds for the real one.
                out = F.avg_pool2d(out, 2) if torch.is_grad_enabled() else average_pool(out)
        return out


def average_pool(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2)`` as four strided adds, in the kernel's order: the same bits, 3-4x faster on a CPU.

    ``(N, C, H, W)`` -> ``(N, C, H // 2, W // 2)`` (measured 2026-12-05 on (64, 256, 8, 8): 1.4 ms against 3.8 ms).
    """
    h, w = (x.shape[-2] // 2) * 2, (x.shape[-1] // 2) * 2
    x = x[..., :h, :w]
    return (x[..., 0::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 4


def augment_pack(batches: list[torch.Tensor], params: list[DSAParams]) -> list[torch.Tensor]:
    """``apply_dsa(batches[i], params[i])`` for every i, in one call per transform.

    Every DSA transform treats each image alone (its own row of ω), so
    concatenating the batches that drew the same transform changes nothing
    but the number of calls.
    """
    out: list[torch.Tensor | None] = [None] * len(batches)
    for transform in sorted({p.transform for p in params}):
        chosen = [i for i, p in enumerate(params) if p.transform == transform]
        sizes = [len(batches[i]) for i in chosen]
        values = {
            key: torch.cat([params[i].values[key][: len(batches[i])] for i in chosen])
            for key in params[chosen[0]].values
        }
        augmented = apply_dsa(torch.cat([batches[i] for i in chosen]), DSAParams(transform, values))
        for i, part in zip(chosen, augmented.split(sizes), strict=True):
            out[i] = part
    return out  # type: ignore[return-value]


def draw_and_augment(
    syn: torch.Tensor,
    ipc: int,
    samplers: list[RealSampler],
    batch_real: int,
    strategy: tuple[str, ...],
    augment_generators: list[torch.Generator],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One matching step's real batches and synthetic blocks per (pipeline, class), pipeline-major, DSA applied.

    ``syn``: ``(K, classes * ipc, C, H, W)``.  Pipeline p draws class c's
    real batch from ``samplers[p]`` and then, with a DSA ``strategy``, one
    DSA draw from ``augment_generators[p]`` that the batch and the class's
    synthetic block share: the single run's order (DM's and DC/DSA's).
    Returns ``K * classes`` real batches and ``K * classes`` blocks
    ``(ipc, C, H, W)``.
    """
    k, classes = len(samplers), syn.shape[1] // ipc
    real, dsa = [], []
    syn_parts = list(syn.view(k * classes, ipc, *syn.shape[2:]).unbind(0))
    for p in range(k):
        for c in range(classes):
            real_c = samplers[p].batch(c, batch_real)
            real.append(real_c)
            if strategy:
                dsa.append(sample_dsa(strategy, max(len(real_c), ipc), tuple(real_c.shape[-2:]), augment_generators[p]))
    if strategy:
        augmented = augment_pack(real + syn_parts, dsa + dsa)
        real, syn_parts = augmented[: len(real)], augmented[len(real) :]
    return real, syn_parts


def distribution_matching_pack(
    syn: torch.Tensor,
    ipc: int,
    samplers: list[RealSampler],
    network_generators: list[torch.Generator],
    options: DistillOptions,
    augment_generators: list[torch.Generator],
    input_shape: tuple[int, ...],
) -> tuple[torch.Tensor, list[float]]:
    """DM (:func:`raypriv.synth.distill.matching.distribution_matching`) for K pipelines at once.

    ``syn``: ``(K, classes * ipc, C, H, W)`` initial images (normalised,
    class-major); pipeline p draws its real batches from ``samplers[p]``,
    its embedding networks from ``network_generators[p]`` and its DSA from
    ``augment_generators[p]``, in the single run's order.  Only the
    ``convnet`` embedding is packed (the caller runs ``embed_arch: model``
    one by one).  Returns the optimised images ``(K, classes * ipc, C, H, W)``
    and each pipeline's last loss.
    """
    k, total = syn.shape[:2]
    classes = total // ipc
    device = syn.device
    strategy = options.strategy
    syn = syn.detach().clone().requires_grad_(True)
    optimizer = torch.optim.SGD([syn], lr=options.lr_image, momentum=IMAGE_MOMENTUM)
    target = embedded = torch.zeros(k, classes, 1, device=device)
    for _ in range(options.iterations):
        seeds = [int(torch.randint(2**62, (1,), generator=g)) for g in network_generators]
        net = PackedConvNet(
            [convnet_parameters(input_shape, options.embed_width, options.embed_depth, s) for s in seeds], device
        )
        real, syn_parts = draw_and_augment(syn, ipc, samplers, options.batch_real, strategy, augment_generators)
        sizes = [len(r) for r in real]
        syn_aug = torch.cat(syn_parts).view(k, total, *syn.shape[2:])
        # Real batches: each pipeline's classes side by side, padded to the longest pipeline (images are
        # embedded independently, so the zero rows change nothing and are left out of the means).
        per_pipeline = [sum(sizes[p * classes : (p + 1) * classes]) for p in range(k)]
        longest = max(per_pipeline)
        stacked = []
        for p in range(k):
            parts = real[p * classes : (p + 1) * classes]
            if per_pipeline[p] < longest:
                parts = [*parts, parts[0].new_zeros(longest - per_pipeline[p], *parts[0].shape[1:])]
            stacked.append(torch.cat(parts))
        # Per-class means as the single run takes them (.mean(0) of a contiguous block): the same bits.
        with torch.no_grad():
            real_embedded = net.features(torch.stack(stacked), max(1, IMAGES_PER_CALL // k))
            starts = [[sum(sizes[p * classes : p * classes + c]) for c in range(classes)] for p in range(k)]
            target = torch.stack([
                torch.stack([real_embedded[p, a : a + n].mean(0) for a, n in zip(starts[p], sizes[p * classes :], strict=False)])
                for p in range(k)
            ])  # (K, classes, D)
        syn_embedded = net.features(syn_aug)
        embedded = syn_embedded.view(k, classes, ipc, -1).mean(2)  # the same reduction as each block's .mean(0)
        per_class = (target - embedded).pow(2).sum(2)  # (K, classes)
        optimizer.zero_grad(set_to_none=True)
        per_class.sum().backward()  # pipeline p's images get the gradient of its own loss only
        optimizer.step()
    with torch.no_grad():  # the last step's loss, reduced class after class exactly as the single run reduces it
        difference = target - embedded.detach()
        losses = []
        for p in range(k):
            loss = torch.zeros((), device=device)
            for c in range(classes):
                loss = loss + difference[p, c].pow(2).sum()
            losses.append(loss)
    return syn.detach(), [float(v) for v in losses]


def dm_packable(options: DistillOptions) -> bool:
    """Whether :func:`distribution_matching_pack` runs these options: DM with the ConvNet embedding and ``ipc >= 2``.

    With ``ipc: 1`` the single run embeds each class's one synthetic image
    alone, and oneDNN convolves a batch of one with another kernel whose
    rounding no grouped call reproduces (measured 2026-12-05: a 1-ulp
    difference in the second convolution).  DM amplifies such differences
    (a 1e-7 change of the starting images grows to 5e-2 in 300 steps), so
    ``ipc: 1`` runs one by one, where the pack would only be equal in law.
    """
    return options.method == "dm" and options.embed_arch == "convnet" and options.ipc >= 2


def dm_pack_memory_bytes(options: DistillOptions, input_shape: tuple[int, ...], num_classes: int, private_size: int) -> int:
    """DM's working memory per pipeline in bytes: its private set (normalised copy, per-class split), the real
    batches and their DSA copies, the synthetic images with their momentum, and the embedding activations of
    one chunk, ~8 float32 copies each, rounded up generously (also the dc/dsa estimate: gradient matching holds
    one class's real graph and the synthetic graph at a time)."""
    pixels = math.prod(input_shape)
    images = 3 * private_size + num_classes * (3 * options.batch_real + 8 * options.ipc)
    activations = 8 * num_classes * (options.batch_real + options.ipc) * options.embed_width * pixels
    return 4 * (images * pixels + activations)


def prepare_pipelines(
    paradigm: Any, privates: list[LabeledSet], contexts: list[ShadowContext]
) -> tuple[list[LabeledSet | Exception | None], list[tuple[int, list[torch.Tensor], torch.Tensor]]]:
    """Each pipeline's checks and initial images, alone, for DM and DC/DSA packs.

    Returns one entry per pipeline (its exception where the checks or the
    initial images failed, else None, to be filled by the runner) and the
    pipelines that are ready: ``(index, real images by class, initial images
    (classes * ipc, C, H, W))``.
    """
    results: list[LabeledSet | Exception | None] = [None] * len(privates)
    ready = []
    for p, (private, context) in enumerate(zip(privates, contexts, strict=True)):
        try:
            real, by_class = paradigm.split_by_class(private, context)
            syn = paradigm.initial_images(real, private.y, context, context.generator("init_images"))
        except Exception as exc:  # noqa: BLE001 - this pipeline's own failure, raised for it by the caller
            results[p] = exc
            continue
        ready.append((p, by_class, syn))
    return results, ready


def synthesize_dm_pack(paradigm: Any, privates: list[LabeledSet], contexts: list[ShadowContext]) -> list[LabeledSet | Exception]:
    """DM on K private sets at once (:func:`distribution_matching_pack`).

    ``paradigm`` is the :class:`~raypriv.synth.distill.Distill` whose options run.

    Each pipeline's checks and initial images run alone; a pipeline that
    fails them gets its exception, the others are matched together.
    """
    results, ready = prepare_pipelines(paradigm, privates, contexts)
    if ready:
        chosen = [contexts[p] for p, _, _ in ready]
        samplers = [RealSampler(by_class, contexts[p].generator("real_batches")) for p, by_class, _ in ready]
        syn, losses = distribution_matching_pack(
            torch.stack([syn for _, _, syn in ready]),
            paradigm.options.ipc,
            samplers,
            [context.generator("networks") for context in chosen],
            paradigm.options,
            [context.generator("dsa") for context in chosen],
            tuple(chosen[0].input_shape),
        )
        for (p, _, _), images, loss in zip(ready, syn, losses, strict=True):
            results[p] = paradigm.as_result(images, loss, contexts[p])
    return results  # type: ignore[return-value]
