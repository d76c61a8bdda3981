"""Membership-inference attacks, leave-one-out over all models.

Every model in turn is the *target*; all the other models are its shadows.
Each attack returns a membership score per (target model, audit sample),
higher meaning "more likely IN".  Everything is vectorised over models x
samples x queries; the only Python loop is over the (few) queries inside
NumPy calls.

Choices, following the reference LiRA code (tensorflow/privacy,
``research/mi_lira_2021``; Carlini et al., "Membership Inference Attacks From
First Principles", S&P 2022):

* **Score.** ``s = log p_y - log sum_{y' != y} p_y'`` (the "logit-scaled
  confidence"), in float64 after subtracting the max logit.  Clamped at
  1e-45 inside the logs, as in the reference, so it stays finite.
* **Means** of the IN and OUT Gaussians are the *median* over shadows.
* **Standard deviations** are ``np.std`` (ddof 0) over shadows, plus 1e-30.
* **One Gaussian per augmentation query**; the per-query log-likelihoods
  (or ratios) are averaged over queries.
* **Online** (``lira_online``): ``mean_q [log N(s; mu_in, sd_in) - log N(s; mu_out, sd_out)]``.
* **Offline** (``lira_offline``): ``mean_q [-log N(s; mu_out, sd_out)]``,
  the OUT log-pdf as in the reference (a two-sided test: it also flags
  scores far *below* the OUT mean).
* **Fixed variance** (``*_fixed``): one standard deviation per query for the
  IN side and one for the OUT side, pooled over all audit samples as the
  root mean of the per-sample variances.  This is the LiRA paper's "global
  variance".  The reference script instead takes ``np.std`` of all IN scores
  (mixing in the spread of per-sample means) and uses it for OUT too; we keep
  IN and OUT apart and leave out the between-sample spread.
* **Leave-one-out**: the target's own score is removed from its shadow
  statistics (medians by rank arithmetic on the sorted scores, std from
  running sums).  Every group then has ``n_models/2 - 1`` shadows: where the
  target is not in a group, that group drops its highest model id instead,
  like the reference's truncation of all groups to the smallest size.
  (Unequal sizes bias ddof-0 variances and push a no-signal AUC below 0.5
  at small model counts.)
* **Loss** (``loss``, Yeom et al. 2018): minus the cross-entropy of the
  target on the un-augmented query (query 0).  It uses no shadows.
"""

from __future__ import annotations

import numpy as np

_LOG_FLOOR = 1e-45
_STD_FLOOR = 1e-30
_HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)


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
    return np.log(p_true + _LOG_FLOOR) - np.log(p_wrong + _LOG_FLOOR)


def loss_attack(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Minus the cross-entropy on query 0: ``(n_models, n_audit)``."""
    z = logits[:, :, 0, :].astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    log_softmax = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return log_softmax[:, np.arange(len(labels)), labels]


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


def _log_normal_pdf(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - _HALF_LOG_2PI


def lira_attack(scores: np.ndarray, keep: np.ndarray, online: bool, fixed_variance: bool) -> np.ndarray:
    """LiRA membership scores ``(n_models, n_audit)`` from per-query scores.

    ``scores``: ``(M, N, Q)`` from :func:`lira_scores_from_logits`;
    ``keep``: ``(M, N)`` balanced membership matrix.
    """
    keep = np.asarray(keep, dtype=bool)
    median_out, variance_out = _leave_one_out_stats(scores, ~keep)
    if fixed_variance:
        variance_out = variance_out.mean(axis=1, keepdims=True)  # pooled over samples, per target and query
    std_out = np.sqrt(variance_out) + _STD_FLOOR
    log_out = _log_normal_pdf(scores, median_out, std_out)
    if not online:
        return -log_out.mean(axis=2)
    median_in, variance_in = _leave_one_out_stats(scores, keep)
    if fixed_variance:
        variance_in = variance_in.mean(axis=1, keepdims=True)
    std_in = np.sqrt(variance_in) + _STD_FLOOR
    log_in = _log_normal_pdf(scores, median_in, std_in)
    return (log_in - log_out).mean(axis=2)


def run_attacks(logits: np.ndarray, labels: np.ndarray, keep: np.ndarray, attacks: list[str]) -> dict[str, np.ndarray]:
    """Compute each named attack; returns ``{attack: (n_models, n_audit) scores}``."""
    results: dict[str, np.ndarray] = {}
    scores = lira_scores_from_logits(logits, labels) if any(a.startswith("lira") for a in attacks) else None
    for attack in attacks:
        if attack == "loss":
            results[attack] = loss_attack(logits, labels)
        elif attack.startswith("lira_"):
            results[attack] = lira_attack(
                scores, keep, online="online" in attack, fixed_variance=attack.endswith("_fixed")
            )
        else:
            raise ValueError(f"unknown attack {attack!r}")
    return results
