"""ROC metrics of an attack: AUC, balanced accuracy, TPR at low FPR, and the log-log plot.

The empirical epsilon lower bound turns the ROC counts into the smallest
epsilon any (epsilon, delta)-DP training could have and still produce them
(Kairouz et al. 2015's hypothesis-testing view, as used by Jagielski et al.
2020 and Nasr et al. 2021): DP forces ``TPR <= e^eps FPR + delta`` and
``1 - FPR <= e^eps (1 - TPR) + delta`` at every threshold.  The counts are
samples, so we take a one-sided Clopper-Pearson upper bound on FPR and lower
bound on TPR (confidence ``1 - alpha`` each) before solving for epsilon,
and report the best threshold.  Choosing the best of many thresholds is
slightly optimistic; the bound is a diagnostic, not a certificate.

TPR at a target FPR reads the ROC curve the way it is achievable: the curve
between two operating points is the straight line a randomised threshold
attains, so the TPR at FPR ``t`` is the highest TPR at FPR <= ``t`` when a
point lies exactly at ``t``, and the linear interpolation between the two
neighbouring points otherwise.  (The reference LiRA code takes the last point
with FPR < ``t``, which under-reads the TPR whenever the grid is coarse.)
"""

from __future__ import annotations

import numpy as np
from scipy.stats import beta
from sklearn.metrics import auc as roc_auc
from sklearn.metrics import roc_auc_score, roc_curve

LOW_FPRS = {"tpr@0.1%fpr": 0.001, "tpr@1%fpr": 0.01}


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """TPR of the ROC curve ``(fpr, tpr)`` (non-decreasing) at FPR ``target``."""
    at_or_below = np.flatnonzero(fpr <= target)
    if len(at_or_below) == 0:
        return 0.0
    i = at_or_below[-1]
    if fpr[i] == target or i == len(fpr) - 1:
        return float(tpr[i])
    weight = (target - fpr[i]) / (fpr[i + 1] - fpr[i])
    return float(tpr[i] + weight * (tpr[i + 1] - tpr[i]))


def roc(is_in: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full ROC curve (every threshold kept, so low-FPR points are not dropped)."""
    fpr, tpr, _ = roc_curve(np.asarray(is_in, dtype=bool).ravel(), np.asarray(score, dtype=np.float64).ravel(), drop_intermediate=False)
    return fpr, tpr


def epsilon_lower_bound(fpr: np.ndarray, tpr: np.ndarray, n_in: int, n_out: int, delta: float = 0.0, alpha: float = 0.05) -> float:
    """Smallest epsilon consistent with the ROC counts at confidence 1 - alpha (see module docstring)."""
    false_pos = np.rint(np.asarray(fpr) * n_out)
    true_pos = np.rint(np.asarray(tpr) * n_in)
    # One-sided Clopper-Pearson bounds; beta.ppf gives nan at the degenerate ends, fixed below.
    fpr_high = np.where(false_pos >= n_out, 1.0, beta.ppf(1 - alpha, false_pos + 1, n_out - false_pos))
    tpr_low = np.where(true_pos <= 0, 0.0, beta.ppf(alpha, true_pos, n_in - true_pos + 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        upper_left = np.log((tpr_low - delta) / fpr_high)
        lower_right = np.log((1.0 - fpr_high - delta) / (1.0 - tpr_low))
    candidates = np.concatenate([upper_left, lower_right])
    candidates = candidates[np.isfinite(candidates)]
    return float(max(0.0, candidates.max())) if len(candidates) else 0.0


def attack_metrics(is_in: np.ndarray, score: np.ndarray, delta: float = 0.0) -> dict[str, float]:
    """AUC, balanced accuracy, TPR at 0.1% and 1% FPR, and the empirical epsilon lower bound."""
    is_in = np.asarray(is_in, dtype=bool).ravel()
    score = np.asarray(score, dtype=np.float64).ravel()
    fpr, tpr = roc(is_in, score)
    metrics = {
        "auc": float(roc_auc_score(is_in, score)),
        "balanced_acc": float(np.max(1.0 - (fpr + (1.0 - tpr)) / 2.0)),
    }
    for key, target in LOW_FPRS.items():
        metrics[key] = tpr_at_fpr(fpr, tpr, target)
    metrics["n_in"] = int(is_in.sum())
    metrics["n_out"] = int((~is_in).sum())
    metrics["eps_lower_bound"] = epsilon_lower_bound(fpr, tpr, metrics["n_in"], metrics["n_out"], delta)
    return metrics


def plot_roc(curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], title: str):
    """Log-log ROC curves, ``curves[paradigm][attack] = (fpr, tpr)``; returns the matplotlib Figure.

    One paradigm: one panel, a curve per attack.  Several: a panel per attack,
    a curve per paradigm (same colour for a paradigm in every panel), so the
    paradigms compare where it matters.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paradigms = list(curves)
    attacks = list(dict.fromkeys(a for per_attack in curves.values() for a in per_attack))
    if len(paradigms) == 1:
        panels = {paradigms[0]: {a: curves[paradigms[0]][a] for a in attacks}}
    else:
        panels = {a: {p: curves[p][a] for p in paradigms if a in curves[p]} for a in attacks}
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 4.4 * rows), dpi=110, squeeze=False)
    floor = 1e-4
    colours = plt.get_cmap("tab10")
    for ax, (panel, lines) in zip(axes.flat, panels.items()):
        for i, (label, (fpr, tpr)) in enumerate(lines.items()):
            auc = float(roc_auc(fpr, tpr))
            ax.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), color=colours(i % 10), linewidth=1.4,
                    label=f"{label} (AUC {auc:.3f})")
        ax.plot([floor, 1], [floor, 1], "k--", linewidth=0.8, label="chance")
        ax.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1), title=panel)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(True, which="major", linewidth=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------- uncertainty of the metrics
#
# Two kinds of 95% interval, for two different questions:
#
# * Clopper-Pearson on the TPR count (:func:`tpr_interval`): the exact binomial
#   interval for ``k = round(TPR * n_in)`` successes in ``n_in`` IN pairs.  It
#   treats the (model, sample) pairs as independent trials and the threshold
#   as fixed, so it is the interval of the operating point, not of the audit:
#   the same canary is IN for half the models, and an easy canary is caught in
#   all of them, so the pairs are positively correlated and this interval is
#   too narrow as a statement about the attack on new samples.
# * Bootstrap over audit samples (:func:`bootstrap_roc_metrics`): resample the
#   audit samples with replacement (each keeps all its models' scores), pick
#   the threshold again on each resample and recompute the metric.  This keeps
#   the correlation between a sample's pairs and the threshold's own noise
#   (the threshold is chosen on the same data it is scored on), so it is the
#   interval the report's verdicts use.  The models are held fixed.
#
# Resampling samples with replacement is the same as weighting each sample by
# how often it was drawn, so every replicate is a weighted ROC curve over one
# fixed sort of the scores: no re-sorting, vectorised over blocks of replicates.


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial interval for ``successes / trials``."""
    if trials <= 0:
        return 0.0, 1.0
    k = int(min(max(successes, 0), trials))
    tail = (1.0 - confidence) / 2.0
    low = 0.0 if k == 0 else float(beta.ppf(tail, k, trials - k + 1))
    high = 1.0 if k == trials else float(beta.ppf(1.0 - tail, k + 1, trials - k))
    return low, high


def tpr_interval(tpr: float, n_in: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a TPR measured on ``n_in`` IN pairs (count ``round(tpr * n_in)``)."""
    return clopper_pearson(int(np.rint(tpr * n_in)), n_in, confidence)


def bootstrap_weights(n_samples: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``int32[n_boot, n_samples]``: how often each audit sample is drawn in each bootstrap replicate."""
    weights = np.empty((n_boot, n_samples), dtype=np.int32)
    for replicate in range(n_boot):  # one row at a time: no (n_boot, n_samples) int64 temporary
        weights[replicate] = np.bincount(rng.integers(0, n_samples, size=n_samples), minlength=n_samples)
    return weights


def bootstrap_roc_metrics(
    is_in: np.ndarray,
    score: np.ndarray,
    weights: np.ndarray,
    fprs: dict[str, float] = LOW_FPRS,
    block_elements: int = 4_000_000,
) -> dict[str, np.ndarray]:
    """AUC and TPR at each FPR in ``fprs`` for every weighting of the audit samples.

    ``is_in`` and ``score`` are ``(n_models, n_audit)`` (column = audit
    sample); ``weights`` is ``(n_replicates, n_audit)`` (e.g. from
    :func:`bootstrap_weights`).  Returns ``{"auc": float64[n_replicates],
    key: float64[n_replicates] for key in fprs}``, computed exactly as
    :func:`attack_metrics` does (ties kept together, TPR interpolated between
    operating points): with all weights 1 the values equal its output.  A
    replicate with no IN or no OUT weight gives NaN.
    """
    is_in = np.asarray(is_in, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    if is_in.shape != score.shape or is_in.ndim != 2:
        raise ValueError(f"is_in {is_in.shape} and score {score.shape} must both be (n_models, n_audit)")
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] != score.shape[1]:
        raise ValueError(f"weights {weights.shape} must be (n_replicates, {score.shape[1]})")
    flat_score = score.ravel()
    order = np.argsort(-flat_score, kind="stable")
    sorted_score = flat_score[order]
    sorted_in = is_in.ravel()[order]
    sorted_sample = np.tile(np.arange(score.shape[1]), score.shape[0])[order]
    # The last pair of each run of tied scores: one operating point per distinct threshold.
    group_end = np.append(sorted_score[1:] != sorted_score[:-1], True)

    n_rep = len(weights)
    out: dict[str, np.ndarray] = {"auc": np.empty(n_rep)}
    out.update({key: np.empty(n_rep) for key in fprs})
    block = max(1, block_elements // max(1, len(order)))
    for start in range(0, n_rep, block):
        pair_weight = weights[start : start + block][:, sorted_sample]
        tp = np.cumsum(np.where(sorted_in, pair_weight, 0.0), axis=1)[:, group_end]
        fp = np.cumsum(np.where(sorted_in, 0.0, pair_weight), axis=1)[:, group_end]
        zeros = np.zeros((len(tp), 1))
        with np.errstate(divide="ignore", invalid="ignore"):
            tpr = np.hstack([zeros, tp / tp[:, -1:]])
            fpr = np.hstack([zeros, fp / fp[:, -1:]])
        rows = slice(start, start + len(tp))
        out["auc"][rows] = np.sum(np.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]) / 2.0, axis=1)
        last = fpr.shape[1] - 1
        for key, target in fprs.items():
            index = np.sum(fpr <= target, axis=1) - 1  # fpr is non-decreasing along each row
            take = np.arange(len(fpr))
            here_fpr, here_tpr = fpr[take, index], tpr[take, index]
            following = np.minimum(index + 1, last)
            next_fpr, next_tpr = fpr[take, following], tpr[take, following]
            with np.errstate(divide="ignore", invalid="ignore"):
                interpolated = here_tpr + (target - here_fpr) / (next_fpr - here_fpr) * (next_tpr - here_tpr)
            exact = (here_fpr == target) | (index == last)
            out[key][rows] = np.where(exact, here_tpr, interpolated)
        bad = ~(np.isfinite(tp[:, -1]) & (tp[:, -1] > 0) & (fp[:, -1] > 0))
        for values in out.values():
            values[rows][bad] = np.nan
    return out


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``values`` (NaN replicates dropped)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_bootstrap_difference(
    observed_a: float, observed_b: float, replicates_a: np.ndarray, replicates_b: np.ndarray, confidence: float = 0.95
) -> dict[str, float]:
    """Difference ``a - b`` of one metric of two paradigms, bootstrapped on the same resamples.

    ``replicates_a[r]`` and ``replicates_b[r]`` must come from the same
    resample ``r`` of the same audit samples: the pairing cancels the
    per-sample difficulty both paradigms share.  Returns the observed
    difference, its percentile interval, and ``p``: twice the smaller share of
    replicate differences on either side of zero (capped at 1), a two-sided
    bootstrap p-value for "no difference".
    """
    difference = np.asarray(replicates_a, dtype=np.float64) - np.asarray(replicates_b, dtype=np.float64)
    difference = difference[np.isfinite(difference)]
    low, high = percentile_interval(difference, confidence)
    if len(difference) == 0:
        p = float("nan")
    else:
        p = float(min(1.0, 2.0 * min(np.mean(difference <= 0.0), np.mean(difference >= 0.0))))
    return {"difference": float(observed_a - observed_b), "low": low, "high": high, "p": p, "n_boot": int(len(difference))}
