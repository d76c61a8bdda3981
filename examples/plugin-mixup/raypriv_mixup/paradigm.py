"""``mixup``: train on convex mixes of pairs of private samples, with the mixed (soft) labels.

Each synthetic record is ``lam * x_i + (1 - lam) * x_j`` for two random
private samples and ``lam ~ Beta(alpha, alpha)``, labelled
``lam * onehot(y_i) + (1 - lam) * onehot(y_j)``.  Mixup is often claimed to
blur what a model memorises; the audit measures whether it does.  With
``lam`` near 0 or 1 a record is almost a private sample, so small ``alpha``
keeps more of each sample.

Options (``paradigm_options.mixup``): ``alpha`` (Beta parameter, > 0),
``n_synthetic`` (records made; null: as many as private samples).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raypriv import LabeledSet, Paradigm, RayprivError, ShadowContext


@dataclass
class MixupOptions:
    alpha: float = 0.4
    n_synthetic: int | None = None

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise RayprivError(f"config: paradigm_options.mixup.alpha={self.alpha} must be positive (e.g. 0.4)")
        if self.n_synthetic is not None and self.n_synthetic < 1:
            raise RayprivError("config: paradigm_options.mixup.n_synthetic must be at least 1, or null")


class MixupSynth(Paradigm):
    """Mixup of private samples: each record a convex mix of two, with the mixed soft labels."""

    name = "mixup"
    Options = MixupOptions

    def synthesize(self, private: LabeledSet, context: ShadowContext) -> LabeledSet:
        rng = context.rng("mixup")  # private to this paradigm, model and stream: reproducible
        n = self.options.n_synthetic or len(private)
        i, j = rng.integers(0, len(private), size=(2, n))
        lam = rng.beta(self.options.alpha, self.options.alpha, size=n).astype(np.float32)
        x = private.x.float()
        if private.x.dtype == torch.uint8:  # images: pixel scale 0..1, as the conventions ask
            x = x / 255.0
        index_i, index_j = torch.from_numpy(i).to(x.device), torch.from_numpy(j).to(x.device)
        weight = torch.from_numpy(lam).to(x.device)
        shape = (n,) + (1,) * (x.ndim - 1)
        mixed = weight.view(shape) * x[index_i] + (1 - weight.view(shape)) * x[index_j]
        onehot = torch.nn.functional.one_hot(private.y.long(), context.num_classes).float()
        labels = weight[:, None] * onehot[index_i] + (1 - weight[:, None]) * onehot[index_j]
        return LabeledSet(mixed.contiguous(), labels.contiguous())
