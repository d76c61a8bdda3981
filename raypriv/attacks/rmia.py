"""RMIA: the likelihood ratio of one block, the ranks against a population, the offline ``a``.

Zarifzadeh et al., "Low-Cost High-Power Membership Inference Attacks" (ICML
2024).  :func:`rmia_log_ratio` and :func:`rmia_offline_log_ratio` are the
likelihood ratio ``Pr(x|theta) / Pr(x)`` of one block (the attacks ``rmia``
and ``rmia_offline``); :func:`rmia_ranks` turns ratios into scores (the share of
population samples ``z`` that ``x`` beats by ``gamma``), computes the
population set's ratios (:func:`population_log_ratio`; every model is OUT for
every population sample, so ``Pr(z)`` is the mean over all other models), and
fits the offline approximation's ``a`` (:func:`fit_offline_a`).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from raypriv.attacks.block import SampleBlock, loo_sum
from raypriv.attacks.lira import LOG_FLOOR

RMIA_GAMMA = 1.0  # RMIA's threshold on the ratio of likelihood ratios (the paper's gamma)


def offline_prior(out_mean: np.ndarray, a: np.ndarray | float) -> np.ndarray:
    """RMIA's offline linear approximation of ``Pr(x)`` from the OUT mean ``Pr_OUT(x)``."""
    return 0.5 * ((1.0 + a) * out_mean + (1.0 - a))


OFFLINE_A_GRID = np.round(np.linspace(0.0, 1.0, 11), 2)
_FIT_TARGETS = 32  # reference targets per fold when fitting a: enough for an AUC, bounded cost
_FIT_SAMPLES = 4096  # and audit samples


def _share_auc(is_in: np.ndarray, shares: np.ndarray) -> float:
    """AUC (ties count half) of RMIA scores over ``(T, N)`` rows: shares ``k / (N - 1)``, so counting sorts them."""
    counts = np.rint(shares * max(shares.shape[1] - 1, 1)).astype(np.int64).ravel()
    is_in = is_in.ravel()
    size = int(counts.max()) + 1
    hist_in = np.bincount(counts[is_in], minlength=size).astype(np.float64)
    hist_out = np.bincount(counts[~is_in], minlength=size).astype(np.float64)
    below = np.cumsum(hist_out) - hist_out  # OUT scores strictly below each value
    return float((hist_in * (below + 0.5 * hist_out)).sum() / max(hist_in.sum() * hist_out.sum(), 1.0))


def fit_offline_a(probs: np.ndarray, keep: np.ndarray, gamma: float = RMIA_GAMMA) -> np.ndarray:
    """RMIA offline's ``a`` per target, ``(M,)``, from ``Pr(x|theta)`` ``(M, N)``: the grid value with the best AUC
    when up to ``_FIT_TARGETS`` models of the other fold are attacked with that fold's other OUT models."""
    probs, keep = np.asarray(probs, dtype=np.float64), np.asarray(keep, dtype=bool)
    if probs.shape[1] > _FIT_SAMPLES:  # an evenly spaced subset of the audit samples: one scalar needs no more
        columns = np.linspace(0, probs.shape[1] - 1, _FIT_SAMPLES).astype(np.int64)
        probs, keep = probs[:, columns], keep[:, columns]
    fold = np.arange(len(keep)) % 2
    a = np.empty(len(keep))
    for reference_fold in (0, 1):
        models = np.flatnonzero(fold == reference_fold)
        p, out = probs[models], ~keep[models]
        out_sum, out_count = (p * out).sum(axis=0), out.sum(axis=0)
        targets = np.arange(min(len(models), _FIT_TARGETS))
        count = out_count - out[targets]
        fallback = float(p[out].mean()) if out.any() else 0.5  # a sample with no other OUT reference here
        with np.errstate(divide="ignore", invalid="ignore"):
            out_mean = np.where(count > 0, (out_sum - out[targets] * p[targets]) / count, fallback)
        log_p = np.log(p[targets] + LOG_FLOOR)
        labels = keep[models[targets]]
        aucs = [_share_auc(labels, rmia_ranks(log_p - np.log(offline_prior(out_mean, v) + LOG_FLOOR), gamma))
                for v in OFFLINE_A_GRID]
        a[fold != reference_fold] = OFFLINE_A_GRID[int(np.argmax(aucs))]
    return a


def rmia_ranks(log_ratio: np.ndarray, gamma: float = RMIA_GAMMA, population: np.ndarray | None = None) -> np.ndarray:
    """Per target row: share of the other samples ``z`` with ``ratio_x / ratio_z > gamma``.

    With ``population`` (``(n_targets, P)`` log ratios of the population
    set, from :func:`population_log_ratio`) ``z`` runs over those instead.

    ``log_ratio``: ``(n_targets, n_audit)`` log likelihood ratios.  The
    condition is ``log_ratio_z < log_ratio_x - log(gamma)``: with the row
    sorted, the count for every ``x`` is one binary search of its threshold,
    ``O(N log N)`` per target; no ``N x N`` comparison matrix is formed.
    Returns float64 scores in [0, 1].
    """
    log_ratio = np.asarray(log_ratio, dtype=np.float64)
    if population is not None:
        return _population_ranks(log_ratio, np.asarray(population, dtype=np.float64), float(np.log(gamma)))
    n = log_ratio.shape[1]
    shift = float(np.log(gamma))
    order = np.argsort(log_ratio, axis=1)
    ordered = np.take_along_axis(log_ratio, order, axis=1)
    thresholds = ordered - shift  # ascending too, so each search starts where the last one ended
    count = np.empty(ordered.shape, dtype=np.int64)
    for row in range(len(ordered)):
        count[row] = np.searchsorted(ordered[row], thresholds[row], side="left")  # z with log ratio < threshold
    count -= ordered < thresholds  # x itself is no population sample (it counts only when gamma < 1)
    out = np.empty(log_ratio.shape, dtype=np.float64)
    np.put_along_axis(out, order, count / max(n - 1, 1), axis=1)
    return out


def _population_ranks(log_ratio: np.ndarray, population: np.ndarray, shift: float) -> np.ndarray:
    """Per row: share of the row's population ratios below ``log_ratio - shift``."""
    ordered = np.sort(population, axis=1)
    out = np.empty(log_ratio.shape, dtype=np.float64)
    for row in range(len(ordered)):
        out[row] = np.searchsorted(ordered[row], log_ratio[row] - shift, side="left")
    return out / max(population.shape[1], 1)


def population_log_ratio(scores: np.ndarray, offline_a: np.ndarray | None = None) -> np.ndarray:
    """``(M, P)`` log ``Pr(z|theta) / Pr(z)`` of each target on the population set, from its ``(M, P, Q)`` LiRA scores.

    ``Pr(z)``: the mean over the other ``M - 1`` models (all OUT for ``z``),
    or with ``offline_a`` (per target) the offline approximation of that
    OUT mean, as :func:`raypriv.attacks.rmia_offline_log_ratio` uses.
    """
    probs = np.concatenate([expit(scores[i : i + 64].astype(np.float64)).mean(axis=2) for i in range(0, len(scores), 64)])
    out_mean = (probs.sum(axis=0)[None, :] - probs) / max(len(probs) - 1, 1)
    prior = out_mean if offline_a is None else offline_prior(out_mean, np.asarray(offline_a)[:, None])
    return np.log(probs + LOG_FLOOR) - np.log(prior + LOG_FLOOR)


def loo_prior(probs: np.ndarray, member: np.ndarray, ids_in: np.ndarray, ids_out: np.ndarray) -> np.ndarray:
    """RMIA's ``Pr(x)`` per (sample, target) for one block: mean over the leave-one-out IN and OUT shadows.

    ``probs``: ``(B, M)``.  Sums of a group less one member are prefix plus
    suffix sums in model-id order (no subtraction, so a dominant target's own
    probability cannot cancel the small ones of its shadows).
    """
    total = loo_sum(probs, member, ids_in) + loo_sum(probs, ~member, ids_out)
    return total / (ids_in.shape[1] - 1 + ids_out.shape[1] - 1)


def rmia_log_ratio(block: SampleBlock) -> np.ndarray:
    """``log Pr(x|theta) - log Pr(x)``; :func:`rmia_ranks` turns it into the RMIA score per target."""
    probs = block.label_probability
    prior = loo_prior(probs, block.member, block.ids_in, block.ids_out)
    return np.log(probs + LOG_FLOOR) - np.log(prior + LOG_FLOOR)


def rmia_offline_log_ratio(block: SampleBlock) -> np.ndarray:
    """``log Pr(x|theta) - log Pr(x)`` with the offline ``Pr(x) = ((1 + a) Pr_OUT(x) + 1 - a) / 2``."""
    probs = block.label_probability
    out = loo_sum(probs, ~block.member, block.ids_out) / (block.ids_out.shape[1] - 1)
    prior = offline_prior(out, block.offline_a[None, :])
    return np.log(probs + LOG_FLOOR) - np.log(prior + LOG_FLOOR)
