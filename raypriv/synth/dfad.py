"""DFAD's pieces: the generator, its initial weights, the game's optimisers and the game itself.

Fang et al., "Data-Free Adversarial Distillation", 2019: a generator and the
student play a minimax game through a frozen teacher (the method as a whole,
its departures and its paradigm are described in :mod:`raypriv.synth.dfkd`).
The single run (:func:`adversarial_distillation`) and the pack
(:mod:`raypriv.synth.dfad_packed`) both build on what is here, so the two
cannot drift apart; neither module imports the paradigm's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from raypriv.synth.base import ShadowContext
from raypriv.synth.options import DFKDOptions
from raypriv.training import Normalizer, make_scheduler


class Generator(nn.Module):
    """DFAD's DCGAN-style generator, making images of ``shape`` (C, H, W) in pixel scale 0..1.

    z -> linear -> (2w, H/4, W/4) -> BN -> 2 x (upsample, conv, BN, LeakyReLU) -> conv -> tanh -> BN without affine.

    As in the paper, the last layer is a BatchNorm without learnt scale and
    shift: every generated batch has zero mean and unit variance per channel
    in the network's normalised input space, i.e. the training data's pixel
    mean and spread, so the generator cannot drift to saturated or blank
    images (with a plain sigmoid output the students on digits were far
    worse).  The output is then mapped back to pixels with the run's
    normaliser and clamped to 0..1.  The second upsampling goes to (H, W)
    exactly, so sizes need not divide by 4.
    """

    def __init__(self, latent_dim: int, width: int, shape: tuple[int, int, int], normalizer: Normalizer):
        super().__init__()
        channels, height, width_px = shape
        self.normalizer = normalizer
        self.start = (math.ceil(height / 4), math.ceil(width_px / 4))
        self.project = nn.Linear(latent_dim, 2 * width * self.start[0] * self.start[1])
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2),
            nn.Upsample(size=(height, width_px)),
            nn.Conv2d(2 * width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, channels, 3, padding=1),
            nn.Tanh(),
            nn.BatchNorm2d(channels, affine=False),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        normalised = self.body(self.project(z).view(len(z), -1, *self.start))
        return self.normalizer.denormalize(normalised).clamp(0.0, 1.0)


def initial_generator(options: DFKDOptions, context: ShadowContext) -> Generator:
    """The model's generator at its initial weights (seeded from its ``dfad-generator-init`` stream), on the device."""
    with torch.random.fork_rng(devices=[]):  # the global generator is seeded here and restored after
        torch.manual_seed(int(context.rng("dfad-generator-init").integers(2**62)))
        generator = Generator(options.latent_dim, options.generator_width, context.input_shape, context.normalizer)
    return generator.to(context.device)


def student_optimizer_and_schedule(
    parameters: list[torch.Tensor], options: DFKDOptions
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LRScheduler]:
    """DFAD's student optimiser, SGD (momentum 0.9, weight decay 5e-4) with cosine decay over ``steps``.

    Every update is element-wise, so a pack gives it the K students' stacked
    parameters and it makes K single runs' updates.
    """
    optimizer = torch.optim.SGD(parameters, lr=options.student_lr, momentum=0.9, weight_decay=5e-4)
    return optimizer, make_scheduler(optimizer, "cosine", options.steps)


def generator_optimizer_and_schedule(
    parameters: list[torch.Tensor], options: DFKDOptions
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LRScheduler]:
    """DFAD's generator optimiser, Adam with cosine decay over ``steps`` (element-wise too)."""
    optimizer = torch.optim.Adam(parameters, lr=options.generator_lr)
    return optimizer, make_scheduler(optimizer, "cosine", options.steps)


def adversarial_distillation(
    teacher: nn.Module, student: nn.Module, options: DFKDOptions, context: ShadowContext
) -> tuple[Generator, list[float]]:
    """Play DFAD's game; ``student`` is trained in place.  Returns the generator and the student's L1 losses."""
    device = context.device
    noise = context.generator("dfad-noise")
    generator = initial_generator(options, context)

    student_optimizer, student_schedule = student_optimizer_and_schedule(list(student.parameters()), options)
    generator_optimizer, generator_schedule = generator_optimizer_and_schedule(list(generator.parameters()), options)

    def sample() -> torch.Tensor:
        return torch.randn(options.batch_size, options.latent_dim, generator=noise).to(device)

    student.train()
    generator.train()
    losses = []
    for _ in range(options.steps):
        # Student: imitate the teacher on the generator's current inputs (the generator is held fixed).
        for _ in range(options.student_steps):
            with torch.no_grad():
                x = context.normalizer(generator(sample()))
                target = teacher(x)
            loss = F.l1_loss(student(x), target)
            student_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            student_optimizer.step()
            losses.append(loss.detach())
        # Generator: move towards the inputs where student and teacher disagree most.
        x = context.normalizer(generator(sample()))
        loss = -F.l1_loss(student(x), teacher(x))
        generator_optimizer.zero_grad(set_to_none=True)
        loss.backward()  # also fills the student's gradients; its next zero_grad discards them
        generator_optimizer.step()
        student_schedule.step()
        generator_schedule.step()
    generator.eval()
    return generator, torch.stack(losses).tolist()
