"""The training engine: one model at a time, a plain readable loop.

``train_classifier`` trains a model on tensors already on the device, drawing
its data order and augmentations from the model's own seeded generators, so a
model is the same whichever worker trains it.  ``predict_logits`` queries a
trained model in eval mode, once per augmentation query.

Inputs arrive as stored (``uint8`` images or ``float32`` features) and are
turned into normalised floats per batch by :class:`Normalizer`, which keeps
the dataset in device memory at a quarter of the float size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raypriv.config import ExperimentConfig, TrainConfig
from raypriv.errors import RayprivError
from raypriv.queries import apply_query, pad_for_crop
from raypriv.seeding import torch_generator


@dataclass
class Normalizer:
    """Maps stored inputs to normalised float tensors (per channel or per feature)."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, x: np.ndarray) -> "Normalizer":
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        axes = (0, 2, 3) if x.ndim == 4 else (0,)
        mean = x.mean(axis=axes)
        std = np.maximum(x.std(axis=axes), 1e-6)
        shape = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
        return cls(torch.from_numpy(mean).reshape(shape), torch.from_numpy(std).reshape(shape))

    def to(self, device: torch.device) -> "Normalizer":
        return Normalizer(self.mean.to(device), self.std.to(device))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return (x - self.mean) / self.std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Back from network inputs to pixel scale 0..1 (images) or raw features."""
        return x * self.std + self.mean


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``padding`` pixels (zero padding), one draw per image."""
    n, _, h, w = x.shape
    shifts = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(x.device)
    padded = pad_for_crop(x, padding)  # the shift queries pad the same way
    rows = (shifts[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (shifts[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Horizontal flip of each image with probability 1/2."""
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def augment(x: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    if config.augment == "none" or x.ndim != 4:
        return x
    if config.crop_padding > 0:
        x = random_crop(x, config.crop_padding, generator)
    if config.augment == "flip_crop":
        x = random_flip(x, generator)
    return x


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The recipe's optimizer (SGD with Nesterov momentum, or Adam) over ``model``'s parameters."""
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=config.momentum > 0
    )


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """The learning-rate multiplier at ``step``: ``cosine`` decay to zero over ``total_steps``, or ``constant``."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))
    return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step learning-rate schedule (see :func:`lr_factor`)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(schedule, step, total_steps))


def epoch_batches(n: int, batch_size: int, order_rng: torch.Generator, device: torch.device) -> Iterator[torch.Tensor]:
    """One epoch's batch indices, in the order training presents them.

    A fresh permutation from ``order_rng``, cut into batches of ``batch_size``;
    a trailing batch of one is dropped (BatchNorm cannot normalise it).
    """
    permutation = torch.randperm(n, generator=order_rng).to(device)
    for start in range(0, n, batch_size):
        index = permutation[start : start + batch_size]
        if len(index) < 2 and n >= 2:
            continue
        yield index


def autocast(device: torch.device, config: TrainConfig):
    """bfloat16 autocast on CUDA when the recipe asks for it; a no-op on CPU."""
    enabled = config.amp and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    normalizer: Normalizer,
    seed: int,
    model_id: int,
    *,
    generators: tuple[torch.Generator, torch.Generator] | None = None,
    on_batch: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
) -> nn.Module:
    """Train ``model`` on ``(x, y)`` with the recipe in ``config``.

    ``x`` and ``y`` live on the model's device; ``y`` holds class ids, or
    class probabilities ``(N, C)`` for soft-label training.  Batch order comes from the
    model's ``"order"`` stream and augmentations from its ``"augment"`` stream,
    unless ``generators`` gives another ``(order, augment)`` pair.
    ``on_batch(epoch, index, logits)``, if given, sees each minibatch's sample
    indices and its logits before the update (the forgetting coreset records
    correctness with it).
    """
    device = x.device
    order_rng, augment_rng = generators or (torch_generator(seed, "order", model_id), torch_generator(seed, "augment", model_id))
    optimizer = make_optimizer(model, config)
    n = len(y)
    total_steps = config.epochs * max(1, math.ceil(n / config.batch_size))
    scheduler = make_scheduler(optimizer, config.lr_schedule, total_steps)

    model.train()
    for epoch in range(config.epochs):
        for index in epoch_batches(n, config.batch_size, order_rng, device):
            inputs = normalizer(augment(x[index], config, augment_rng))
            with autocast(device, config):
                logits = model(inputs)
                loss = F.cross_entropy(logits, y[index])
            if on_batch is not None:
                on_batch(epoch, index, logits.detach())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model


@torch.no_grad()
def predict_logits(
    model: nn.Module, x: torch.Tensor, normalizer: Normalizer, queries: list[str], batch_size: int = 1024
) -> np.ndarray:
    """Eval-mode logits, shape ``(N, len(queries), num_classes)``, float32."""
    model.eval()
    per_query = []
    for query in queries:
        chunks = [model(normalizer(apply_query(x[i : i + batch_size], query))).float() for i in range(0, len(x), batch_size)]
        per_query.append(torch.cat(chunks))
    return torch.stack(per_query, dim=1).cpu().numpy()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, normalizer: Normalizer, batch_size: int = 1024) -> float:
    """Top-1 accuracy in eval mode on the un-augmented inputs."""
    logits = predict_logits(model, x, normalizer, ["identity"], batch_size)[:, 0]
    return float((logits.argmax(axis=1) == y.cpu().numpy()).mean())


# The most parameters the audited network may have: 4 GB of float32 weights per model (16+ GB with its gradients
# and optimizer state), about 100 times ResNet-18.  model.width: 100000 asks for 10^12 and fails inside torch.
MAX_MODEL_PARAMETERS = 10**9


def check_sizes(config: ExperimentConfig, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Refuse sizes the data cannot carry, before anything trains; :class:`RayprivError` naming the field and the fix.

    * ``train.crop_padding`` (images): below the image's height and width;
      a larger shift moves the whole image out of view, and 3000 pads each
      batch to gigabytes.
    * ``model.width``: the network it makes for these inputs has at most
      :data:`MAX_MODEL_PARAMETERS` parameters (counted on the ``meta``
      device, so nothing is allocated).
    * ``train.batch_size`` and ``train.eval_batch_size`` need no bound: a
      batch larger than the set is clipped to the set (one batch per epoch).
    """
    from raypriv.models import build_model

    if len(input_shape) == 3:
        side = min(input_shape[1:])
        if config.train.crop_padding >= side:
            raise RayprivError(
                f"config: train.crop_padding={config.train.crop_padding} is not below the images' side ({side} "
                f"pixels for inputs of shape {tuple(input_shape)}); give 0..{side - 1} (4 is usual for 32x32)"
            )
    with torch.device("meta"):
        network = build_model(config.model, tuple(input_shape), num_classes)
    count = sum(p.numel() for p in network.parameters())
    if count > MAX_MODEL_PARAMETERS:
        raise RayprivError(
            f"config: model.width={config.model.width} makes a {config.model.arch} of {count:.3g} parameters for "
            f"inputs of shape {tuple(input_shape)}, above the limit of {MAX_MODEL_PARAMETERS:.0e} "
            "(4 GB of float32 weights per model); lower model.width"
        )
