"""Reference implementations, for tests and analysis only: the audit path never imports this module.

Each function is the plain whole-array float64 version of a definition the
audit computes elsewhere in bounded memory, written to read like the
definition (see the docstring of :mod:`raypriv.attacks` for the choices):

* :func:`lira_scores_from_logits`, :func:`loss_attack`,
  :func:`label_probabilities`, :func:`lira_attack`, :func:`lira_aerni_attack`,
  :func:`rmia_attack`: the attacks on whole ``(n_models, n_audit, n_queries,
  C)`` logit arrays; the engine is :func:`raypriv.attacks.score_attacks`.
  :func:`rmia_attack` is written from the authors' formula (explicit
  reference sets, ``scipy.stats.trim_mean``, products of ratios, a vote
  per ``(x, z)`` pair), sharing no code with :mod:`raypriv.attacks.rmia`.
* :func:`roc` and :func:`sklearn_metrics`: ROC metrics on sklearn's full
  curve; the engine is :func:`raypriv.metrics.roc_metrics`.
* :func:`best_threshold_epsilon`: the epsilon "lower bound" of the best ROC
  threshold, each bounded at 95% on the same data.  It is *not* a valid
  bound (it exceeds a known epsilon in about a third of simulated audits:
  ``benchmarks/epsilon_coverage.py``); the audit reports
  :func:`raypriv.metrics.epsilon_lower_bound_from_scores`.  It stays here as
  the comparison the coverage benchmark and tests draw.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import trim_mean
from sklearn.metrics import roc_auc_score, roc_curve

from raypriv.attacks.block import STD_FLOOR, log_normal_pdf
from raypriv.attacks.lira import LOG_FLOOR
from raypriv.metrics import LOW_FPRS, clopper_pearson_lower, clopper_pearson_upper, tpr_at_fpr

# ------------------------------------------------------------------ attacks


def lira_scores_from_logits(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``log p_y - log sum_{y' != y} p_y'`` per model, sample and query.

    ``logits``: ``(n_models, n_audit, n_queries, C)``; ``labels``: ``(n_audit,)``.
    Returns float64 ``(n_models, n_audit, n_queries)``.
    """
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    sample = np.arange(len(labels))
    p_true = p[:, sample, :, labels].copy()  # advanced indexing moves the sample axis first
    p[:, sample, :, labels] = 0.0
    p_wrong = p.sum(axis=-1)
    p_true = np.moveaxis(p_true, 0, 1)  # back to (n_models, n_audit, n_queries)
    return np.log(p_true + LOG_FLOOR) - np.log(p_wrong + LOG_FLOOR)


def loss_attack(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Minus the cross-entropy on query 0: ``(n_models, n_audit)``."""
    z = logits[:, :, 0, :].astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    log_softmax = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return log_softmax[:, np.arange(len(labels)), labels]


def label_probabilities(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0, pooled: bool = True) -> np.ndarray:
    """RMIA's ``Pr(x|theta)``: softmax probability of the label at ``temperature``.

    ``(n_models, n_audit)``, the mean over queries with ``pooled``; else
    ``(n_models, n_audit, n_queries)``.
    """
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    sample = np.arange(len(labels))
    per_query = np.moveaxis(p[:, sample, :, labels], 0, 1)
    return per_query.mean(axis=2) if pooled else per_query


def _leave_one_out_stats(scores: np.ndarray, member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and variance of the shadows in group ``member``, leaving each target out.

    ``scores``: ``(M, N, Q)``; ``member``: ``(M, N)`` bool, and every column
    holds the same number ``K`` of Trues.  For target ``m`` and sample ``n``
    the shadows are the group ``{j : member[j, n]}`` less one model: ``m``
    itself if it is in the group, else the group's highest model id.  So every
    group has ``K - 1`` shadows, as the reference code's truncation to the
    smallest group gives; unequal sizes would bias the ddof-0 standard
    deviations against the target's own group.  Returns ``(M, N, Q)`` arrays.
    """
    n_models, n_samples, n_queries = scores.shape
    k = int(member[:, 0].sum())
    # Model ids of the group per sample, shape (K, N); stable, so ordered by model id.
    group = np.argsort(~member, axis=0, kind="stable")[:k]
    columns = np.arange(n_samples)
    values = scores[group, columns[None, :], :]  # (K, N, Q)
    order = np.argsort(values, axis=0, kind="stable")
    sorted_values = np.take_along_axis(values, order, axis=0)

    # rank_in_group[j, n, q]: position of group member j in the sorted values.
    rank_in_group = np.empty_like(order)
    np.put_along_axis(rank_in_group, order, np.arange(k)[:, None, None], axis=0)
    removed = np.broadcast_to(rank_in_group[k - 1], (n_models, n_samples, n_queries)).copy()
    removed[group, columns[None, :], :] = rank_in_group  # targets in the group remove themselves

    size = k - 1
    low, high = (size - 1) // 2, size // 2
    # Position p of the shortened list is index p, or p + 1 at and past the removed rank.
    low_index = low + (low >= removed)
    high_index = high + (high >= removed)
    sample, query = columns[None, :, None], np.arange(n_queries)[None, None, :]
    median = 0.5 * (sorted_values[low_index, sample, query] + sorted_values[high_index, sample, query])
    removed_value = sorted_values[removed, sample, query]
    mean = (values.sum(axis=0)[None] - removed_value) / size
    mean_sq = ((values**2).sum(axis=0)[None] - removed_value**2) / size
    return median, np.maximum(mean_sq - mean**2, 0.0)


def lira_attack(scores: np.ndarray, keep: np.ndarray, online: bool, fixed_variance: bool) -> np.ndarray:
    """LiRA membership scores ``(n_models, n_audit)`` from per-query scores (reference, float64).

    ``scores``: ``(M, N, Q)`` from :func:`lira_scores_from_logits`;
    ``keep``: ``(M, N)`` balanced membership matrix.
    """
    keep = np.asarray(keep, dtype=bool)
    median_out, variance_out = _leave_one_out_stats(scores, ~keep)
    if fixed_variance:
        variance_out = variance_out.mean(axis=1, keepdims=True)  # pooled over samples, per target and query
    std_out = np.sqrt(variance_out) + STD_FLOOR
    log_out = log_normal_pdf(scores, median_out, std_out)
    if not online:
        return -log_out.mean(axis=2)
    median_in, variance_in = _leave_one_out_stats(scores, keep)
    if fixed_variance:
        variance_in = variance_in.mean(axis=1, keepdims=True)
    std_in = np.sqrt(variance_in) + STD_FLOOR
    log_in = log_normal_pdf(scores, median_in, std_in)
    return (log_in - log_out).mean(axis=2)


def lira_aerni_attack(scores: np.ndarray, keep: np.ndarray, online: bool) -> np.ndarray:
    """LiRA under ``lira.preset: aerni-2024`` (reference, float64, loops): every other model a shadow, mean, ddof 1.

    ``scores``: ``(M, N, Q)``; ``keep``: ``(M, N)``.  For target ``m`` and
    sample ``n`` the IN shadows are all other models with ``n`` IN, the OUT
    shadows all other models with ``n`` OUT; Gaussians per query.
    """
    keep = np.asarray(keep, dtype=bool)
    n_models, n_samples, _ = scores.shape
    out = np.empty((n_models, n_samples))
    for m in range(n_models):
        for n in range(n_samples):
            logs = {}
            for side in (True, False):
                shadows = scores[[j for j in range(n_models) if j != m and keep[j, n] == side], n, :]  # (K', Q)
                std = np.std(shadows, axis=0, ddof=1) + STD_FLOOR
                logs[side] = log_normal_pdf(scores[m, n], shadows.mean(axis=0), std)
            out[m, n] = (logs[True] - logs[False]).mean() if online else -logs[False].mean()
    return out


def rmia_attack(probs: np.ndarray, keep: np.ndarray, gamma: float = 1.0, trim: float = 0.0,
                population: np.ndarray | None = None, offline_a: float | np.ndarray | None = None) -> np.ndarray:
    """RMIA scores ``(n_models, n_audit)`` from ``Pr(x|theta)``, as the authors' code computes them (reference).

    ``probs``: ``(M, N)`` or ``(M, N, Q)`` label probabilities
    (:func:`label_probabilities`; ``Q`` queries vote); ``keep``: ``(M, N)``.
    For target ``m`` and sample ``n`` the references are the models listed
    explicitly: the IN and OUT groups less ``m`` (where ``m`` is in the
    group) or less the group's last model id (where not), ``Pr(x)`` their
    ``scipy.stats.trim_mean(proportiontocut=trim)`` per query (with
    ``offline_a``, one value or one per target: the OUT group only, then
    ``((1 + a) Pr_OUT + 1 - a) / 2``).
    ``x`` beats ``z`` on query ``q`` when
    ``ratio_x[q] * (1 / ratio_z[q]) > gamma`` (the code's outer product),
    and overall when more than half the queries say so (``torch.mode`` of 0/1
    values: a tie is 0).  ``z``: every other audit sample, or the
    ``population`` probabilities ``(M, P[, Q])`` (all models OUT, references
    every model but ``m``).  The score is the share of ``z`` beaten.
    """
    keep = np.asarray(keep, dtype=bool)
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs[:, :, None] if probs.ndim == 2 else probs
    n_models, n_samples, n_queries = probs.shape
    if population is not None:
        population = np.asarray(population, dtype=np.float64)
        population = population[:, :, None] if population.ndim == 2 else population

    def references(m: int, n: int) -> list[int]:
        chosen = []
        for member in ((~keep[:, n],) if offline_a is not None else (keep[:, n], ~keep[:, n])):
            group = [j for j in range(n_models) if member[j]]
            chosen += [j for j in group if j != m] if m in group else group[:-1]
        return chosen

    def prior(reference: np.ndarray, a: float | None) -> np.ndarray:
        mean = trim_mean(reference, proportiontocut=trim, axis=0)
        return mean if a is None else (1 + a) / 2 * mean + (1 - a) / 2

    scores = np.zeros((n_models, n_samples))
    for m in range(n_models):
        a = None if offline_a is None else float(np.broadcast_to(offline_a, (n_models,))[m])
        ratio_x = np.array([probs[m, n] / prior(probs[references(m, n), n], a) for n in range(n_samples)])  # (N, Q)
        if population is None:
            ratio_z = ratio_x
        else:
            others = [j for j in range(n_models) if j != m]
            ratio_z = np.array([population[m, p] / prior(population[others, p], a) for p in range(population.shape[1])])
        for n in range(n_samples):
            zs = [z for z in range(len(ratio_z)) if population is not None or z != n]
            votes = [(ratio_x[n] * (1.0 / ratio_z[z]) > gamma).sum() for z in zs]
            scores[m, n] = np.mean([v > n_queries / 2 for v in votes])
    return scores


# -------------------------------------------------------------- ROC metrics


def roc(is_in: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full ROC curve (every threshold kept, so low-FPR points are not dropped)."""
    is_in = np.asarray(is_in, dtype=bool).ravel()
    score = np.asarray(score, dtype=np.float64).ravel()
    fpr, tpr, _ = roc_curve(is_in, score, drop_intermediate=False)
    return fpr, tpr


def best_threshold_epsilon(
    fpr: np.ndarray, tpr: np.ndarray, n_in: int, n_out: int, delta: float = 0.0, alpha: float = 0.05
) -> float:
    """The largest epsilon over all ROC points, each from one-sided Clopper-Pearson bounds at ``1 - alpha``.

    DP forces ``TPR <= e^eps FPR + delta`` and ``1 - FPR <= e^eps (1 - TPR) + delta``;
    taking the best of many thresholds without a correction makes it optimistic.
    """
    false_pos = np.rint(np.asarray(fpr) * n_out)
    true_pos = np.rint(np.asarray(tpr) * n_in)
    fpr_high = clopper_pearson_upper(false_pos, n_out, alpha)
    tpr_low = clopper_pearson_lower(true_pos, n_in, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        upper_left = np.log((tpr_low - delta) / fpr_high)
        lower_right = np.log((1.0 - fpr_high - delta) / (1.0 - tpr_low))
    candidates = np.concatenate([upper_left, lower_right])
    candidates = candidates[np.isfinite(candidates)]
    return float(max(0.0, candidates.max())) if len(candidates) else 0.0


def sklearn_metrics(is_in: np.ndarray, score: np.ndarray, tpr_readout: str = "interpolate") -> dict[str, float | str]:
    """AUC, balanced accuracy and TPR at 0.1% and 1% FPR (read as ``tpr_readout``), from sklearn's full ROC curve."""
    is_in = np.asarray(is_in, dtype=bool).ravel()
    score = np.asarray(score, dtype=np.float64).ravel()
    fpr, tpr = roc(is_in, score)
    metrics = {
        "auc": float(roc_auc_score(is_in, score)),
        "balanced_acc": float(np.max(1.0 - (fpr + (1.0 - tpr)) / 2.0)),
    }
    for key, target in LOW_FPRS.items():
        metrics[key] = tpr_at_fpr(fpr, tpr, target, tpr_readout)
    metrics["n_in"] = int(is_in.sum())
    metrics["n_out"] = int((~is_in).sum())
    metrics["tpr_readout"] = tpr_readout
    return metrics


# --------------------------------------------------------------- the store
