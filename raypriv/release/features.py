"""The fixed feature space for images: a random-init ConvNet, or a user's embedding.

A release attack on images compares an audit image with the synthetic images
in pixel space and in the feature space of a fixed network.  The default
network is never trained: two 3x3 convolutions (32 and 64 channels, ReLU,
a 2x2 average pool between them) and a 2x2 adaptive average pool, flattened
to 256 features, its weights drawn from PyTorch's default initialisation
under a fixed seed.  Random convolutional features keep local structure
(edges, strokes) that pixel distances weigh poorly, and need no data, so
the feature space depends on nothing private.  A user's embedding is any
callable from float32 images ``(n, C, H, W)`` in 0..1 to ``(n, F)``
features (:class:`raypriv.release.ReleaseInputs` takes it as ``embed``),
e.g. a pretrained network's penultimate layer.

The extractor runs on CPU, once per synthetic set, in batches of
:data:`BATCH` images.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

FEATURE_SEED = 20_261_205  # the default network's weights: fixed, the same for every run
BATCH = 512

Embedding = Callable[[np.ndarray], np.ndarray]  # float32 images (n, C, H, W) in 0..1 -> (n, F) features


class RandomConvNet:
    """The default embedding: a random-init ConvNet (module docstring), deterministic given ``seed``."""

    def __init__(self, channels: int, seed: int = FEATURE_SEED) -> None:
        import torch
        from torch import nn

        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # the weights only; the global stream is put back below
        try:
            self.net = nn.Sequential(
                nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2, ceil_mode=True),
                nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            ).eval()
        finally:
            torch.random.set_rng_state(generator_state)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Features float64 ``(n, 256)`` of float32 images ``(n, C, H, W)`` in 0..1, in batches of :data:`BATCH`."""
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(images), BATCH):
                batch = torch.from_numpy(np.ascontiguousarray(images[start : start + BATCH], dtype=np.float32))
                out.append(self.net(batch - 0.5).numpy().astype(np.float64))
        return np.concatenate(out) if out else np.zeros((0, 256))


def pixel_images(x: np.ndarray) -> np.ndarray:
    """float32 images in 0..1 from uint8 (0..255) or float pixels, shape kept."""
    x = np.asarray(x)
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
