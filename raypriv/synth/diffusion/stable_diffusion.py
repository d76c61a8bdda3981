"""``diffusion`` with ``pipeline: stable-diffusion``: fine-tune a local Stable Diffusion model on the private set.

Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion
Models", CVPR 2022, through diffusers' own classes: ``UNet2DConditionModel``
(the denoiser), ``AutoencoderKL`` (the latent space), ``CLIPTextModel`` and
``CLIPTokenizer`` (the prompt encoder) and the saved scheduler's noise
schedule, loaded from ``pretrained_path``, a folder in the layout
``StableDiffusionPipeline.save_pretrained`` writes (``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``).  Nothing is downloaded.

Fine-tuning: every UNet weight is trained (the VAE and the text encoder stay
frozen) on the private images with the prompt of their class,
``prompt_template`` with ``{label}`` replaced by the class's name
(``class_names``; default: the CIFAR-10 names on cifar10, else the class
index, "0".."9" on digits), by the usual latent-diffusion objective: MSE
between the UNet's output and the noise (or the velocity, if the saved
scheduler predicts ``v_prediction``) at uniformly drawn timesteps, AdamW at
``lr`` (use about 1e-5 for a real Stable Diffusion; the default 2e-3 is for
the small UNet), ``train_steps`` steps of ``batch_size``.  ``label_dropout``
swaps the prompt for the empty prompt, for classifier-free guidance at
``guidance_scale`` (diffusers' convention: > 1 turns it on).

Generation: ``text2img`` (or ``sample``): ``StableDiffusionPipeline`` from
the class prompts, ``n_per_class`` per class (or ``size_fraction`` of the
private set, balanced); ``img2img``: ``StableDiffusionImg2ImgPipeline`` from
each private image at ``strength`` (the sources as in the small-UNet
img2img).  Sampler: ``ddim`` (default) or ``ddpm`` built from the saved
scheduler's config, ``sample_steps`` steps.

Images are resized (bilinear, antialiased) to the model's resolution
(``resolution``, default the UNet's sample size times the VAE's factor) and
back to the dataset's; grayscale images are replicated to 3 channels and
averaged back.  Differences from common practice: no EMA, no mixed
precision, no safety checker; diffusers img2img runs ``int(strength *
sample_steps)`` steps, so a strength that rounds to 0 steps returns the
private images unchanged.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

from raypriv.errors import RayprivError
from raypriv.synth.base import LabeledSet, ShadowContext

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
GENERATION_CHUNK = 64  # images per pipeline call (memory only)
WHERE = "paradigm_options.diffusion"


def load_components(path: str) -> dict[str, Any]:
    """The five pipeline components from a ``save_pretrained`` folder, with errors naming what is missing."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    where = f"{WHERE}.pretrained_path={path!r}"
    if not os.path.isdir(path):
        raise RayprivError(
            f"{where} does not exist or is not a folder; give a local folder written by "
            "StableDiffusionPipeline.save_pretrained (with unet/, vae/, text_encoder/, tokenizer/, scheduler/)"
        )
    missing = [c for c in COMPONENTS if not os.path.isdir(os.path.join(path, c))]
    if missing:
        raise RayprivError(
            f"{where} lacks the component(s) {missing} (no folder {os.path.join(path, missing[0])}); a Stable "
            "Diffusion folder needs unet/, vae/, text_encoder/, tokenizer/ and scheduler/ as "
            "StableDiffusionPipeline.save_pretrained writes them"
        )
    loaders = {
        "unet": lambda: UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True),
        "vae": lambda: AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True),
        "text_encoder": lambda: CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True),
        "tokenizer": lambda: CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True),
        "scheduler": lambda: DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True),
    }
    components = {}
    for name, load in loaders.items():
        try:
            components[name] = load()
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise RayprivError(f"{where}: could not load the component '{name}' from {path}/{name} ({exc})") from None
    return components


def class_prompts(options: Any, context: ShadowContext) -> list[str]:
    """One prompt per class: ``prompt_template`` with ``{label}`` set to the class's name."""
    k = context.num_classes
    names = options.class_names
    if names is None:
        names = list(CIFAR10_NAMES) if context.config.dataset.name == "cifar10" and k == 10 else [str(c) for c in range(k)]
    if len(names) != k:
        raise RayprivError(f"{WHERE}.class_names has {len(names)} names but the dataset has {k} classes; give one per class")
    return [options.prompt_template.replace("{label}", name) for name in names]


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], device: torch.device) -> torch.Tensor:
    tokens = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    return text_encoder(tokens.input_ids.to(device))[0]


def to_model_images(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Pixel-scale (N, C, H, W) images to 3-channel ``resolution``² images in 0..1."""
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    elif x.shape[1] != 3:
        raise RayprivError(f"pipeline: stable-diffusion needs 1- or 3-channel images, not {x.shape[1]} channels")
    if tuple(x.shape[-2:]) != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0.0, 1.0)


def to_dataset_images(x: torch.Tensor, channels: int, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`to_model_images`: back to the dataset's size and channels, float32 0..1."""
    x = x.float()
    if tuple(x.shape[-2:]) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    if channels == 1:
        x = x.mean(dim=1, keepdim=True)
    return x.clamp(0.0, 1.0).contiguous()


def finetune_unet(
    components: dict[str, Any],
    images: torch.Tensor,
    labels: torch.Tensor,
    class_embeddings: torch.Tensor,
    null_embedding: torch.Tensor,
    options: Any,
    generator: torch.Generator,
) -> list[float]:
    """Full fine-tuning of the UNet on (images in [-1, 1] at the model's resolution, labels); the loss per step."""
    unet, vae, scheduler = components["unet"], components["vae"], components["scheduler"]
    device = images.device
    with torch.no_grad():  # the latent distribution of every image, sampled afresh each step
        dists = [vae.encode(chunk).latent_dist for chunk in images.split(GENERATION_CHUNK)]
        mean, std = torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])
    scale = vae.config.scaling_factor
    optimizer = torch.optim.AdamW(unet.parameters(), lr=options.lr)
    batch = min(options.batch_size, len(images))
    num_timesteps = scheduler.config.num_train_timesteps
    losses = []
    unet.train()
    for _ in range(options.train_steps):
        index = torch.randint(0, len(images), (batch,), generator=generator).to(device)
        latents = (mean[index] + std[index] * torch.randn(mean[index].shape, generator=generator).to(device)) * scale
        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = torch.randint(0, num_timesteps, (batch,), generator=generator).to(device)
        context = class_embeddings[labels[index]]
        if options.label_dropout > 0:
            drop = (torch.rand(batch, generator=generator) < options.label_dropout).to(device)
            context = torch.where(drop[:, None, None], null_embedding.expand_as(context), context)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        loss = F.mse_loss(unet(noisy, timesteps, encoder_hidden_states=context).sample.float(), target.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    unet.eval()
    return torch.stack(losses).tolist() if losses else []


def _sampling_scheduler(components: dict[str, Any], sampler: str):
    from diffusers import DDIMScheduler, DDPMScheduler

    cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    # Latents are not confined to [-1, 1]: never clip the predicted sample (Stable Diffusion's own setting).
    return cls.from_config(components["scheduler"].config, clip_sample=False)


def synthesize_stable_diffusion(private: LabeledSet, context: ShadowContext, options: Any,
                                sources: torch.Tensor | None = None) -> LabeledSet:
    """The whole stable-diffusion path of the ``diffusion`` paradigm on one private set.

    ``sources``: with ``generation: img2img``, the indices of the private
    images to start from (:func:`raypriv.synth.diffusion.unet.img2img_sources`,
    drawn by the paradigm, so that both pipelines start from the same images).
    """
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    device = context.device
    channels, height, width = (int(s) for s in private.x.shape[1:])
    prompts = class_prompts(options, context)
    with torch.random.fork_rng(devices=[]):  # nothing here should draw from torch's global RNG, but make sure
        torch.manual_seed(context.generator("sd-global").initial_seed())
        components = load_components(options.pretrained_path)
    for name in ("unet", "vae", "text_encoder"):
        components[name] = components[name].to(device).float()
        components[name].requires_grad_(name == "unet")
    components["vae"].eval()
    components["text_encoder"].eval()
    vae_factor = 2 ** (len(components["vae"].config.block_out_channels) - 1)
    resolution = options.resolution or int(components["unet"].config.sample_size) * vae_factor

    x = private.x.float() / 255.0 if private.x.dtype == torch.uint8 else private.x.float()
    x = to_model_images(x.to(device), resolution)
    labels = private.y.long().to(device)
    embeddings = encode_prompts(components["tokenizer"], components["text_encoder"], prompts, device)
    null_embedding = encode_prompts(components["tokenizer"], components["text_encoder"], [""], device)

    img2img = options.generation == "img2img"
    if img2img:
        if sources is None:
            raise ValueError("generation img2img needs the sources drawn by the diffusion paradigm")  # a caller's bug
        sources = sources.to(device)
        context.info["n_per_image"] = options.n_per_image
        if int(options.sample_steps * options.strength) == 0:  # no denoising step: the private images
            images = private.x.float() / 255.0 if private.x.dtype == torch.uint8 else private.x.float()
            return LabeledSet(images[sources.cpu()].to(device), labels[sources])

    losses = finetune_unet(
        components, x * 2.0 - 1.0, labels, embeddings, null_embedding, options, context.generator("sd-train")
    )
    parts = {k: components[k] for k in ("unet", "vae", "text_encoder", "tokenizer")}
    parts.update(scheduler=_sampling_scheduler(components, options.sampler), safety_checker=None, feature_extractor=None)
    pipeline_class = StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline
    pipe = pipeline_class(**parts, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    if img2img:
        synthetic_labels = labels[sources]
    else:
        n_per_class = options.n_per_class or max(1, round(options.size_fraction * len(private) / context.num_classes))
        synthetic_labels = torch.arange(context.num_classes, device=device).repeat_interleave(n_per_class)
        context.info["n_per_class"] = n_per_class
    generator = context.generator("sd-sample")
    outputs = []
    for start in range(0, len(synthetic_labels), GENERATION_CHUNK):
        y = synthetic_labels[start : start + GENERATION_CHUNK]
        call = dict(
            prompt=[prompts[int(c)] for c in y], num_inference_steps=options.sample_steps,
            guidance_scale=options.guidance_scale, generator=generator, output_type="pt",
        )
        if img2img:
            call.update(image=x[sources[start : start + GENERATION_CHUNK]], strength=options.strength)
        else:
            call.update(height=resolution, width=resolution)
        with torch.no_grad():
            outputs.append(pipe(**call).images.to(device))
    if losses:
        tail = max(1, len(losses) // 10)
        context.info["loss_first"] = sum(losses[:tail]) / tail
        context.info["loss_last"] = sum(losses[-tail:]) / tail
    context.info["unet_parameters"] = sum(p.numel() for p in components["unet"].parameters())
    return LabeledSet(to_dataset_images(torch.cat(outputs), channels, height, width), synthetic_labels)
