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
