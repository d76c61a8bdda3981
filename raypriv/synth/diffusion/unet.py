"""``diffusion``: train a class-conditional diffusion model on the private set, sample from it.

The synthetic training set is drawn from a denoising diffusion probabilistic
model (DDPM) fitted to the private set:

* Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020:
  the forward process adds Gaussian noise over ``T`` steps with a fixed beta
  schedule, ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``; a U-Net
  ``eps_theta(x_t, t, y)`` is trained to predict ``eps`` with a plain MSE loss
  (their "simple" objective) at uniformly drawn ``t``; sampling runs the
  learned reverse process from pure noise.  Ho et al. also average the weights
  with an exponential moving average (EMA) and sample from the average.
* Song, Meng & Ermon, "Denoising Diffusion Implicit Models", ICLR 2021: the
  same trained network sampled with a deterministic (eta = 0) non-Markovian
  reverse process on a short sub-sequence of the timesteps, so a few dozen
  network evaluations replace ``T`` (``sampler: ddim``, the default).
* Ho & Salimans, "Classifier-Free Diffusion Guidance", 2022 (optional): drop
  the class label to a *null* class with probability ``label_dropout`` during
  training, so one network learns both the conditional and the unconditional
  model; at sampling time ``eps = eps_null + w (eps_y - eps_null)`` with
  ``w = guidance_scale`` (``w = 1`` is plain conditional sampling).

The building blocks are Hugging Face ``diffusers``: ``UNet2DModel``
(conditioned on the class through ``num_class_embeds``), ``DDPMScheduler`` for
the noise schedule and ancestral sampling, ``DDIMScheduler`` for DDIM, and
``EMAModel`` for the weight average.  Instead of training from scratch, a
``UNet2DModel`` saved with ``save_pretrained`` can be loaded from a local
folder (``pretrained_path``) and fine-tuned on the private set.

The synthetic set is class balanced (``n_per_class`` samples of every class),
float32 images in pixel scale 0..1 with int64 labels; the audited model then
trains on it with the experiment's recipe.

``generation: img2img`` (SDEdit: Meng et al., "SDEdit: Guided Image Synthesis
and Editing with Stochastic Differential Equations", ICLR 2022) makes every
synthetic sample from one private image instead of from pure noise: the image
is noised with the closed-form forward process to the first of the last
``ceil(strength * sample_steps)`` sampler timesteps (about ``strength * T``),
and the reverse process (DDIM by default) runs from there, conditioned on the
image's own label.  ``strength`` 0 returns the private images unchanged (no
training is done: nothing would be used), 1 starts from (almost) pure noise.
Each of ``round(size_fraction * N)`` private images, drawn at random (all of
them by default), gives ``n_per_image`` samples with independent noise, so
the set follows the private class balance, not ``n_per_class``.  Differences
from SDEdit: the paper uses a pretrained score model and a stochastic
(VE/VP-SDE) reverse process from t0 = strength; here the model is the one
trained on the private set, and the deterministic DDIM sampler (eta 0) is
the default.

``pipeline: stable-diffusion`` fine-tunes a Stable Diffusion model from a
local ``pretrained_path`` instead; see :mod:`raypriv.synth.diffusion.stable_diffusion`.
The options and their checks are in :mod:`raypriv.synth.diffusion.options`.

Packs (``execution.pack``): the UNet trained from scratch and sampled from
noise (``generation: sample``, the default) trains and samples K pipelines
as one vmapped computation (:mod:`raypriv.synth.diffusion.packed`), each
pipeline with its own draws; its set equals the single run's up to float32
summation order (not bit for bit: see there for the measured differences).
Stable Diffusion, a pretrained UNet and img2img run one by one in a pack.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from raypriv.errors import RayprivError
from raypriv.synth.base import LabeledSet, ShadowContext
from raypriv.synth.diffusion.options import DiffusionOptions

if TYPE_CHECKING:  # diffusers is imported when a model is built: importing raypriv.synth stays quick
    from diffusers import DDPMScheduler, UNet2DModel

# Images are denoised in chunks of this many samples (memory only; results do not depend on it
# beyond floating-point reduction order).
SAMPLE_CHUNK = 512


# ------------------------------------------------------------------ the network


def build_unet(options: DiffusionOptions, channels: int, height: int, width: int, num_class_embeds: int) -> UNet2DModel:
    """A fresh class-conditional ``UNet2DModel`` for ``channels x height x width`` images."""
    from diffusers import UNet2DModel

    levels = len(options.block_out_channels)
    factor = 2 ** (levels - 1)
    if height % factor or width % factor:
        raise RayprivError(
            f"paradigm_options.diffusion.block_out_channels={options.block_out_channels} has {levels} resolution "
            f"levels, so the image side must divide by {factor}, but the images are {height}x{width}; "
            "use fewer levels"
        )
    # Plain convolutional ResNet blocks at every level; the middle block (at the lowest
    # resolution) keeps its self-attention, as in Ho et al.'s U-Net.
    return UNet2DModel(
        sample_size=height if height == width else (height, width),
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(options.block_out_channels),
        layers_per_block=options.layers_per_block,
        down_block_types=("DownBlock2D",) * levels,
        up_block_types=("UpBlock2D",) * levels,
        norm_num_groups=options.norm_num_groups,
        num_class_embeds=num_class_embeds,
    )


def load_unet(
    path: str, channels: int, height: int, width: int, num_classes: int, need_null_class: bool
) -> UNet2DModel:
    """A ``UNet2DModel`` from a ``save_pretrained`` folder, checked against the data."""
    from diffusers import UNet2DModel

    where = "paradigm_options.diffusion.pretrained_path"
    if not os.path.isdir(path):
        raise RayprivError(
            f"{where}={path!r} is not a folder; give a local (or mounted) folder written by "
            "UNet2DModel.save_pretrained (nothing is downloaded)"
        )
    try:
        unet = UNet2DModel.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise RayprivError(f"{where}={path!r}: could not load a UNet2DModel from it ({exc})") from None
    config = unet.config
    size = config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size) if size is not None else None
    problems = []
    if size is not None and size != (height, width):
        problems.append(f"sample_size {config.sample_size} but the images are {height}x{width}")
    if config.in_channels != channels or config.out_channels != channels:
        problems.append(f"in/out channels {config.in_channels}/{config.out_channels} but the images have {channels}")
    allowed = [num_classes + 1] if need_null_class else [num_classes, num_classes + 1]
    if config.num_class_embeds not in allowed or config.class_embed_type is not None:
        null = " (the classes plus a null class, for label_dropout > 0)" if need_null_class else ""
        problems.append(
            f"num_class_embeds {config.num_class_embeds} but the data has {num_classes} classes; "
            f"it must be {' or '.join(map(str, allowed))}{null}"
        )
    if problems:
        raise RayprivError(f"{where}={path!r}: the model does not fit the data: {'; '.join(problems)}")
    return unet


# ---------------------------------------------------------- training and sampling


def make_noise_scheduler(options: DiffusionOptions) -> DDPMScheduler:
    """The forward-process schedule (Ho et al.'s DDPM defaults: betas 1e-4 .. 0.02)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=options.num_train_timesteps, beta_schedule=options.beta_schedule)


def denoiser_lr_factor(step: int, options: DiffusionOptions) -> float:
    """The learning rate's factor at ``step``: a short linear warm-up, then cosine decay to zero.

    Ho et al. warm up too; our runs are short (about a thousand steps, not
    their 800k), so they should end on small steps.
    """
    warmup = max(1, options.train_steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, options.train_steps - warmup)))


def train_denoiser(
    unet: torch.nn.Module,
    x0: torch.Tensor,
    labels: torch.Tensor,
    options: DiffusionOptions,
    null_class: int | None,
    generator: torch.Generator,
) -> list[float]:
    """Fit ``unet`` to predict the noise in ``x0`` (images in [-1, 1]); returns the loss per step.

    Each step draws a batch, a timestep per image (uniform over the T steps), and
    Gaussian noise, noises the images with the closed-form forward process
    ``q(x_t | x_0)``, and regresses the network's output on the noise (MSE).
    With ``null_class`` set, labels are replaced by it with probability
    ``label_dropout`` (classifier-free guidance training).  If ``ema_decay`` > 0
    the EMA of the weights is copied into ``unet`` at the end.
    """
    from diffusers.training_utils import EMAModel

    device = x0.device
    scheduler = make_noise_scheduler(options)
    optimizer = torch.optim.Adam(unet.parameters(), lr=options.lr)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: denoiser_lr_factor(step, options))
    ema = EMAModel(unet.parameters(), decay=options.ema_decay, foreach=True) if options.ema_decay > 0 else None

    n = len(x0)
    batch = min(options.batch_size, n)
    losses = []
    unet.train()
    for _ in range(options.train_steps):
        # All draws on the CPU generator, then moved: the same model on a GPU or a laptop.
        index = torch.randint(0, n, (batch,), generator=generator).to(device)
        timesteps = torch.randint(0, options.num_train_timesteps, (batch,), generator=generator).to(device)
        noise = torch.randn((batch, *x0.shape[1:]), generator=generator).to(device)
        y = labels[index]
        if null_class is not None:
            drop = (torch.rand(batch, generator=generator) < options.label_dropout).to(device)
            y = torch.where(drop, torch.full_like(y, null_class), y)
        noisy = scheduler.add_noise(x0[index], noise, timesteps)
        loss = F.mse_loss(unet(noisy, timesteps, class_labels=y).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        if ema is not None:
            ema.step(unet.parameters())
        losses.append(loss.detach())  # no .item() here: it would wait for the GPU every step
    if ema is not None:
        ema.copy_to(unet.parameters())  # Ho et al. sample from the averaged weights
    return torch.stack(losses).tolist() if losses else []


@torch.no_grad()
def sample_images(
    unet: torch.nn.Module,
    labels: torch.Tensor,
    shape: tuple[int, int, int],
    options: DiffusionOptions,
    null_class: int | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """Images in [-1, 1] for ``labels``, by running the reverse process from pure noise."""
    from diffusers import DDIMScheduler

    device = labels.device
    scheduler = make_noise_scheduler(options)
    if options.sampler == "ddim":
        # Same betas as training; DDIM with eta = 0 (deterministic given x_T).
        scheduler = DDIMScheduler.from_config(scheduler.config)
    scheduler.set_timesteps(options.sample_steps)

    unet.eval()
    chunks = []
    for start in range(0, len(labels), SAMPLE_CHUNK):
        y = labels[start : start + SAMPLE_CHUNK]
        x = torch.randn((len(y), *shape), generator=generator).to(device)
        chunks.append(_denoise(unet, x, y, scheduler, scheduler.timesteps, options, null_class, generator))
    return torch.cat(chunks)


def _denoise(unet, x, y, scheduler, timesteps, options: DiffusionOptions, null_class, generator) -> torch.Tensor:
    """Run the reverse process over ``timesteps`` from ``x``, conditioned on ``y``."""
    device = x.device
    for t in timesteps:
        timestep = torch.full((len(y),), int(t), device=device, dtype=torch.long)
        if options.guidance_scale != 1.0:
            # One batched pass for the conditional and the null-class prediction.
            both = unet(
                torch.cat([x, x]), torch.cat([timestep, timestep]),
                class_labels=torch.cat([y, torch.full_like(y, null_class)]),
            ).sample
            eps_y, eps_null = both.chunk(2)
            eps = eps_null + options.guidance_scale * (eps_y - eps_null)
        else:
            eps = unet(x, timestep, class_labels=y).sample
        # DDIM with eta = 0 draws nothing; DDPM draws its posterior noise from the generator.
        x = scheduler.step(eps, t, x, generator=generator).prev_sample
    return x


# ------------------------------------------------------------ img2img (SDEdit)


def img2img_sources(n: int, options: DiffusionOptions, generator: torch.Generator) -> torch.Tensor:
    """Indices of the private images img2img starts from, each ``n_per_image`` times in a row.

    All images in order when ``size_fraction`` is 1, else a random subset of
    ``round(size_fraction * n)`` (at least one) in increasing order.
    """
    if options.size_fraction >= 1.0:
        chosen = torch.arange(n)
    else:
        count = max(1, round(options.size_fraction * n))
        chosen = torch.randperm(n, generator=generator)[:count].sort().values
    return chosen.repeat_interleave(options.n_per_image)


def img2img_steps(strength: float, sample_steps: int) -> int:
    """How many of the sampler's ``sample_steps`` an img2img pass runs: ceil(strength * steps), 0 at strength 0."""
    return min(sample_steps, math.ceil(strength * sample_steps - 1e-9))


@torch.no_grad()
def img2img_images(
    unet: torch.nn.Module,
    x0: torch.Tensor,
    labels: torch.Tensor,
    options: DiffusionOptions,
    null_class: int | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """SDEdit: noise each image of ``x0`` (in [-1, 1]) to about ``strength * T`` and denoise it back."""
    from diffusers import DDIMScheduler

    scheduler = make_noise_scheduler(options)
    if options.sampler == "ddim":
        scheduler = DDIMScheduler.from_config(scheduler.config)
    scheduler.set_timesteps(options.sample_steps)
    steps = img2img_steps(options.strength, options.sample_steps)
    if steps == 0:
        return x0.clone()
    timesteps = scheduler.timesteps[options.sample_steps - steps :]
    unet.eval()
    chunks = []
    for start in range(0, len(labels), SAMPLE_CHUNK):
        source, y = x0[start : start + SAMPLE_CHUNK], labels[start : start + SAMPLE_CHUNK]
        noise = torch.randn(source.shape, generator=generator).to(source.device)
        first = torch.full((len(y),), int(timesteps[0]), device=source.device, dtype=torch.long)
        x = scheduler.add_noise(source, noise, first)
        chunks.append(_denoise(unet, x, y, scheduler, timesteps, options, null_class, generator))
    return torch.cat(chunks)


# ------------------------------------------------------------------ the paradigm


@dataclass
class UNetPipeline:
    """One UNet pipeline, checked and ready to train: what :func:`train_denoiser` and the samplers need.

    ``x0``: the private images ``(N, C, H, W)`` in [-1, 1]; ``labels``: ``(N,)``
    int64; ``null_class``: the classifier-free guidance class (None without
    label dropout); ``unet``: the fresh (or loaded) network on the device;
    ``sources``: img2img's private-image indices (None for ``sample``).
    """

    x0: torch.Tensor
    labels: torch.Tensor
    null_class: int | None
    unet: torch.nn.Module
    sources: torch.Tensor | None


def check_private_images(private: LabeledSet, num_classes: int) -> None:
    """Refuse a private set that is not images ``(N, C, H, W)`` with class ids ``(N,)`` in ``0 .. num_classes - 1``.

    An empty set, or a label outside the classes, would otherwise fail deep in
    training (a draw from an empty range, an embedding index); refused here,
    a pipeline fails with the same message alone or in a pack.
    """
    if private.x.ndim != 4:
        raise RayprivError(
            f"paradigm diffusion needs images (N, C, H, W), but the private set has inputs of shape "
            f"{tuple(private.x.shape)}; use another paradigm for tabular data"
        )
    if private.y.ndim != 1:
        raise RayprivError("paradigm diffusion needs class ids as labels (N,), not soft labels")
    if len(private) == 0:
        raise RayprivError("paradigm diffusion got an empty private set: there is nothing to train the denoiser on")
    low, high = int(private.y.min()), int(private.y.max())
    if low < 0 or high >= num_classes:
        raise RayprivError(
            f"paradigm diffusion got labels from {low} to {high}, but the data has classes 0 .. {num_classes - 1}"
        )


def prepare_unet_pipeline(
    private: LabeledSet, context: ShadowContext, options: DiffusionOptions, sources: torch.Tensor | None
) -> UNetPipeline | LabeledSet:
    """The UNet pipeline of ``private``: its scaled images and its network (seeded from ``context``'s ``init`` stream).

    Returns the finished set instead where no network is needed (img2img at strength 0: the private images).
    """
    num_classes = context.num_classes
    channels, height, width = (int(s) for s in private.x.shape[1:])
    device = context.device

    # Pixel scale 0..1 (uint8 / 255), then [-1, 1] as in Ho et al.
    x = private.x.float() / 255.0 if private.x.dtype == torch.uint8 else private.x.float()
    if sources is not None:
        context.info["n_per_image"] = options.n_per_image
        if img2img_steps(options.strength, options.sample_steps) == 0:
            # Strength 0: the private images themselves (no model would be used, so none is trained).
            return LabeledSet(x[sources].to(device), private.y[sources].long().to(device))
    x0 = (x * 2.0 - 1.0).to(device)
    labels = private.y.long().to(device)
    # Classifier-free guidance trains one extra class embedding: the null class, index num_classes.
    null_class = num_classes if options.label_dropout > 0 else None
    num_class_embeds = num_classes + 1 if null_class is not None else num_classes

    if options.pretrained_path is not None:
        unet = load_unet(options.pretrained_path, channels, height, width, num_classes, null_class is not None)
    else:
        # diffusers initialises from torch's global RNG: fork it and seed from this model's stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.generator("init").initial_seed())
            unet = build_unet(options, channels, height, width, num_class_embeds)
    return UNetPipeline(x0, labels, null_class, unet.to(device), sources)


def sample_labels(private_size: int, context: ShadowContext, options: DiffusionOptions) -> torch.Tensor:
    """The class-balanced labels ``(classes * n_per_class,)`` of ``generation: sample`` (class-major); notes n_per_class."""
    num_classes = context.num_classes
    if options.n_per_class is not None:
        n_per_class = options.n_per_class
    else:
        n_per_class = max(1, round(options.size_fraction * private_size / num_classes))
    context.info["n_per_class"] = n_per_class
    return torch.arange(num_classes, device=context.device).repeat_interleave(n_per_class)


def finish_unet_pipeline(
    images: torch.Tensor, labels: torch.Tensor, parameters: int, losses: list[float], context: ShadowContext
) -> LabeledSet:
    """The synthetic set from images in [-1, 1] ``(M, C, H, W)`` and labels ``(M,)``.

    Notes the model's facts (its size, its first and last losses) in ``context.info``.
    """
    context.info["unet_parameters"] = parameters
    if losses:  # mean denoising loss over the first and the last tenth of the steps
        tail = max(1, len(losses) // 10)
        context.info["loss_first"] = sum(losses[:tail]) / tail
        context.info["loss_last"] = sum(losses[-tail:]) / tail
    # Back to pixel scale 0..1 (float32), the convention for synthetic images.
    return LabeledSet(((images + 1.0) / 2.0).clamp(0.0, 1.0).float(), labels)
