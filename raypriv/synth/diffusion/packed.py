"""Packs of diffusion UNet pipelines: K denoisers trained and sampled as one batched computation (``execution.pack``).

Every shadow pipeline of a pack trains the *same* small class-conditional
``UNet2DModel`` (:mod:`raypriv.synth.diffusion.unet`) on its *own* private
set, then samples its synthetic set.  Here the K networks' parameters are
stacked (``torch.func.stack_module_state``) and every network evaluation of
the K pipelines is one ``vmap`` over ``functional_call``:

* training (:func:`train_denoisers_pack`): one forward and backward of the K
  UNets per step (the loss of pipeline p depends on its parameters only, so
  the gradient of the summed losses is each pipeline's own gradient), one
  ``torch.optim.Adam`` over the stacked tensors (Adam is element-wise and the
  K pipelines share the learning-rate schedule and step count, so this is K
  optimisers), and one ``EMAModel`` over them (element-wise too);
* sampling (:func:`sample_images_pack`): chunk j of every pipeline denoised
  together, each step one vmapped network call (the conditional and the
  null-class prediction in one pass under classifier-free guidance), then
  each pipeline's scheduler step on its own rows with its own generator.

Each pipeline draws from its own ``(seed, model id)`` generators in the
order the single run draws from them: its initial weights (``init``), batch
indices, timesteps, noise and label dropout (``train``), sampling noise
(``sample``).  Pipelines whose private sets hold fewer images than
``batch_size`` draw smaller batches: they train in a sub-pack of their own
batch size.  Sampling pads a pipeline's last chunk to the pack's longest
(the padded rows are never returned: every image is denoised on its own).

**Equality with the single run.**  ``vmap`` runs the K networks as grouped
convolutions and batched matrix products, which sum in another order than
the single network's kernels, so a packed pipeline is not bit for bit its
single run.  One step's losses agree to 1e-7 relative and its gradients to
1e-7 of their scale; a sampling step's images to about 1e-6.  Adam's first
step, ``lr * g / (|g| + 1e-8)``, turns the rounding of a gradient element
near zero into a weight difference of up to a fraction of ``lr`` (measured
5e-4 on a tiny UNet), but the differences do not grow with training: the
learning rate decays to zero and the EMA averages them out.  Measured on
digits with the default options (2026-12-05, CPU, 2 pipelines): after 1,
10, 100 and 1,000 training steps the weights differ by at most 1.1e-4,
1.0e-4, 2.7e-5 and 6.1e-5, and the final synthetic sets (pixel scale 0..1,
25 DDIM steps) by 2.7e-4, 7.6e-5, 8.5e-6 and 7.1e-6.  So the default
pipeline's set equals the single run's to 1e-5 (8 models in packs of 4 and
8: 9.1e-6, ``benchmarks/bench_synthesis.py``), but nothing
bounds that in general: a run with few steps, or a sampler that amplifies
differences, may differ by a few 1e-4, and then a packed set is the single
run's only in law (the same labels, class balance and recipe).
``tests/test_packs_diffusion.py`` checks a step's gradients and a sampling
step to 1e-5, a first training step to 1e-5 where the gradient is not near
zero, and short whole runs to 1e-3.

Everything in ``UNet2DModel``'s default blocks runs under ``vmap``
(convolutions, GroupNorm, the SiLU ResNet blocks, the sinusoidal time and
class embeddings, up/down-sampling).  The middle block's self-attention
(``F.scaled_dot_product_attention``) has no batching rule for the CPU flash
kernel in torch 2.x: ``vmap`` falls back to a loop over the K pipelines
there (torch's warning about it is silenced here); that is one op per
block, and its results are right.

**Speed.**  On a CPU a pack is no faster than the loop: digits, default
options, 16 models, 1 thread, 2026-12-06 (quiet cores): 44 models/h in the
loop, 40 in packs of 4 (0.92x), 48 of 8 (1.10x) and 46 of 16 (1.06x),
within the 0.91-1.10x that runs of identical code spread over there; the
sets 1.4e-5 apart (``benchmarks/bench_synthesis.py``).  The default UNet is
compute-bound there, not overhead-bound: in a single pipeline's training
step (batch 128; training is about 90% of a pipeline) the convolutions'
forward and backward kernels take two thirds of the time and all kernels
over 80%, so stacking K pipelines leaves at most ~20% (per-op overhead,
Adam's small ops) to save, and vmap's grouped convolutions and batched
GroupNorm cost about that much more per pipeline.  Packs should pay where
kernels are short next to their launch cost (a GPU; not measured).
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from raypriv.synth.base import LabeledSet, ShadowContext
from raypriv.synth.diffusion.options import DiffusionOptions
from raypriv.synth.diffusion.unet import (
    SAMPLE_CHUNK,
    UNetPipeline,
    check_private_images,
    denoiser_lr_factor,
    finish_unet_pipeline,
    make_noise_scheduler,
    prepare_unet_pipeline,
    sample_labels,
)

# Images per vmapped sampling call on a CPU, all pipelines together (every image is denoised on its own, so the split
# changes only speed and summation order).
IMAGES_PER_CALL = 512


def unet_packable(options: DiffusionOptions) -> bool:
    """Whether :func:`synthesize_unet_pack` runs these options: the UNet trained from scratch and sampled from noise.

    Stable Diffusion (another pipeline), a pretrained UNet (whose config may
    use dropout, drawn from torch's global generator) and img2img run one
    pipeline at a time.
    """
    return options.pipeline == "unet" and options.pretrained_path is None and options.generation == "sample"


def stacked_unets(unets: list[torch.nn.Module]) -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    """The K networks' parameters stacked, ``name -> (K, *shape)`` leaf tensors, and a weightless copy to call them with.

    UNet2DModel has no buffers (its time embedding is computed), so the
    parameters are all its state.
    """
    from torch.func import stack_module_state

    params, buffers = stack_module_state(unets)
    if buffers:
        raise ValueError(f"a packed UNet has no buffers, but these have {sorted(buffers)}")
    return params, copy.deepcopy(unets[0]).to("meta")


def unet_call(base: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """``f(params, x, t, y)``: one network's noise prediction ``(B, C, H, W)``, to be vmapped over the pack."""
    from torch.func import functional_call

    def call(params: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return functional_call(base, params, (x, t), {"class_labels": y, "return_dict": False})[0]

    return call


def vmapped(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``vmap(function)``, quiet about the attention kernel's missing batching rule (see the module docstring)."""
    from torch.func import vmap

    batched = vmap(function)

    def run(*args: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        with quiet_batching_fallback():
            return batched(*args)

    return run


@contextlib.contextmanager
def quiet_batching_fallback() -> Iterator[None]:
    """Silence torch's warning that an op (the CPU attention kernel, forward and backward) runs vmap's fallback loop."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not yet implemented the batching rule.*")
        yield


def denoising_losses(base: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """``f(params, noisy, t, y, noise)``: the K pipelines' denoising losses ``(K,)``, each its network's MSE to its noise.

    ``params``: stacked ``name -> (K, ...)``; ``noisy`` and ``noise``:
    ``(K, B, C, H, W)``; ``t`` and ``y``: ``(K, B)``.
    """
    call = unet_call(base)
    return vmapped(lambda p, x, t, y, noise: F.mse_loss(call(p, x, t, y), noise))


def train_denoisers_pack(
    unets: list[torch.nn.Module],
    x0s: list[torch.Tensor],
    labels: list[torch.Tensor],
    options: DiffusionOptions,
    null_class: int | None,
    generators: list[torch.Generator],
) -> tuple[dict[str, torch.Tensor], torch.nn.Module, list[list[float]]]:
    """:func:`raypriv.synth.diffusion.unet.train_denoiser` on K pipelines at once.

    ``x0s[p]``: pipeline p's images ``(N_p, C, H, W)`` in [-1, 1],
    ``labels[p]``: ``(N_p,)``; every ``min(batch_size, N_p)`` must be equal
    (the caller groups pipelines by it).  Pipeline p draws its batches,
    timesteps, noise and label dropout from ``generators[p]`` in the single
    run's order.  Returns the trained (EMA) parameters stacked ``name -> (K, ...)``,
    the weightless network to call them with, and each pipeline's loss per step.
    """
    from diffusers.training_utils import EMAModel

    k, device = len(unets), x0s[0].device
    sizes = [len(x) for x in x0s]
    batch = min(options.batch_size, sizes[0])
    if any(min(options.batch_size, n) != batch for n in sizes):
        raise ValueError(f"a training pack needs one batch size, but the private sets hold {sizes} images")
    scheduler = make_noise_scheduler(options)
    params, base = stacked_unets(unets)
    tensors = list(params.values())
    optimizer = torch.optim.Adam(tensors, lr=options.lr)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: denoiser_lr_factor(step, options))
    ema = EMAModel(tensors, decay=options.ema_decay, foreach=True) if options.ema_decay > 0 else None
    losses_of = denoising_losses(base)

    losses = []
    base.train()
    for _ in range(options.train_steps):
        noisy, timesteps, classes, noises = [], [], [], []
        for p in range(k):  # pipeline p's draws, as train_denoiser draws them
            generator = generators[p]
            index = torch.randint(0, sizes[p], (batch,), generator=generator).to(device)
            t = torch.randint(0, options.num_train_timesteps, (batch,), generator=generator).to(device)
            noise = torch.randn((batch, *x0s[p].shape[1:]), generator=generator).to(device)
            y = labels[p][index]
            if null_class is not None:
                drop = (torch.rand(batch, generator=generator) < options.label_dropout).to(device)
                y = torch.where(drop, torch.full_like(y, null_class), y)
            noisy.append(scheduler.add_noise(x0s[p][index], noise, t))
            timesteps.append(t)
            classes.append(y)
            noises.append(noise)
        loss = losses_of(params, torch.stack(noisy), torch.stack(timesteps), torch.stack(classes), torch.stack(noises))
        optimizer.zero_grad(set_to_none=True)
        with quiet_batching_fallback():
            loss.sum().backward()  # pipeline p's parameters get the gradient of its own loss only
        optimizer.step()
        lr_schedule.step()
        if ema is not None:
            ema.step(tensors)
        losses.append(loss.detach())
    if ema is not None:
        ema.copy_to(tensors)  # Ho et al. sample from the averaged weights
    per_step = torch.stack(losses).T.tolist() if losses else [[] for _ in range(k)]
    return {name: value.detach() for name, value in params.items()}, base, per_step


@torch.no_grad()
def sample_images_pack(
    base: torch.nn.Module,
    params: dict[str, torch.Tensor],
    labels: list[torch.Tensor],
    shape: tuple[int, int, int],
    options: DiffusionOptions,
    null_class: int | None,
    generators: list[torch.Generator],
) -> list[torch.Tensor]:
    """:func:`raypriv.synth.diffusion.unet.sample_images` on K pipelines at once: pipeline p's images ``(M_p, *shape)``.

    ``params``: the K networks' parameters stacked ``name -> (K, ...)``;
    ``labels[p]``: pipeline p's labels ``(M_p,)``.  Pipeline p's samples are
    made in its own chunks of :data:`~raypriv.synth.diffusion.unet.SAMPLE_CHUNK`,
    chunk j of every pipeline together, each drawing its starting noise (and
    DDPM's posterior noise) from ``generators[p]`` in the single run's order.
    """
    from diffusers import DDIMScheduler

    k, device = len(labels), labels[0].device
    scheduler = make_noise_scheduler(options)
    if options.sampler == "ddim":
        scheduler = DDIMScheduler.from_config(scheduler.config)
    scheduler.set_timesteps(options.sample_steps)
    base.eval()
    call = unet_call(base)
    if options.guidance_scale != 1.0:
        scale = options.guidance_scale

        def predict(p: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            # One pass for the conditional and the null-class prediction, as the single run.
            both = call(p, torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_class)]))
            eps_y, eps_null = both.chunk(2)
            return eps_null + scale * (eps_y - eps_null)
    else:
        predict = call
    predict_pack = vmapped(predict)

    chunks = [list(y.split(SAMPLE_CHUNK)) for y in labels]  # the single run's chunks
    images: list[list[torch.Tensor]] = [[] for _ in range(k)]
    for j in range(max(len(c) for c in chunks)):
        active = [p for p in range(k) if j < len(chunks[p])]
        ys = [chunks[p][j] for p in active]
        lengths = [len(y) for y in ys]
        rows = max(lengths)
        xs = [torch.randn((n, *shape), generator=generators[p]).to(device) for p, n in zip(active, lengths, strict=True)]
        # Pad to the longest chunk: the padded rows (zeros, class 0) are denoised on their own and dropped.
        x = torch.stack([torch.cat([v, v.new_zeros(rows - len(v), *shape)]) for v in xs])
        y = torch.stack([torch.cat([v, v.new_zeros(rows - len(v))]) for v in ys])
        chosen = params if len(active) == k else {name: value[active] for name, value in params.items()}
        # On a CPU, a few hundred images per call keep the activations in the cache: twice as fast as the whole
        # chunk of every pipeline at once (measured 2026-12-05, K = 8: 1.1 s against 2.0 s per step of 8 x 512).
        step = max(1, IMAGES_PER_CALL // len(active)) if device.type == "cpu" else rows
        for t in scheduler.timesteps:
            timestep = torch.full((len(active), rows), int(t), device=device, dtype=torch.long)
            eps = torch.cat([
                predict_pack(chosen, x[:, a : a + step], timestep[:, a : a + step], y[:, a : a + step])
                for a in range(0, rows, step)
            ], 1)
            # Each pipeline's step on its own rows: DDPM draws its posterior noise from that pipeline's generator.
            x = torch.stack([
                torch.cat([scheduler.step(eps[i, :n], t, x[i, :n], generator=generators[p]).prev_sample, x[i, n:]])
                for i, (p, n) in enumerate(zip(active, lengths, strict=True))
            ])
        for i, (p, n) in enumerate(zip(active, lengths, strict=True)):
            images[p].append(x[i, :n])
    return [torch.cat(parts) for parts in images]


def synthesize_unet_pack(
    options: DiffusionOptions, privates: list[LabeledSet], contexts: list[ShadowContext]
) -> list[LabeledSet | Exception]:
    """K UNet pipelines (``privates[p]`` with ``contexts[p]``): each one's synthetic set, or its own exception.

    Each pipeline's checks and network initialisation run alone, as in the
    single run; one that fails them gets its exception, and the others
    are trained (in sub-packs of one batch size and image shape) and
    sampled together.
    """
    results: list[LabeledSet | Exception | None] = [None] * len(privates)
    ready: list[tuple[int, UNetPipeline]] = []
    for p, (private, context) in enumerate(zip(privates, contexts, strict=True)):
        try:
            check_private_images(private, context.num_classes)
            pipeline = prepare_unet_pipeline(private, context, options, None)
        except Exception as exc:  # noqa: BLE001 - this pipeline's own failure, raised for it by the caller
            results[p] = exc
            continue
        if isinstance(pipeline, LabeledSet):  # not reached for generation: sample; kept for the contract
            results[p] = pipeline
        else:
            ready.append((p, pipeline))
    groups: dict[tuple[int, tuple[int, ...]], list[tuple[int, UNetPipeline]]] = {}
    for p, pipeline in ready:
        key = (min(options.batch_size, len(pipeline.x0)), tuple(pipeline.x0.shape[1:]))
        groups.setdefault(key, []).append((p, pipeline))
    for (_, shape), members in groups.items():
        chosen = [contexts[p] for p, _ in members]
        pipelines = [pipeline for _, pipeline in members]
        parameters = sum(v.numel() for v in pipelines[0].unet.parameters())
        params, base, losses = train_denoisers_pack(
            [q.unet for q in pipelines], [q.x0 for q in pipelines], [q.labels for q in pipelines], options,
            pipelines[0].null_class, [context.generator("train") for context in chosen],
        )
        for q in pipelines:
            q.unet = None  # their weights live in params now
        synthetic_labels = [sample_labels(len(privates[p]), contexts[p], options) for p, _ in members]
        images = sample_images_pack(
            base, params, synthetic_labels, shape, options, pipelines[0].null_class,
            [context.generator("sample") for context in chosen],
        )
        for (p, _), x, y, loss in zip(members, images, synthetic_labels, losses, strict=True):
            results[p] = finish_unet_pipeline(x, y, parameters, loss, contexts[p])
    return results  # type: ignore[return-value]


def unet_pack_memory_bytes(
    options: DiffusionOptions, input_shape: tuple[int, ...], num_classes: int, private_size: int
) -> int:
    """An upper estimate of one packed UNet pipeline's working memory in bytes.

    Parameters (weights, gradients, Adam's two moments, the EMA, the
    stacking copy: 6 float32 copies), the private set, and the activations
    of the largest network call: a training batch kept for the backward
    (80 tensors of each level's width per ResNet layer: what vmap's batched
    kernels keep, calibrated below) or a sampling chunk (twice under
    guidance; a few tensors live at once).  Calibrated on digits with the
    default options (2026-12-05, CPU): a pack's peak resident memory grew by
    175 MiB for one pipeline and 538 MiB for four; this gives 183 MiB each.
    """
    channels, height, width = (int(s) for s in input_shape[-3:]) if len(input_shape) >= 3 else (1, 1, 1)
    widths = list(options.block_out_channels)
    per_image = sum(c * math.ceil(height / 2**level) * math.ceil(width / 2**level) for level, c in enumerate(widths))
    layers = 2 * options.layers_per_block + 1
    # The UNet's weights: 3x3 convolutions dominate (two per ResNet layer, down and up, with the skip concat).
    weights = sum(9 * c * c * 2 * layers + 4 * c * c for c in widths) + 8 * max(widths) ** 2 + (num_classes + 1) * 4 * widths[0]
    batch = min(options.batch_size, max(1, private_size))
    training = 80 * layers * batch * per_image
    n_per_class = options.n_per_class or max(1, round(options.size_fraction * private_size / num_classes))
    chunk = min(SAMPLE_CHUNK, num_classes * n_per_class)
    sampling = 8 * (2 if options.guidance_scale != 1.0 else 1) * chunk * per_image
    data = 2 * private_size * channels * height * width
    return 4 * (6 * weights + max(training, sampling) + data)
