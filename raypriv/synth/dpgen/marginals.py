"""``dpgen-marginals``: a DP tabular generator from noisy label-conditional marginals.

The audited model trains only on records sampled from noisy marginals of
the private set, so (post-processing) it is as private as the measurements.

Why not a library: smartnoise-synth (MST, AIM) pins ``opacus<0.15`` and
pulls in JAX and private-pgm, which would downgrade the opacus that
``dpsgd`` needs; it cannot be installed beside raypriv's dependencies.  So
this module implements a plain noisy-marginal method (a DP naive-Bayes
generator, the simplest member of the "select-measure-generate" family of
MST and AIM, with the label-feature marginals fixed in advance):

1. **Discretise** each feature into ``bins`` equal-width bins over
   ``[-clip, clip]`` standard deviations of the run's public Normalizer
   (data-independent edges; see :mod:`raypriv.synth.dpgen.common` for why
   the normaliser statistics are treated as public).
2. **Measure** with ``mechanism`` noise: the label marginal (K counts) and,
   for every feature ``j``, the 2-way (bin of feature j, label) table
   (``bins x K`` counts).  Adding or removing one record changes each of the
   ``D + 1`` tables by 1 in one cell: per-table L1 and L2 sensitivity 1.
   The budget is split evenly, each table is one invocation, and
   ``dpgen.common.calibrate`` accounts the ``D + 1`` (zCDP for Gaussian,
   pure-DP composition for Laplace).
3. **Post-process** (no privacy cost): the label counts are the
   inverse-variance weighted mean of the measured label marginal and the
   column sums of the D tables (every table measures them), clipped at 0;
   each noisy column ``table_j[:, y]`` is projected (Euclidean) onto the
   probability simplex after dividing by the class count, giving
   non-negative conditionals ``p(bin_j | y)`` that are consistent with one
   label distribution.
4. **Sample** ``n`` records: the label from ``p(y)``, then each feature's
   bin from ``p(bin_j | y)`` independently, then a value uniformly within
   the bin (mapped back to raw features).  ``n`` is the noisy record count
   (``n_synthetic: null``, free: it is a DP output) or a fixed number.

Features are independent given the label, so the synthetic set keeps each
feature's class-conditional distribution and loses feature-feature
correlations; a classifier trained on it behaves like a (smoothed) naive
Bayes model.  One-hot features come back as values spread within their bin
(near 0 and 1), not exact 0/1.

Options (``paradigm_options.dpgen-marginals``): ``epsilon`` (> 0),
``delta`` (Gaussian only; Laplace is pure DP and reports ``delta = 0``),
``mechanism`` (``gaussian`` or ``laplace``), ``bins``, ``clip``,
``n_synthetic``.  ``context.info`` records the accounted ``epsilon`` and
``delta``, ``noise_multiplier`` (noise scale per unit per-table
sensitivity), ``noise_scale``, ``mechanism``, ``compositions`` (``D + 1``),
``rho`` (Gaussian) and ``noisy_count``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from raypriv.synth.base import LabeledSet, Paradigm, ShadowContext
from raypriv.synth.dpgen.common import NoiseCalibration, calibrate, require_tabular, tabular_records
from raypriv.synth.dpgen.options import DPGenMarginalsOptions


@dataclass
class NoisyMarginals:
    """The noisy measurements: label counts (K,) and one (bins, K) table per feature."""

    label: np.ndarray
    tables: np.ndarray  # (D, bins, K)


def measure(bins: np.ndarray, y: np.ndarray, num_classes: int, levels: int, noise: NoiseCalibration,
            rng: np.random.Generator) -> NoisyMarginals:
    """Noisy label marginal and (feature bin, label) tables of the binned records ``bins`` (N, D)."""
    n_features = bins.shape[1]
    label = np.bincount(y, minlength=num_classes).astype(np.float64)
    tables = np.zeros((n_features, levels, num_classes))
    for j in range(n_features):
        np.add.at(tables[j], (bins[:, j], y), 1.0)
    return NoisyMarginals(label + noise.sample(rng, label.shape), tables + noise.sample(rng, tables.shape))


def project_to_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of each row of ``v`` onto the probability simplex (Duchi et al., ICML 2008)."""
    v = np.atleast_2d(np.asarray(v, dtype=np.float64))
    u = -np.sort(-v, axis=1)
    cumulative = np.cumsum(u, axis=1) - 1.0
    k = np.arange(1, v.shape[1] + 1)
    support = (u - cumulative / k) > 0
    rho = support.shape[1] - 1 - np.argmax(support[:, ::-1], axis=1)  # last index where the condition holds
    theta = cumulative[np.arange(len(v)), rho] / (rho + 1)
    return np.maximum(v - theta[:, None], 0.0)


@dataclass
class MarginalModel:
    """Consistent, non-negative distributions estimated from :class:`NoisyMarginals`."""

    label_counts: np.ndarray  # (K,) non-negative
    conditionals: np.ndarray  # (D, bins, K): p(bin_j | y), each column sums to 1

    @property
    def label_distribution(self) -> np.ndarray:
        total = self.label_counts.sum()
        if total <= 0:
            return np.full(len(self.label_counts), 1.0 / len(self.label_counts))
        return self.label_counts / total


def estimate(noisy: NoisyMarginals) -> MarginalModel:
    """Post-process the measurements (step 3 of the module docstring); costs no privacy."""
    n_features, levels, _ = noisy.tables.shape
    # Every cell has the same noise variance v: the label marginal measures each class count with
    # variance v, each table's column sum with variance levels * v.  Inverse-variance weighting:
    column_sums = noisy.tables.sum(axis=1)  # (D, K)
    label = (noisy.label + column_sums.sum(axis=0) / levels) / (1.0 + n_features / levels)
    label = np.maximum(label, 0.0)
    scale = np.maximum(label, 1.0)  # a class estimated empty still gets a valid conditional
    columns = np.transpose(noisy.tables, (0, 2, 1)) / scale[None, :, None]  # (D, K, bins)
    conditionals = project_to_simplex(columns.reshape(-1, levels)).reshape(n_features, -1, levels)
    return MarginalModel(label, np.transpose(conditionals, (0, 2, 1)))


def sample_bins(model: MarginalModel, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` records of (bins (n, D), labels (n,)) from the label-conditional model."""
    y = rng.choice(len(model.label_counts), size=n, p=model.label_distribution)
    n_features, levels, _ = model.conditionals.shape
    bins = np.empty((n, n_features), dtype=np.int64)
    for j in range(n_features):
        cdf = np.cumsum(model.conditionals[j][:, y], axis=0)  # (bins, n)
        bins[:, j] = np.minimum((rng.random(n)[None, :] > cdf).sum(axis=0), levels - 1)
    return bins, y.astype(np.int64)


class DPGenMarginals(Paradigm):
    name = "dpgen-marginals"
    Options = DPGenMarginalsOptions

    @classmethod
    def check_data(cls, name: str, input_shape: tuple[int, ...], num_classes: int) -> None:
        require_tabular(name, input_shape)

    def synthesize(self, private: LabeledSet, context: ShadowContext) -> LabeledSet:
        opts: DPGenMarginalsOptions = self.options
        quantizer, x, y = tabular_records(private, context, opts.bins, opts.clip)
        n_features = x.shape[1]
        noise = calibrate(opts.mechanism, opts.epsilon, opts.delta, n_features + 1, 1.0, 1.0)
        noisy = measure(quantizer.bin(x), y, context.num_classes, opts.bins, noise, context.rng("measure"))
        model = estimate(noisy)
        noisy_count = float(model.label_counts.sum())
        n = opts.n_synthetic or max(int(round(noisy_count)), context.num_classes)
        sample_rng = context.rng("sample")
        bins, labels = sample_bins(model, n, sample_rng)
        features = quantizer.sample(bins, sample_rng)
        context.info.update(noise.info())
        context.info.update(bins=opts.bins, noisy_count=noisy_count, n_synthetic=n)
        device = private.x.device
        return LabeledSet(torch.from_numpy(features).to(device), torch.from_numpy(labels).to(device))
