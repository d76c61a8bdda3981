"""The options of ``diffusion`` (``paradigm_options.diffusion``), checked without torch or diffusers.

Both pipelines read them: the class-conditional UNet trained from scratch
(:mod:`raypriv.synth.diffusion.unet`, ``pipeline: unet``) and a fine-tuned
Stable Diffusion model (:mod:`raypriv.synth.diffusion.stable_diffusion`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from raypriv.errors import RayprivError


@dataclass
class DiffusionOptions:
    """Options of ``paradigm_options.diffusion`` (defaults suit 8x8 digits on one CPU thread)."""

    # A local folder written by UNet2DModel.save_pretrained; None trains from scratch.
    pretrained_path: str | None = None
    # U-Net shape when training from scratch (ignored with pretrained_path): one resolution level
    # per entry, each halving the image side, so H and W must divide by 2 ** (len - 1).
    block_out_channels: list[int] = field(default_factory=lambda: [16, 32])
    layers_per_block: int = 1
    norm_num_groups: int = 8  # GroupNorm groups; must divide every entry of block_out_channels
    # Optimisation (Adam, linear warm-up then cosine decay, EMA of the weights).
    train_steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-3
    ema_decay: float = 0.995  # 0 samples from the raw weights
    # Noise schedule (Ho et al.: T = 1000, betas linear from 1e-4 to 0.02).
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "squaredcos_cap_v2"] = "linear"
    # Sampling.
    sampler: Literal["ddim", "ddpm"] = "ddim"
    sample_steps: int = 25
    n_per_class: int | None = None  # None: size_fraction * len(private) / num_classes, rounded
    size_fraction: float = 1.0
    # Classifier-free guidance: 0 disables the null class; guidance_scale 1 is plain conditional.
    label_dropout: float = 0.0
    guidance_scale: float = 1.0
    # What the samples start from: "sample" (pure noise), "img2img" (SDEdit from each private image at
    # `strength`), "text2img" (stable-diffusion only: the same as "sample", from the class prompts).
    generation: Literal["sample", "img2img", "text2img"] = "sample"
    strength: float = 0.5  # img2img: how far each private image is noised, 0 (unchanged) .. 1 (pure noise)
    n_per_image: int = 1  # img2img: samples made from each private image
    # "unet": the class-conditional UNet2DModel (unet.py); "stable-diffusion": stable_diffusion.py
    pipeline: Literal["unet", "stable-diffusion"] = "unet"
    prompt_template: str = "a photo of a {label}"  # stable-diffusion: the prompt of each class
    class_names: list[str] | None = None  # stable-diffusion: {label} per class; None: the dataset's defaults
    resolution: int | None = None  # stable-diffusion: image side for the model; None: the UNet's sample size x VAE factor

    def __post_init__(self) -> None:
        where = "paradigm_options.diffusion"
        if not self.block_out_channels or any(c < 1 for c in self.block_out_channels):
            raise RayprivError(
                f"{where}.block_out_channels={self.block_out_channels}: give one positive channel count per "
                "resolution level, e.g. [16, 32]"
            )
        if self.norm_num_groups < 1 or any(c % self.norm_num_groups for c in self.block_out_channels):
            raise RayprivError(
                f"{where}.norm_num_groups={self.norm_num_groups} must be positive and divide every entry of "
                f"block_out_channels={self.block_out_channels} (GroupNorm splits the channels into equal groups)"
            )
        if self.layers_per_block < 1:
            raise RayprivError(f"{where}.layers_per_block={self.layers_per_block} must be at least 1")
        minimum_steps = 0 if self.pretrained_path is not None else 1
        if self.train_steps < minimum_steps:
            raise RayprivError(
                f"{where}.train_steps={self.train_steps} must be at least {minimum_steps} "
                "(0 is allowed only with pretrained_path: sample from the loaded model as it is)"
            )
        if self.batch_size < 1:
            raise RayprivError(f"{where}.batch_size={self.batch_size} must be at least 1")
        if not self.lr > 0:
            raise RayprivError(f"{where}.lr={self.lr} must be positive")
        if not 0.0 <= self.ema_decay < 1.0:
            raise RayprivError(f"{where}.ema_decay={self.ema_decay} must be in [0, 1); 0 turns the EMA off")
        if self.num_train_timesteps < 2:
            raise RayprivError(f"{where}.num_train_timesteps={self.num_train_timesteps} must be at least 2")
        if not 1 <= self.sample_steps <= self.num_train_timesteps:
            raise RayprivError(
                f"{where}.sample_steps={self.sample_steps} must be between 1 and "
                f"num_train_timesteps={self.num_train_timesteps}"
            )
        if self.n_per_class is not None and self.n_per_class < 1:
            raise RayprivError(f"{where}.n_per_class={self.n_per_class} must be at least 1, or null for automatic")
        if not self.size_fraction > 0:
            raise RayprivError(f"{where}.size_fraction={self.size_fraction} must be positive")
        if not 0.0 <= self.label_dropout < 1.0:
            raise RayprivError(f"{where}.label_dropout={self.label_dropout} must be in [0, 1)")
        if self.guidance_scale < 0:
            raise RayprivError(f"{where}.guidance_scale={self.guidance_scale} must be non-negative (1 = no guidance)")
        self._check_generation(where)
        if self.guidance_scale != 1.0 and self.label_dropout == 0.0 and self.pipeline == "unet":
            raise RayprivError(
                f"{where}.guidance_scale={self.guidance_scale} needs an unconditional model: set label_dropout "
                "> 0 (e.g. 0.1) so the network learns the null class, or keep guidance_scale 1"
            )

    def _check_generation(self, where: str) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise RayprivError(
                f"{where}.strength={self.strength} must be in [0, 1] (0 returns the private images unchanged, "
                "1 starts from pure noise)"
            )
        if self.n_per_image < 1:
            raise RayprivError(f"{where}.n_per_image={self.n_per_image} must be at least 1")
        if self.generation == "img2img":
            if self.n_per_class is not None:
                raise RayprivError(
                    f"{where}.n_per_class={self.n_per_class} does not apply to generation: img2img (one set of "
                    "samples per private image); use n_per_image and size_fraction, or generation: sample"
                )
            if self.size_fraction > 1.0:
                raise RayprivError(
                    f"{where}.size_fraction={self.size_fraction}: with generation: img2img it is the share of "
                    "private images used, at most 1; use n_per_image for more samples per image"
                )
        if self.pipeline == "unet" and self.generation == "text2img":
            raise RayprivError(
                f"{where}.generation='text2img' needs pipeline: stable-diffusion (a text encoder); the class-"
                "conditional UNet uses generation: sample or img2img"
            )
        if self.pipeline == "stable-diffusion":
            self._check_stable_diffusion(where)

    def _check_stable_diffusion(self, where: str) -> None:
        """The checks of ``pipeline: stable-diffusion`` (:mod:`raypriv.synth.diffusion.stable_diffusion`)."""
        if self.pretrained_path is None:
            raise RayprivError(
                f"{where}.pipeline='stable-diffusion' needs {where}.pretrained_path: a local folder written by "
                "StableDiffusionPipeline.save_pretrained (nothing is downloaded)"
            )
        if "{label}" not in self.prompt_template:
            raise RayprivError(
                f"{where}.prompt_template={self.prompt_template!r} must contain '{{label}}' (replaced by each "
                "class name), e.g. 'a photo of a {label}'"
            )
        if self.resolution is not None and self.resolution < 8:
            raise RayprivError(f"{where}.resolution={self.resolution} must be at least 8, or null for the model's")
