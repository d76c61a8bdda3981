"""Membership-inference attacks, leave-one-out over all models.

Every model in turn is the *target*; all the other models are its shadows.
Each attack returns a membership score per (target model, audit sample),
higher meaning "more likely IN".

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
* **RMIA** (``rmia``, Zarifzadeh et al., "Low-Cost High-Power Membership
  Inference Attacks", ICML 2024), online variant.  ``Pr(x|theta)`` is the
  target's softmax probability of the audit label, averaged over queries;
  ``Pr(x)`` is its mean over the same leave-one-out shadows as LiRA's (the
  ``n_models/2 - 1`` IN and ``n_models/2 - 1`` OUT shadows, which is the
  paper's online estimate).  The score of ``x`` is the share of population
  samples ``z`` with ``[Pr(x|theta)/Pr(x)] / [Pr(z|theta)/Pr(z)] > gamma``
  (:data:`RMIA_GAMMA`, 1 by default).  The paper draws ``z`` from a separate
  population set that no model trained on; raypriv has no such set, so ``z``
  runs over *all the other audit samples*, with ``Pr(z)`` from the same
  target's leave-one-out shadows.  That uses nothing the attacker could not
  know (not the target's membership of ``z``), but about half of those ``z``
  are members of the target, which makes the comparison set harder to beat
  than a pure non-member population; for one target the score is a monotone
  function of its likelihood ratio, and across targets it calibrates each
  target against its own ratios.  The offline variant (the paper's linear
  approximation ``a`` from OUT shadows only) is not implemented.
  ``Pr(x|theta)`` is computed as ``sigmoid(s)``, which equals ``p_y`` (up to
  the 1e-45 floors) and keeps ``1 - p_y`` for confident samples that a
  float32 probability would round to 1.

Two implementations share these definitions:

* The **reference** functions (:func:`lira_scores_from_logits`,
  :func:`loss_attack`, :func:`lira_attack`, :func:`rmia_attack`) work on
  whole float64 arrays and read like the definitions; the tests compare the
  engine against them and against brute-force loops.
* The **engine** (:func:`reduce_logits`, :func:`score_attacks`) is what
  audits run.  Pass 1 reduces each model's logits, one row batch at a time,
  to the per-query LiRA score ``s`` and the loss (float32, ``C`` times
  smaller than the logits; see :mod:`raypriv.scoring` for reading them from
  the store).  Pass 2 walks blocks of audit samples: each block holds every
  model's scores for those samples, which is what a leave-one-out median
  needs.  The fixed-variance attacks first pool the per-sample variances over
  all blocks (a cheap pass without sorting), then the main pass computes every
  attack.  Per-block memory is bounded by ``block_elements``; the outputs are
  float32 ``(n_models, n_audit)``.  Medians come from order statistics of the
  sorted float32 scores (the same values the reference picks), sums are in
  float64, so the engine matches the reference on float32-rounded scores to
  rounding error.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

import numpy as np
from scipy.special import expit

from raypriv.errors import RayprivError

_LOG_FLOOR = 1e-45
_STD_FLOOR = 1e-30
_HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)
_FLOAT32_MAX = float(np.finfo(np.float32).max)

RMIA_GAMMA = 1.0  # RMIA's threshold on the ratio of likelihood ratios (the paper's gamma)
LIRA_ATTACKS = ("lira_online", "lira_offline", "lira_online_fixed", "lira_offline_fixed")
KNOWN_ATTACKS = ("loss", *LIRA_ATTACKS, "rmia")


# ------------------------------------------------------------ reference implementations


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


def label_probabilities(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RMIA's ``Pr(x|theta)``: softmax probability of the label, mean over queries, ``(n_models, n_audit)``."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=-1, keepdims=True)
    sample = np.arange(len(labels))
    return np.moveaxis(p[:, sample, :, labels], 0, 1).mean(axis=2)


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
    """LiRA membership scores ``(n_models, n_audit)`` from per-query scores (reference, float64).

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


def _removed_value(values: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Per (target, sample): the value leave-one-out drops from group ``member`` (see :func:`_leave_one_out_stats`)."""
    last = member.shape[0] - 1 - np.argmax(member[::-1], axis=0)  # highest model id in the group, per sample
    return np.where(member, values, values[last, np.arange(values.shape[1])][None, :])


def rmia_ranks(log_ratio: np.ndarray, gamma: float = RMIA_GAMMA) -> np.ndarray:
    """Per target row: share of the other samples ``z`` with ``ratio_x / ratio_z > gamma``.

    ``log_ratio``: ``(n_targets, n_audit)`` log likelihood ratios.  The
    condition is ``log_ratio_z < log_ratio_x - log(gamma)``: with the row
    sorted, the count for every ``x`` is one binary search of its threshold,
    ``O(N log N)`` per target; no ``N x N`` comparison matrix is formed.
    Returns float64 scores in [0, 1].
    """
    log_ratio = np.asarray(log_ratio, dtype=np.float64)
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


def rmia_attack(probs: np.ndarray, keep: np.ndarray, gamma: float = RMIA_GAMMA) -> np.ndarray:
    """RMIA (online) scores ``(n_models, n_audit)`` from ``Pr(x|theta)`` (reference, float64).

    ``probs``: ``(M, N)`` label probabilities (:func:`label_probabilities`);
    ``keep``: ``(M, N)`` membership.  ``Pr(x)`` for target ``m`` is the mean
    over its leave-one-out IN and OUT shadows; the population ``z`` is every
    other audit sample (module docstring).
    """
    keep = np.asarray(keep, dtype=bool)
    probs = np.asarray(probs, dtype=np.float64)
    k_in, k_out = int(keep[:, 0].sum()), int((~keep[:, 0]).sum())
    shadow_sum = probs.sum(axis=0)[None, :] - _removed_value(probs, keep) - _removed_value(probs, ~keep)
    prior = shadow_sum / (k_in - 1 + k_out - 1)
    log_ratio = np.log(probs + _LOG_FLOOR) - np.log(prior + _LOG_FLOOR)
    return rmia_ranks(log_ratio, gamma)


# ------------------------------------------------------------------- the engine: pass 1


def reduce_logits(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``(R, C)`` logits: the LiRA score ``s`` and ``log p_label``, both float64 ``(R,)``.

    The float64 formulas of :func:`lira_scores_from_logits` and
    :func:`loss_attack`, one row at a time, so a model's logits can be reduced
    batch by batch as they are read.  The class axis is reduced in a
    transposed ``(C, R)`` copy (reductions over a short last axis are slow in
    NumPy), so sums may differ from the reference's in the last bit.
    """
    z = np.array(np.asarray(logits).T, dtype=np.float64, order="C")  # (C, R)
    z -= z.max(axis=0)
    p = np.exp(z)
    total = p.sum(axis=0)
    log_total = np.log(total)
    p /= total
    rows = np.arange(z.shape[1])
    p_true = p[labels, rows].copy()
    p[labels, rows] = 0.0
    p_wrong = p.sum(axis=0)
    score = np.log(p_true + _LOG_FLOOR) - np.log(p_wrong + _LOG_FLOOR)
    return score, z[labels, rows] - log_total


def to_float32(values: np.ndarray) -> np.ndarray:
    """Cast to float32, clipping to its finite range: a float64 LiRA score of -1e50 (zero-variance shadows) stays finite.

    A float32 array is returned as it is (no copy).
    """
    values = np.asarray(values)
    if values.dtype == np.float32:
        return values
    return np.clip(values, -_FLOAT32_MAX, _FLOAT32_MAX).astype(np.float32)


# ------------------------------------------------------------------- the engine: pass 2


def _group_ids(member: np.ndarray) -> np.ndarray:
    """``(B, K)`` model ids of each sample's group, ascending; ``member`` is ``(B, M)`` with K Trues per row."""
    n_rows, n_models = member.shape
    flat = np.flatnonzero(member)
    return (flat - np.repeat(np.arange(n_rows) * n_models, member.sum(axis=1))).reshape(n_rows, -1)


def _loo_moments(
    scores32: np.ndarray, scores64: np.ndarray, member: np.ndarray, ids: np.ndarray, need_median: bool
) -> tuple[np.ndarray | None, np.ndarray]:
    """Leave-one-out median and variance of one group, for one block; arrays are ``(B, Q, M)``.

    ``scores32``/``scores64``: the block's scores (float32 as stored, and as
    float64); ``member``: ``(B, M)`` group membership; ``ids``: its
    :func:`_group_ids`.  Same definitions as :func:`_leave_one_out_stats`:
    the removed value is the target's own score if it is in the group, else
    the group's highest model id; the median of the shortened sorted list
    reads position ``p`` at ``p`` before the removed value's rank and at
    ``p + 1`` from it on, so only the order statistics around the middle are
    needed, and ``v < removed`` decides the side (with ties the removed copy
    does not matter: the shortened list is the same).
    """
    k = ids.shape[1]
    size = k - 1
    values32 = np.take_along_axis(scores32, ids[:, None, :], axis=2)  # (B, Q, K) by model id
    values = values32.astype(np.float64)
    removed = np.where(member[:, None, :], scores64, values[:, :, k - 1 : k])
    mean = (values.sum(axis=2)[:, :, None] - removed) / size
    mean_sq = ((values * values).sum(axis=2)[:, :, None] - removed * removed) / size
    variance = np.maximum(mean_sq - mean * mean, 0.0)
    if not need_median:
        return None, variance
    values32.sort(axis=2)
    low, high = (size - 1) // 2, size // 2
    picks = [values32[:, :, i : i + 1].astype(np.float64) for i in (low, low + 1, high, high + 1)]
    median = 0.5 * (
        np.where(picks[0] < removed, picks[0], picks[1]) + np.where(picks[2] < removed, picks[2], picks[3])
    )
    return median, variance


def _loo_prior(probs: np.ndarray, member: np.ndarray, ids_in: np.ndarray, ids_out: np.ndarray) -> np.ndarray:
    """RMIA's ``Pr(x)`` per (sample, target) for one block: mean over the leave-one-out IN and OUT shadows.

    ``probs``: ``(B, M)``.  Sums of a group less one member are prefix plus
    suffix sums in model-id order (no subtraction, so a dominant target's own
    probability cannot cancel the small ones of its shadows).
    """
    total = np.empty_like(probs)
    rest = []
    for ids in (ids_in, ids_out):
        values = np.take_along_axis(probs, ids, axis=1)  # (B, K)
        prefix = np.zeros_like(values)
        np.cumsum(values[:, :-1], axis=1, out=prefix[:, 1:])
        suffix = np.zeros_like(values)
        np.cumsum(values[:, :0:-1], axis=1, out=suffix[:, -2::-1])
        np.put_along_axis(total, ids, prefix + suffix, axis=1)  # targets in this group drop themselves
        rest.append(prefix[:, -1])  # targets outside it: the group less its highest model id
    total += np.where(member, rest[1][:, None], rest[0][:, None])
    return total / (ids_in.shape[1] - 1 + ids_out.shape[1] - 1)


def _map(function: Callable, items: Iterable, workers: int) -> list:
    """``list(map(function, items))`` on ``workers`` threads (NumPy releases the GIL in its kernels)."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, items))


def check_attacks(attacks: Iterable[str]) -> list[str]:
    """The attack names as a list; an unknown one is a RayprivError listing the known ones."""
    attacks = list(attacks)
    unknown = [a for a in attacks if a not in KNOWN_ATTACKS]
    if unknown:
        raise RayprivError(f"unknown attack(s) {unknown}; choose from {list(KNOWN_ATTACKS)}")
    return attacks


def _group_size(keep: np.ndarray, attacks: list[str]) -> tuple[int, int]:
    """IN and OUT models per sample; the leave-one-out attacks need the same counts for every sample."""
    counts = keep.sum(axis=0)
    k_in, k_out = int(counts[0]), keep.shape[0] - int(counts[0])
    if any(a != "loss" for a in attacks):
        if not (counts == k_in).all():
            raise RayprivError(
                "the membership matrix must make every audit sample IN for the same number of models "
                f"(it has {counts.min()} to {counts.max()}); use the run's own keep.npy"
            )
        if min(k_in, k_out) < 2:
            raise RayprivError(
                f"{keep.shape[0]} models give {k_in} IN and {k_out} OUT models per sample; the leave-one-out "
                "attacks need at least 2 of each (n_models >= 8 for LiRA); use more models or only 'loss'"
            )
    return k_in, k_out


def score_attacks(
    scores: np.ndarray | None,
    loss: np.ndarray | None,
    keep: np.ndarray,
    attacks: Iterable[str],
    gamma: float = RMIA_GAMMA,
    block_elements: int = 1 << 20,
    workers: int = 1,
) -> dict[str, np.ndarray]:
    """Every named attack from the reduced logits: ``{attack: float32 (n_models, n_audit)}``.

    ``scores``: float32 ``(M, N, Q)`` LiRA scores (needed by LiRA and RMIA);
    ``loss``: ``(M, N)`` log-probability of the label on query 0 (the loss
    attack, returned as it is); ``keep``: ``(M, N)`` membership.  Sample
    blocks of about ``block_elements`` scores are processed on ``workers``
    threads; results do not depend on either.
    """
    attacks = check_attacks(attacks)
    keep = np.asarray(keep, dtype=bool)
    n_models, n_samples = keep.shape
    _group_size(keep, attacks)
    results: dict[str, np.ndarray] = {}
    if "loss" in attacks:
        if loss is None or loss.shape != keep.shape:
            raise ValueError(f"the loss attack needs the (n_models, n_audit) = {keep.shape} label log-probabilities")
        results["loss"] = to_float32(loss)
    lira = [a for a in attacks if a in LIRA_ATTACKS]
    rmia = "rmia" in attacks
    if not (lira or rmia):
        return {a: results[a] for a in attacks}
    if scores is None or scores.shape[:2] != keep.shape:
        raise ValueError(f"LiRA and RMIA need (n_models, n_audit, n_queries) scores matching keep {keep.shape}")
    if scores.dtype != np.float32:
        scores = to_float32(scores)
    n_queries = scores.shape[2]
    block = max(1, block_elements // (n_models * n_queries))
    blocks = [(start, min(n_samples, start + block)) for start in range(0, n_samples, block)]
    need_in = any("online" in a for a in lira)
    fixed = [a for a in lira if a.endswith("_fixed")]

    def load(bounds):
        start, stop = bounds
        scores32 = np.ascontiguousarray(scores[:, start:stop, :].transpose(1, 2, 0))  # (B, Q, M)
        member = np.ascontiguousarray(keep[:, start:stop].T)  # (B, M)
        return scores32, scores32.astype(np.float64), member, _group_ids(member), _group_ids(~member)

    pooled_in = pooled_out = None
    if fixed:
        def variance_sums(bounds):
            scores32, scores64, member, ids_in, ids_out = load(bounds)
            _, variance_out = _loo_moments(scores32, scores64, ~member, ids_out, need_median=False)
            sums = [variance_out.sum(axis=0)]
            if need_in:
                _, variance_in = _loo_moments(scores32, scores64, member, ids_in, need_median=False)
                sums.append(variance_in.sum(axis=0))
            return sums

        partial = _map(variance_sums, blocks, workers)
        pooled_out = sum(p[0] for p in partial) / n_samples  # (Q, M): one variance per query and target
        if need_in:
            pooled_in = sum(p[1] for p in partial) / n_samples

    for attack in lira:
        results[attack] = np.empty((n_models, n_samples), dtype=np.float32)
    log_ratio = np.empty((n_models, n_samples), dtype=np.float64) if rmia else None

    def main_pass(bounds):
        start, stop = bounds
        scores32, scores64, member, ids_in, ids_out = load(bounds)
        if lira:
            median_out, variance_out = _loo_moments(scores32, scores64, ~member, ids_out, need_median=True)
            if need_in:
                median_in, variance_in = _loo_moments(scores32, scores64, member, ids_in, need_median=True)
            log_outs: dict[bool, np.ndarray] = {}  # the OUT log-pdf, shared by online and offline
            for attack in lira:
                online, is_fixed = "online" in attack, attack.endswith("_fixed")
                if is_fixed not in log_outs:
                    std_out = np.sqrt(pooled_out if is_fixed else variance_out) + _STD_FLOOR
                    log_outs[is_fixed] = _log_normal_pdf(scores64, median_out, std_out)
                log_out = log_outs[is_fixed]
                if online:
                    std_in = np.sqrt(pooled_in if is_fixed else variance_in) + _STD_FLOOR
                    value = (_log_normal_pdf(scores64, median_in, std_in) - log_out).mean(axis=1)
                else:
                    value = -log_out.mean(axis=1)
                results[attack][:, start:stop] = to_float32(value).T
        if rmia:
            probs = expit(scores64).mean(axis=1)  # (B, M): Pr(x | theta), mean over queries
            prior = _loo_prior(probs, member, ids_in, ids_out)
            log_ratio[:, start:stop] = (np.log(probs + _LOG_FLOOR) - np.log(prior + _LOG_FLOOR)).T

    _map(main_pass, blocks, workers)
    if rmia:
        rows = max(1, (1 << 22) // max(n_samples, 1))
        chunks = [(start, min(n_models, start + rows)) for start in range(0, n_models, rows)]
        results["rmia"] = np.empty((n_models, n_samples), dtype=np.float32)

        def rank(bounds):
            start, stop = bounds
            results["rmia"][start:stop] = rmia_ranks(log_ratio[start:stop], gamma)

        _map(rank, chunks, workers)
    return {a: results[a] for a in attacks}


def run_attacks(
    logits: np.ndarray, labels: np.ndarray, keep: np.ndarray, attacks: list[str], gamma: float = RMIA_GAMMA, workers: int = 1
) -> dict[str, np.ndarray]:
    """Every named attack on in-memory logits ``(n_models, n_audit, n_queries, C)``; float32 ``(n_models, n_audit)`` each.

    The audit streams the logits from the store instead
    (:func:`raypriv.scoring.load_attack_inputs`); both feed :func:`score_attacks`.
    """
    attacks = check_attacks(attacks)
    n_models, n_samples, n_queries, n_classes = logits.shape
    row_labels = np.broadcast_to(np.asarray(labels)[None, :, None], (n_models, n_samples, n_queries)).ravel()
    score, log_p = reduce_logits(logits.reshape(-1, n_classes), row_labels)
    score = to_float32(score.reshape(n_models, n_samples, n_queries))
    log_p = log_p.reshape(n_models, n_samples, n_queries)[:, :, 0]
    return score_attacks(score, log_p, keep, attacks, gamma=gamma, workers=workers)
