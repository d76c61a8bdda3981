"""What the ``distill`` methods share: DSA augmentation, the ConvNet, real batches, initial images, evaluation.

Distribution and gradient matching (:mod:`raypriv.synth.distill.matching`)
and trajectory matching (:mod:`raypriv.synth.distill.trajectories`) both
augment with DSA and embed or train with the ConvNet; the paradigm draws its
real batches and initial images with the helpers after them.
:func:`train_published` is the papers' evaluation protocol (the authors'
``evaluate_synset``), with which ``eval_recipe: published`` trains the
audited model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raypriv.errors import RayprivError

if TYPE_CHECKING:
    from raypriv.training import Normalizer

# ------------------------------------------------------------ DSA augmentation
#
# Zhao & Bilen (2021), with the authors' default ranges.  One draw ω picks a
# single transform from the strategy ("single" mode, their default) and
# per-sample parameters for ``n`` images; applying the same ω to the real and
# the synthetic batch (image i of either batch gets row i) is the "siamese"
# part, and every transform is differentiable w.r.t. the images.

SCALE_RATIO = 1.2  # scale factors in [1/1.2, 1.2], per axis
ROTATE_DEGREES = 15.0  # rotation in [-15°, 15°]
CROP_PAD_RATIO = 0.125  # translate by up to 1/8 of the side (zero padding)
CUTOUT_RATIO = 0.5  # erase a square of half the side
FLIP_PROBABILITY = 0.5
BRIGHTNESS, SATURATION, CONTRAST = 1.0, 2.0, 0.5


@dataclass
class DSAParams:
    """One sampled augmentation ω: a transform and its per-sample parameters."""

    transform: str
    values: dict[str, torch.Tensor]


def sample_dsa(strategy: tuple[str, ...], n: int, image_size: tuple[int, int], generator: torch.Generator) -> DSAParams:
    """Draw ω for up to ``n`` images (CPU draws, so a GPU run matches a CPU one)."""
    transform = strategy[int(torch.randint(len(strategy), (1,), generator=generator))]
    h, w = image_size

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    def integers(low: int, high: int) -> torch.Tensor:  # low..high inclusive
        return torch.randint(low, high + 1, (n,), generator=generator)

    if transform == "color":  # brightness, then saturation, then contrast
        values = {
            "brightness": uniform(-0.5, 0.5) * BRIGHTNESS,
            "saturation": uniform(0.0, SATURATION),
            "contrast": uniform(CONTRAST, 1.0 + CONTRAST),
        }
    elif transform == "crop":
        sh, sw = int(h * CROP_PAD_RATIO + 0.5), int(w * CROP_PAD_RATIO + 0.5)
        values = {"dy": integers(-sh, sh), "dx": integers(-sw, sw)}
    elif transform == "cutout":  # the square's top-left corner; it may hang over the border
        ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
        values = {"top": integers(0, h - ch % 2) - ch // 2, "left": integers(0, w - cw % 2) - cw // 2}
    elif transform == "flip":
        values = {"flip": torch.rand(n, generator=generator) < FLIP_PROBABILITY}
    elif transform == "scale":
        values = {"sx": uniform(1 / SCALE_RATIO, SCALE_RATIO), "sy": uniform(1 / SCALE_RATIO, SCALE_RATIO)}
    elif transform == "rotate":
        values = {"angle": uniform(-ROTATE_DEGREES, ROTATE_DEGREES) * math.pi / 180}
    else:
        raise ValueError(f"unknown DSA transform {transform!r}")
    return DSAParams(transform, values)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)  # bilinear: differentiable in x


def apply_dsa(x: torch.Tensor, params: DSAParams) -> torch.Tensor:
    """Apply ω to a batch (normalised images); image i uses row i of ω."""
    n, _, h, w = x.shape
    v = {k: t[:n].to(x.device) for k, t in params.values.items()}
    if params.transform == "color":
        x = x + v["brightness"].view(n, 1, 1, 1)
        mean = x.mean(dim=1, keepdim=True)  # saturation: scale the deviation from the grey value
        x = (x - mean) * v["saturation"].view(n, 1, 1, 1) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)  # contrast: scale the deviation from the image mean
        return (x - mean) * v["contrast"].view(n, 1, 1, 1) + mean
    if params.transform == "crop":  # shift by (dy, dx) pixels, zero padding, same size
        pad = int(max(h, w) * CROP_PAD_RATIO + 0.5)
        padded = F.pad(x, (pad, pad, pad, pad))
        rows = (pad - v["dy"]).view(n, 1, 1, 1) + torch.arange(h, device=x.device).view(1, 1, h, 1)
        cols = (pad - v["dx"]).view(n, 1, 1, 1) + torch.arange(w, device=x.device).view(1, 1, 1, w)
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        return padded[batch, channel, rows, cols]
    if params.transform == "cutout":  # zero a square of the image
        ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
        r, c = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        in_rows = (r >= v["top"][:, None]) & (r < v["top"][:, None] + ch)  # (n, h)
        in_cols = (c >= v["left"][:, None]) & (c < v["left"][:, None] + cw)  # (n, w)
        keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
        return x * keep[:, None].to(x.dtype)
    if params.transform == "flip":
        return torch.where(v["flip"].view(n, 1, 1, 1), x.flip(3), x)
    zeros = torch.zeros(n, device=x.device)
    if params.transform == "scale":
        theta = torch.stack([torch.stack([v["sx"], zeros, zeros], 1), torch.stack([zeros, v["sy"], zeros], 1)], 1)
        return _affine(x, theta)
    if params.transform == "rotate":
        cos, sin = torch.cos(v["angle"]), torch.sin(v["angle"])
        theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
        return _affine(x, theta)
    raise ValueError(f"unknown DSA transform {params.transform!r}")


def siamese_augment(
    real: torch.Tensor, syn: torch.Tensor, strategy: tuple[str, ...], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw ω, applied to both batches (identity when the strategy is empty)."""
    if not strategy:
        return real, syn
    params = sample_dsa(strategy, max(len(real), len(syn)), tuple(real.shape[-2:]), generator)
    return apply_dsa(real, params), apply_dsa(syn, params)


# ----------------------------------------------------------------- networks


def default_depth(image_size: tuple[int, int]) -> int:
    """The papers' depth 3, reduced so the last block still normalises maps of at least 4x4.

    Instance norm over a 2x2 map (8x8 digits at depth 3) divides by the spread
    of four numbers, which makes gradient matching diverge; the papers'
    inputs (28x28, 32x32) keep 7x7 or 8x8 maps in their last block.
    """
    depth = 1
    while depth < 3 and min(image_size) // 2**depth >= 4:
        depth += 1
    return depth


class ConvNet(nn.Module):
    """The papers' ConvNet: ``depth`` x [conv3x3, instance norm, ReLU, avg-pool 2], then linear."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int, depth: int | None = None):
        super().__init__()
        channels, h, w = input_shape
        layers: list[nn.Module] = []
        for _ in range(depth or default_depth((h, w))):
            # GroupNorm with one group per channel is instance norm with a learnable affine, as the authors use.
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(width, width, affine=True), nn.ReLU()]
            if min(h, w) >= 2:
                layers.append(nn.AvgPool2d(2))
                h, w = h // 2, w // 2
            channels = width
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.classifier = nn.Linear(width * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def penultimate(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of the network's last linear layer: DM's embedding ψ(x)."""
    head = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        net(x)
    finally:
        handle.remove()
    return captured[0]


def batchnorms(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The network's BatchNorm layers, of any dimension (empty for the ConvNet's instance norm)."""
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class RealSampler:
    """Random per-class batches of the (normalised) private images."""

    def __init__(self, by_class: list[torch.Tensor], generator: torch.Generator):
        self.by_class = by_class
        self.generator = generator

    def batch(self, c: int, n: int) -> torch.Tensor:
        images = self.by_class[c]
        index = torch.randperm(len(images), generator=self.generator)[:n].to(images.device)
        return images[index]


def load_public_set(path: str, input_shape: tuple[int, ...], num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A public .npz (``x``/``y`` or ``x_train``/``y_train``) as float 0..1 images and int64 labels."""
    file = Path(path).expanduser()
    where = "paradigm_options.distill.public_path"
    if not file.is_file():
        raise RayprivError(f"{where}={path!r}: the file does not exist; give an existing .npz file")
    try:
        with np.load(file, allow_pickle=False) as data:
            keys = ("x", "y") if "x" in data and "y" in data else ("x_train", "y_train")
            if keys[0] not in data or keys[1] not in data:
                raise RayprivError(
                    f"{where}={path!r} holds {sorted(data.files)}; it needs arrays x and y (or x_train and y_train)"
                )
            x, y = data[keys[0]], data[keys[1]]
    except (OSError, ValueError) as exc:
        raise RayprivError(f"{where}={path!r} is not a readable .npz file ({exc}); give an .npz with x and y") from None
    if x.shape[1:] != tuple(input_shape) or len(x) != len(y):
        raise RayprivError(
            f"{where}={path!r}: images have shape {x.shape} and labels {y.shape}; "
            f"they must be (N, {', '.join(map(str, input_shape))}) and (N,) like the audited data"
        )
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.floating) and x.size and (x.min() < 0 or x.max() > 1):
        raise RayprivError(
            f"{where}={path!r}: float images must lie in 0..1 (found {x.min():.3g}..{x.max():.3g}); "
            "save uint8 or scale them"
        )
    if not np.issubdtype(y.dtype, np.integer) or (y.size and (y.min() < 0 or y.max() >= num_classes)):
        raise RayprivError(f"{where}={path!r}: labels must be integer class ids in 0..{num_classes - 1}")
    return torch.from_numpy(np.asarray(x, dtype=np.float32)), torch.from_numpy(y.astype(np.int64))


def pick_per_class(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, ipc: int, generator: torch.Generator, source: str
) -> torch.Tensor:
    """``ipc`` random images of each class, class-major."""
    chosen = []
    for c in range(num_classes):
        index = torch.nonzero(labels.cpu() == c).flatten()
        if len(index) < ipc:
            fix = "use init: noise or public" if source == "private" else "give a larger public set"
            raise RayprivError(
                f"paradigm_options.distill.ipc={ipc} but the {source} set has only {len(index)} samples "
                f"of class {c}; lower ipc or {fix}"
            )
        chosen.append(index[torch.randperm(len(index), generator=generator)[:ipc]])
    return images[torch.cat(chosen).to(images.device)]


def pick_correct_per_class(
    images: torch.Tensor, labels: torch.Tensor, teacher: nn.Module, num_classes: int, ipc: int, generator: torch.Generator
) -> torch.Tensor:
    """DATM's initialisation: ``ipc`` random private images per class that ``teacher`` classifies correctly.

    A class with fewer than ``ipc`` correctly classified samples draws from all
    of its samples instead.  Class-major, like :func:`pick_per_class`.
    """
    with torch.no_grad():
        correct = torch.cat([teacher(chunk).argmax(1) for chunk in images.split(1024)]) == labels
    chosen = []
    for c in range(num_classes):
        of_class = labels == c
        pool = of_class & correct if int((of_class & correct).sum()) >= ipc else of_class
        index = torch.nonzero(pool.cpu()).flatten()
        if len(index) < ipc:
            pick_per_class(images, labels, num_classes, ipc, generator, "private")  # raises the usual error
        chosen.append(index[torch.randperm(len(index), generator=generator)[:ipc]])
    return images[torch.cat(chosen).to(images.device)]


# ------------------------------------------------------- the papers' evaluation
#
# The authors' evaluate_synset (DC, DSA, DM, MTT and DATM share it): SGD with
# momentum 0.9 (not Nesterov) and weight decay 5e-4, batches of 256, and after
# epoch E // 2 + 1 (counting from 0) the rate drops tenfold with a fresh
# optimiser (so the momentum restarts).  Each batch gets DSA with per-image
# parameters (not siamese: nothing to pair with), in the normalised space the
# images were distilled in.

PUBLISHED_MOMENTUM = 0.9
PUBLISHED_WEIGHT_DECAY = 5e-4
PUBLISHED_BATCH = 256
PUBLISHED_DECAY = 0.1


def published_lr(lr: float, epoch: int, epochs: int) -> float:
    """The rate of 0-based ``epoch`` of ``epochs``: ``lr`` through epoch ``epochs // 2 + 1``, then ``lr / 10``."""
    return lr * PUBLISHED_DECAY if epoch > epochs // 2 + 1 else lr


def train_published(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    epochs: int,
    strategy: tuple[str, ...],
    normalizer: Normalizer,
    generators: tuple[torch.Generator, torch.Generator],
    amp: bool = False,
) -> nn.Module:
    """Train ``model`` on a distilled set as the papers evaluate one.

    ``x`` (N, C, H, W) in pixel scale on the model's device; ``y`` class ids
    (N,) or class probabilities (N, K) (DATM's soft labels: soft cross-entropy,
    as the authors' SoftCrossEntropy on softmax targets).  ``generators`` is
    the (order, augment) pair; ``strategy`` the DSA transforms (empty: none);
    ``amp``: bfloat16 autocast on CUDA, as the config's recipe asks.
    """
    from raypriv.training import epoch_batches

    order_rng, augment_rng = generators
    model.train()
    optimizer = None
    for epoch in range(epochs):
        rate = published_lr(lr, epoch, epochs)
        if optimizer is None or optimizer.param_groups[0]["lr"] != rate:  # a fresh optimiser, as the authors'
            optimizer = torch.optim.SGD(
                model.parameters(), lr=rate, momentum=PUBLISHED_MOMENTUM, weight_decay=PUBLISHED_WEIGHT_DECAY
            )
        for index in epoch_batches(len(y), PUBLISHED_BATCH, order_rng, x.device):
            inputs = normalizer(x[index])
            if strategy:
                inputs = apply_dsa(inputs, sample_dsa(strategy, len(index), tuple(inputs.shape[-2:]), augment_rng))
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=amp and x.device.type == "cuda"):
                loss = F.cross_entropy(model(inputs), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model
