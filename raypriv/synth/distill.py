"""``distill``: dataset distillation (condensation) into ``ipc`` images per class.

The private set is condensed into a tiny synthetic set, ``ipc`` learnable
images per class, and the audited model is trained on that set with the
standard recipe.  Three published methods:

* ``dm``  Distribution Matching.  Zhao & Bilen, "Dataset Condensation with
  Distribution Matching", WACV 2023.  Each iteration draws a freshly
  initialised embedding network ψ and, per class c, moves the synthetic images
  so that their mean embedding matches the real one:
  ``L = Σ_c ‖ mean ψ(A_ω(T_c)) − mean ψ(A_ω(S_c)) ‖²``, with A_ω a DSA
  augmentation shared by both batches.
* ``dc``  Dataset Condensation with gradient matching.  Zhao, Mopuri &
  Bilen, ICLR 2021.  An outer loop over network initialisations; inside it,
  alternate (i) one synthetic-image update that makes the per-class gradients
  of the classification loss on synthetic data match those on real data
  (a layer-wise cosine distance), with (ii) a few network updates on the
  synthetic set, so that matching also happens along the training trajectory.
* ``dsa`` Differentiable Siamese Augmentation.  Zhao & Bilen, ICML 2021.  DC
  with the same sampled augmentation applied to the real and the synthetic
  batch of every matching step (and augmented network updates).

All optimisation happens in the network's normalised input space
(``context.normalizer``); the result is mapped back to pixel scale and clamped
to 0..1, with hard ``int64`` labels, classes in order.

**Privacy note.**  ``init: real`` (the papers' default) starts from randomly
chosen *private* samples of each class; with a short optimisation the
returned images stay close to those samples, so they leak membership almost
like the raw data.  ``noise`` (Gaussian noise in normalised space) and
``public`` (samples of a user-given public set) avoid that starting-point
leak; whatever leaks then came through the matching itself.

Embedding / matching networks (``embed_arch``): the papers use "ConvNet",
``depth`` blocks of [3x3 conv, instance norm, ReLU, 2x2 average pooling],
then a linear classifier.  Instance norm makes every image's features
independent of its batch, which matching per-class batches relies on.
``convnet`` (the default) is that network with 32 channels instead of 128
(CPU budget) and, on small images, fewer blocks (:func:`default_depth`: 2 on
8x8 digits, 3 from 16x16 up).  ``model`` uses the audited architecture
instead, BatchNorm handled as in the authors' code (per-class batches in
train mode for DM, statistics frozen from a mixed real batch for DC/DSA);
the default learning rates were chosen for ``convnet``.

Differences from the papers, all for a ~10 s CPU budget per model: far fewer
iterations (300 for DM instead of 20,000; 10 for DC/DSA instead of 1,000),
``inner_loop`` 10 instead of 50, real batches of 64 per class instead of 256,
and one full-batch step per network update in DC/DSA.  The audited model is
trained with the config's recipe for ``train_epochs`` (default 300) epochs,
as in the papers' evaluation protocol: ``ipc * classes`` images make one
batch, so the recipe's 15 epochs would be only 15 steps.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raypriv.errors import RayprivError
from raypriv.config import ExperimentConfig, TrainConfig
from raypriv.synth import LabeledSet, Paradigm, ShadowContext, register

# Per-method defaults for fields left at None.  The papers run 1,000 (DC/DSA)
# or 20,000 (DM) iterations on a GPU; these fit ~10 s per model on one CPU
# thread on digits.  The learning rates are the papers' (DM: 1.0, DC/DSA: 0.1,
# both SGD with momentum 0.5).
DEFAULT_ITERATIONS = {"dm": 300, "dc": 10, "dsa": 10}
DEFAULT_LR_IMAGE = {"dm": 1.0, "dc": 0.1, "dsa": 0.1}
IMAGE_MOMENTUM = 0.5

DSA_TRANSFORMS = ("color", "crop", "cutout", "flip", "scale", "rotate")
DSA_DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


def _fail(field: str, value: object, allowed: str) -> None:
    raise RayprivError(f"paradigm_options.distill.{field}={value!r} is not allowed; {allowed}")


@dataclass
class DistillOptions:
    method: Literal["dm", "dc", "dsa"] = "dm"
    ipc: int = 10  # synthetic images per class
    init: Literal["real", "noise", "public"] = "real"
    public_path: str | None = None  # .npz with x/y or x_train/y_train (for init: public)
    iterations: int | None = None  # outer iterations; None: the method's default above
    lr_image: float | None = None  # synthetic-image learning rate; None: the paper's
    batch_real: int = 64  # real images per class per matching step (papers: 256)
    outer_loop: int = 10  # dc/dsa: matching steps per network initialisation (paper, ipc 10)
    inner_loop: int = 10  # dc/dsa: network updates on the synthetic set between them (paper: 50 at ipc 10)
    lr_net: float = 0.01  # dc/dsa: learning rate of those network updates (paper)
    dsa_strategy: str = DSA_DEFAULT_STRATEGY  # dm and dsa; "none" switches augmentation off
    embed_arch: Literal["convnet", "model"] = "convnet"
    embed_width: int = 32  # convnet channels (papers: 128)
    embed_depth: int | None = None  # convnet blocks; None: 3 as the papers, fewer for small images (default_depth)
    train_epochs: int | None = 300  # None: the config's train.epochs (see Distill.train)

    def __post_init__(self) -> None:
        # Fill the method-specific defaults here so the recipe hash covers the values used.
        if self.iterations is None:
            self.iterations = DEFAULT_ITERATIONS[self.method]
        if self.lr_image is None:
            self.lr_image = DEFAULT_LR_IMAGE[self.method]
        if self.ipc < 1:
            _fail("ipc", self.ipc, "it must be at least 1")
        if self.iterations < 0:
            _fail("iterations", self.iterations, "it must be at least 0 (0 returns the initialisation)")
        if not self.lr_image > 0:
            _fail("lr_image", self.lr_image, "it must be positive")
        if self.batch_real < 1:
            _fail("batch_real", self.batch_real, "it must be at least 1")
        if self.outer_loop < 1:
            _fail("outer_loop", self.outer_loop, "it must be at least 1")
        if self.inner_loop < 0:
            _fail("inner_loop", self.inner_loop, "it must be at least 0")
        if not self.lr_net > 0:
            _fail("lr_net", self.lr_net, "it must be positive")
        if self.embed_width < 1:
            _fail("embed_width", self.embed_width, "it must be at least 1")
        if self.embed_depth is not None and self.embed_depth < 1:
            _fail("embed_depth", self.embed_depth, "it must be at least 1, or null for automatic")
        if self.train_epochs is not None and self.train_epochs < 1:
            _fail("train_epochs", self.train_epochs, "it must be at least 1, or null for the config's train.epochs")
        if self.dsa_strategy != "none":
            unknown = [t for t in self.dsa_strategy.split("_") if t not in DSA_TRANSFORMS]
            if unknown or not self.dsa_strategy:
                _fail(
                    "dsa_strategy",
                    self.dsa_strategy,
                    f"give transforms from {list(DSA_TRANSFORMS)} joined by '_' "
                    f"(e.g. {DSA_DEFAULT_STRATEGY!r}), or 'none'",
                )
        if self.init == "public" and self.public_path is None:
            raise RayprivError(
                "paradigm_options.distill.init='public' needs paradigm_options.distill.public_path "
                "(an .npz file with x/y or x_train/y_train); set public_path or use init: real or noise"
            )

    @property
    def strategy(self) -> tuple[str, ...]:
        """The DSA transforms this method uses: none for plain DC (as in its paper)."""
        if self.method == "dc" or self.dsa_strategy == "none":
            return ()
        return tuple(self.dsa_strategy.split("_"))


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


def _batchnorms(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
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


def class_batches(
    syn: torch.Tensor, ipc: int, sampler: RealSampler, options: DistillOptions, generator: torch.Generator
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per class c: a fresh real batch and the synthetic images of c, both under one DSA draw."""
    real_batches, syn_batches = [], []
    for c in range(len(syn) // ipc):
        real_c, syn_c = siamese_augment(
            sampler.batch(c, options.batch_real), syn[c * ipc : (c + 1) * ipc], options.strategy, generator
        )
        real_batches.append(real_c)
        syn_batches.append(syn_c)
    return real_batches, syn_batches


# ------------------------------------------------------- distribution matching


def dm_loss(net: nn.Module, real: list[torch.Tensor], syn: list[torch.Tensor]) -> torch.Tensor:
    """Σ_c ‖mean ψ(real_c) − mean ψ(syn_c)‖² for one embedding network ψ.

    Classes are embedded separately so a BatchNorm network (embed_arch: model)
    normalises each class with its own statistics, as in the authors' code.
    """
    loss = torch.zeros((), device=syn[0].device)
    for real_c, syn_c in zip(real, syn):
        with torch.no_grad():
            target = penultimate(net, real_c).mean(0)
        loss = loss + (target - penultimate(net, syn_c).mean(0)).pow(2).sum()
    return loss


def distribution_matching(
    syn: torch.Tensor,
    ipc: int,
    sampler: RealSampler,
    new_network: Callable[[], nn.Module],
    options: DistillOptions,
    augment_generator: torch.Generator,
) -> tuple[torch.Tensor, float]:
    """DM: ``options.iterations`` steps, each with a fresh random embedding network.

    Returns the optimised images (class-major, ``ipc`` per class) and the last loss.
    """
    syn = syn.detach().clone().requires_grad_(True)
    optimizer = torch.optim.SGD([syn], lr=options.lr_image, momentum=IMAGE_MOMENTUM)
    loss = torch.zeros(())
    for _ in range(options.iterations):
        net = new_network()
        net.train()  # as the authors: BatchNorm (if any) uses batch statistics
        net.requires_grad_(False)  # ψ stays random; only the images learn
        loss = dm_loss(net, *class_batches(syn, ipc, sampler, options, augment_generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return syn.detach(), float(loss.detach())


# ---------------------------------------------------------- gradient matching


def layerwise_distance(real_grads: list[torch.Tensor], syn_grads: list[torch.Tensor]) -> torch.Tensor:
    """DC's distance: Σ over layers and output units of (1 − cosine similarity).

    A conv gradient (out, in, k, k) is compared per output channel as a
    vector of in·k·k entries, a linear one per output row.  Biases and
    normalisation parameters are left out, as in the paper.
    """
    total = torch.zeros((), device=syn_grads[0].device)
    for g_real, g_syn in zip(real_grads, syn_grads):
        if g_real.dim() == 1:
            continue
        a, b = g_real.flatten(1), g_syn.flatten(1)
        total = total + (1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-6)).sum()
    return total


def dc_loss(
    net: nn.Module, real: list[torch.Tensor], syn: list[torch.Tensor], create_graph: bool = True
) -> torch.Tensor:
    """Σ_c D(∇θ CE(net(real_c), c), ∇θ CE(net(syn_c), c)), differentiable w.r.t. syn."""
    params = [p for p in net.parameters() if p.requires_grad]
    loss = torch.zeros((), device=syn[0].device)
    for c, (real_c, syn_c) in enumerate(zip(real, syn)):
        target_real = torch.full((len(real_c),), c, device=real_c.device)
        target_syn = torch.full((len(syn_c),), c, device=syn_c.device)
        real_grads = torch.autograd.grad(F.cross_entropy(net(real_c), target_real), params)
        syn_grads = torch.autograd.grad(F.cross_entropy(net(syn_c), target_syn), params, create_graph=create_graph)
        loss = loss + layerwise_distance([g.detach() for g in real_grads], syn_grads)
    return loss


def _freeze_batchnorm_statistics(net: nn.Module, sampler: RealSampler, num_classes: int) -> None:
    """The authors' BatchNorm handling for gradient matching: estimate the statistics
    on a real batch of all classes (16 each), then keep them fixed so that per-class
    batches do not get per-class normalisation."""
    norms = _batchnorms(net)
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: after one batch, exactly its statistics
    net.train()
    with torch.no_grad():
        net(torch.cat([sampler.batch(c, 16) for c in range(num_classes)]))
    for norm in norms:
        norm.eval()


def gradient_matching(
    syn: torch.Tensor,
    ipc: int,
    sampler: RealSampler,
    new_network: Callable[[], nn.Module],
    options: DistillOptions,
    augment_generator: torch.Generator,
) -> tuple[torch.Tensor, float]:
    """DC (``options.strategy`` empty) or DSA: gradient matching along training trajectories."""
    syn = syn.detach().clone().requires_grad_(True)
    optimizer_image = torch.optim.SGD([syn], lr=options.lr_image, momentum=IMAGE_MOMENTUM)
    num_classes = len(syn) // ipc
    labels = torch.arange(num_classes, device=syn.device).repeat_interleave(ipc)
    loss = torch.zeros(())
    for _ in range(options.iterations):
        net = new_network()
        optimizer_net = torch.optim.SGD(net.parameters(), lr=options.lr_net)
        for outer in range(options.outer_loop):
            # (i) update the synthetic images to match per-class gradients on this network
            net.train()
            _freeze_batchnorm_statistics(net, sampler, num_classes)
            loss = dc_loss(net, *class_batches(syn, ipc, sampler, options, augment_generator))
            optimizer_image.zero_grad(set_to_none=True)
            loss.backward()
            optimizer_image.step()
            if outer == options.outer_loop - 1:
                break  # the last network update would not be used
            # (ii) train the network on the (fixed) synthetic set, augmented for DSA;
            # one full-batch step per inner iteration (the authors' batch of 256 holds it at ipc <= 25)
            net.train()
            images = syn.detach()
            for _ in range(options.inner_loop):
                inputs = images
                if options.strategy:  # plain augmentation here: nothing to pair with
                    params = sample_dsa(options.strategy, len(images), tuple(images.shape[-2:]), augment_generator)
                    inputs = apply_dsa(images, params)
                step_loss = F.cross_entropy(net(inputs), labels)
                optimizer_net.zero_grad(set_to_none=True)
                step_loss.backward()
                optimizer_net.step()
    return syn.detach(), float(loss.detach())


# ------------------------------------------------------------- the paradigm


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


def _pick_per_class(
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


@register
class Distill(Paradigm):
    name = "distill"
    Options = DistillOptions

    def _new_network_factory(self, context: ShadowContext, generator: torch.Generator) -> Callable[[], nn.Module]:
        """Fresh randomly initialised networks, each seeded from ``generator``."""
        options = self.options
        count = 0

        def new_network() -> nn.Module:
            nonlocal count
            count += 1
            if options.embed_arch == "model":
                return context.build_model(stream=f"{context.paradigm}/network/{count}")
            with torch.random.fork_rng(devices=[]):  # built on the CPU, so the same weights on any device
                torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
                net = ConvNet(context.input_shape, context.num_classes, options.embed_width, options.embed_depth)
            return net.to(context.device)

        return new_network

    def training_recipe(self, config: ExperimentConfig) -> TrainConfig:
        """The standard recipe; ``train_epochs`` only changes its epoch count.

        The papers evaluate a distilled set by training on it for hundreds of
        epochs (300 to 1000 in the authors' code); the config's epochs, sized
        for the full data, amount to few steps on ``ipc x classes`` images.
        """
        if self.options.train_epochs is None:
            return config.train
        return dataclasses.replace(config.train, epochs=self.options.train_epochs)

    def synthesize(self, private: LabeledSet, context: ShadowContext) -> LabeledSet:
        options = self.options
        if len(context.input_shape) != 3:
            raise RayprivError(
                f"paradigm 'distill' needs image inputs (C, H, W) but the dataset has shape {context.input_shape}"
            )
        k, ipc = context.num_classes, options.ipc
        real = context.normalizer(private.x)
        by_class = [real[private.y == c] for c in range(k)]
        for c, images in enumerate(by_class):
            if len(images) == 0:
                raise RayprivError(
                    f"paradigm 'distill' (model {context.model_id}): the private set has no samples of class {c}, "
                    "so there is nothing to match; use a larger private set"
                )

        # Initialise the synthetic set (normalised space, class-major).
        init_generator = context.generator("init_images")
        if options.init == "real":
            syn = _pick_per_class(real, private.y, k, ipc, init_generator, "private")
        elif options.init == "noise":
            syn = torch.randn((k * ipc, *context.input_shape), generator=init_generator).to(context.device)
        else:
            x_public, y_public = load_public_set(options.public_path, context.input_shape, k)
            chosen = _pick_per_class(x_public, y_public, k, ipc, init_generator, "public")
            syn = context.normalizer(chosen.to(context.device))

        sampler = RealSampler(by_class, context.generator("real_batches"))
        new_network = self._new_network_factory(context, context.generator("networks"))
        match = distribution_matching if options.method == "dm" else gradient_matching
        syn, final_loss = match(syn, ipc, sampler, new_network, options, context.generator("dsa"))

        # The matching loss of the last step (a stochastic estimate; DM and DC scales differ).
        context.info["distill_final_loss"] = final_loss
        x = context.normalizer.denormalize(syn).clamp(0.0, 1.0).float()
        y = torch.arange(k, device=context.device).repeat_interleave(ipc)
        return LabeledSet(x, y)
