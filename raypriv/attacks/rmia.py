"""RMIA: options, the likelihood ratios of one block, the comparisons against a population, the offline ``a``.

Zarifzadeh, Liu, Mahmoud, Shokri, "Low-Cost High-Power Membership Inference
Attacks" (ICML 2024), as the authors' code runs it
(privacytrustlab/ml_privacy_meter, ``research/2024_rmia/main.py``, read at
commit d327341): :class:`RmiaOptions` holds its four settings, each a config
field (``rmia:``):

* ``trim`` (the code's ``proportiontocut``, 0.2 in every published config):
  ``Pr(x)`` is ``scipy.stats.trim_mean`` of the reference models'
  ``Pr(x|theta')``: sort the ``n`` references, drop ``int(trim * n)`` from
  each end, average the rest (:func:`trimmed_mean_less`).  0 is the plain mean.
* ``temperature`` (2.0 in the CIFAR-10, CINIC-10 and Purchase-100 configs,
  1.0 for CIFAR-100): ``Pr(x|theta) = softmax(logits / T)_y``.  With
  ``T != 1`` the read pass keeps one more float32 channel per query (the
  tempered ``log p - log(1 - p)``), so the LiRA scores stay untouched.
* ``gamma`` (2.0 in the configs, swept over 1..64 in the paper): ``x`` beats
  ``z`` when ``[Pr(x|theta)/Pr(x)] / [Pr(z|theta)/Pr(z)] > gamma``.
* ``queries``: how augmentation queries combine.  ``vote`` (the authors'
  code): one ratio and one comparison per query, then a per-``(x, z)``
  majority vote (``torch.mode`` of 0/1 values, so a tie in an even number of
  queries counts as "not beaten"); the score is the share of ``z`` that ``x``
  beats.  ``mean``: the per-query shares averaged (``O(N log N)`` per query
  instead of the vote's ``O(N P Q)``).  ``pool``: ``Pr(x|theta)`` averaged
  over queries before the ratio (raypriv before 2026-12-05).

Departures from the authors' code, all stated:

* **Reference models are leave-one-out.**  Every model is a target; its
  references for ``x`` are the ``n_models/2 - 1`` IN and ``n_models/2 - 1``
  OUT shadows of LiRA (:mod:`raypriv.attacks`), the online setting.  The
  authors train separate reference models, half IN per sample.
* **The population ``z``.**  The authors draw ``z`` from the same data pool
  the references train on (so ``Pr(z)`` has IN and OUT references).  Here
  ``z`` is either every other audit sample (``Pr(z)`` from the same
  leave-one-out references) or, with ``audit.n_population``, held-out
  samples no model trains on, whose ``Pr(z)`` is the trimmed mean over all
  ``n_models - 1`` other models.
* **The signal is the softmax.**  The authors' image configs use a "soft-margin
  Taylor softmax" (``sm_taylor_softmax_relative``, m = 0.6, order 4); its
  cubic Taylor term goes negative for ``logit / T < -1.6``, so it is no
  probability and is not implemented.  Their Purchase-100 configs use the
  softmax, as here.
* **Comparisons are in logs**: ``log ratio_x - log ratio_z > log gamma`` (the
  code multiplies ratios), with ``1e-45`` inside every log.
* **rmia_offline**'s ``a`` is fitted (cross-fitted over two folds of model
  ids, :func:`fit_offline_a`) where the configs fix it per dataset; the fit
  uses the plain OUT mean and the query-pooled probability.

Defaults (:class:`RmiaOptions`): ``trim=0, temperature=1, gamma=1,
queries="vote"``.  **Departure from the authors' configs (trim 0.2):** the
trimmed mean was the strongest setting on ``real`` (16 and 64 models:
TPR at 0.1% FPR 37.5% → 52.5% and 47.3% → 52.1%), but on the forgetting
coreset, a pipeline that trains on the canaries it happens to select, it
cut TPR at 1% FPR from 71% to 7.5% (32 models; 24% → 7% at 8): when only
some reference models memorise ``x``, trimming drops exactly the
memorising minority from ``Pr(x)``.  Elsewhere the two are within noise.
An auditor must not miss a selective leak, so the plain mean (the paper's
formula) is the default and ``rmia.trim: 0.2`` the authors' option
(``benchmarks/RESULTS.md``, "RMIA as its authors run it").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from raypriv.attacks.block import SampleBlock, loo_sum
from raypriv.attacks.lira import LOG_FLOOR, reduce_logits

RMIA_GAMMA = 1.0  # default threshold on the ratio of likelihood ratios (the paper's gamma; its configs use 2)
RMIA_TRIM = 0.0  # default proportion cut from each end of the references: the plain mean (the authors' code: 0.2)
RMIA_QUERIES = ("vote", "mean", "pool")
VOTE_CHUNK = 1 << 24  # (x, z, query) comparisons held at once by the vote


@dataclass(frozen=True)
class RmiaOptions:
    """RMIA's settings (the config's ``rmia:`` section); see the module docstring for each."""

    gamma: float = RMIA_GAMMA
    trim: float = RMIA_TRIM
    temperature: float = 1.0
    queries: str = "vote"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.gamma) and self.gamma > 0):
            raise ValueError(f"RMIA gamma={self.gamma} must be a positive number")
        if not 0.0 <= self.trim < 0.5:
            raise ValueError(f"RMIA trim={self.trim} must lie in [0, 0.5)")
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"RMIA temperature={self.temperature} must be a positive number")
        if self.queries not in RMIA_QUERIES:
            raise ValueError(f"RMIA queries={self.queries!r} must be one of {RMIA_QUERIES}")

    @property
    def own_signal(self) -> bool:
        """Whether ``Pr(x|theta)`` needs its own per-query channels (a temperature): else it is ``sigmoid`` of the LiRA score."""
        return self.temperature != 1.0

    @property
    def per_query(self) -> bool:
        """Whether the ratios stay per query until the comparisons (``vote``, ``mean``) or are pooled first (``pool``)."""
        return self.queries != "pool"


def tempered_scores(logits: np.ndarray, labels: np.ndarray, temperature: float) -> np.ndarray:
    """RMIA's own per-row channel: ``log p - log(1 - p)`` of ``p = softmax(logits / temperature)_label``, float64 ``(R,)``.

    ``logits``: ``(R, C)``; the read pass stores it as float32 beside the
    LiRA score (whose ``sigmoid`` is the untempered ``p``), so
    ``sigmoid`` of it gives ``Pr(x|theta)`` without rounding ``1 - p`` away.
    """
    return reduce_logits(np.asarray(logits, dtype=np.float64) / temperature, labels)[0]


def score_channels(n_queries: int, options: RmiaOptions, has_rmia: bool) -> int:
    """Channels per (model, sample) of the read pass's float32 scores: the ``n_queries`` LiRA scores, then as many
    tempered RMIA channels when an RMIA attack runs at a temperature other than 1."""
    return 2 * n_queries if (has_rmia and options.own_signal) else n_queries


# ------------------------------------------------------------------ the trimmed mean


def trimmed_mean_less(values: np.ndarray, removed: list[np.ndarray], trim: float) -> np.ndarray:
    """``scipy.stats.trim_mean`` over the last axis of ``values`` less some entries, for many targets at once.

    ``values``: float64 ``(..., G)``; ``removed``: arrays ``(..., T)`` of
    positions on the last axis (for each of ``T`` targets, the entries it
    drops; distinct per target).  Returns ``(..., T)``: the mean of the
    ``n = G - len(removed)`` remaining values after dropping ``int(trim * n)``
    from each end of their sorted order.  Computed from one sort and prefix
    sums: position ``p`` of the shortened sorted list is index
    ``p + #{i : p >= r_i - i}`` of the full one (``r`` the removed ranks,
    ascending), so the kept range is one slice of the full sorted list less
    the removed entries inside it; ``O(G log G)`` per row, not per target.
    """
    n_values = values.shape[-1]
    order = np.argsort(values, axis=-1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=-1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(n_values), order.shape), axis=-1)
    prefix = np.zeros((*ordered.shape[:-1], n_values + 1))
    np.cumsum(ordered, axis=-1, out=prefix[..., 1:])
    ranks = np.sort(np.stack([np.take_along_axis(rank, np.broadcast_to(r, (*rank.shape[:-1], r.shape[-1])), axis=-1)
                              for r in removed]), axis=0)
    n = n_values - len(removed)
    cut = int(trim * n)  # scipy's lowercut
    if n - 2 * cut <= 0:
        raise ValueError(f"trim={trim} leaves no value of {n}")

    def full_index(p: int) -> np.ndarray:
        return p + sum((p >= r - i).astype(np.int64) for i, r in enumerate(ranks))

    low, high = full_index(cut), full_index(n - cut - 1)
    total = np.take_along_axis(prefix, high + 1, axis=-1) - np.take_along_axis(prefix, low, axis=-1)
    for r in ranks:
        total -= np.where((low <= r) & (r <= high), np.take_along_axis(ordered, r, axis=-1), 0.0)
    return total / (n - 2 * cut)


def reference_prior(probs: np.ndarray, member: np.ndarray, ids_in: np.ndarray, ids_out: np.ndarray,
                    trim: float) -> np.ndarray:
    """Online ``Pr(x)``: the trimmed mean over each target's leave-one-out IN and OUT shadows.

    ``probs``: ``(B, Q, M)`` (or ``(B, M)``); ``member``: ``(B, M)``.  A
    target drops itself and the highest model id of the group it is not in
    (:mod:`raypriv.attacks.block`), so every target has ``M - 2`` references.
    """
    squeeze = probs.ndim == 2
    probs = probs[:, None, :] if squeeze else probs
    n_models = probs.shape[-1]
    other = np.where(member, ids_out[:, -1:], ids_in[:, -1:])[:, None, :]  # (B, 1, M)
    itself = np.broadcast_to(np.arange(n_models), other.shape)
    prior = trimmed_mean_less(probs, [itself, other], trim)
    return prior[:, 0, :] if squeeze else prior


def group_prior(probs: np.ndarray, ids: np.ndarray, trim: float) -> np.ndarray:
    """Offline ``Pr_OUT(x)``: the trimmed mean over one leave-one-out group (``ids``, ``(B, K)``) per target.

    ``probs``: ``(B, Q, M)`` or ``(B, M)``.  The target drops itself when in
    the group, else the group's highest model id: ``K - 1`` references each.
    """
    squeeze = probs.ndim == 2
    probs = probs[:, None, :] if squeeze else probs
    n_group = ids.shape[1]
    values = np.take_along_axis(probs, np.broadcast_to(ids[:, None, :], (*probs.shape[:2], n_group)), axis=2)
    position = np.full((len(ids), probs.shape[-1]), n_group - 1, dtype=np.int64)  # targets outside the group: its highest id
    position[np.repeat(np.arange(len(ids)), n_group), ids.ravel()] = np.tile(np.arange(n_group), len(ids))  # inside: itself
    prior = trimmed_mean_less(values, [position[:, None, :]], trim)
    return prior[:, 0, :] if squeeze else prior


# ------------------------------------------------------------------ offline a


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
    when up to ``_FIT_TARGETS`` models of the other fold are attacked with that fold's other OUT models
    (plain OUT mean, pooled queries; the authors fix ``a`` per dataset instead)."""
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


# ------------------------------------------------------------------ comparisons


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


def rmia_votes(log_ratio: np.ndarray, gamma: float = RMIA_GAMMA, population: np.ndarray | None = None) -> np.ndarray:
    """Per target row: share of ``z`` that ``x`` beats in a strict majority of the queries.

    ``log_ratio``: ``(n_targets, N, Q)`` per-query log ratios;
    ``population``: ``(n_targets, P, Q)``, or None for every other audit
    sample.  ``x`` beats ``z`` on query ``q`` when
    ``log_ratio_z[q] < log_ratio_x[q] - log(gamma)``; it wins the vote with
    more than ``Q / 2`` such queries (a tie loses, as ``torch.mode`` of 0/1
    values gives 0).  ``O(N P Q)`` per target, ``VOTE_CHUNK`` comparisons
    at a time.  Returns float64 ``(n_targets, N)``.
    """
    log_ratio = np.asarray(log_ratio, dtype=np.float64)
    n_targets, n_samples, n_queries = log_ratio.shape
    shift = float(np.log(gamma))
    out = np.empty((n_targets, n_samples))
    for row in range(n_targets):
        x = log_ratio[row] - shift
        z = log_ratio[row] if population is None else np.asarray(population[row], dtype=np.float64)
        chunk = max(1, VOTE_CHUNK // max(len(z) * n_queries, 1))
        for start in range(0, n_samples, chunk):
            wins = (z[None, :, :] < x[start : start + chunk, None, :]).sum(axis=2) * 2 > n_queries
            if population is None:  # x is no z of its own
                wins[np.arange(len(wins)), np.arange(start, start + len(wins))] = False
            out[row, start : start + chunk] = wins.sum(axis=1)
    return out / max(n_samples - 1 if population is None else population.shape[1], 1)


def rmia_scores(log_ratio: np.ndarray, options: RmiaOptions, population: np.ndarray | None = None) -> np.ndarray:
    """RMIA scores ``(n_targets, N)`` from log ratios ``(n_targets, N)`` (pooled) or ``(n_targets, N, Q)`` (per query).

    ``population``: the matching population log ratios, or None.  ``vote``:
    :func:`rmia_votes`; ``mean``: :func:`rmia_ranks` per query, averaged;
    one query, or pooled ratios: :func:`rmia_ranks`.
    """
    if log_ratio.ndim == 2:
        return rmia_ranks(log_ratio, options.gamma, population)
    if log_ratio.shape[2] == 1:
        return rmia_ranks(log_ratio[:, :, 0], options.gamma, None if population is None else population[:, :, 0])
    if options.queries == "vote":
        return rmia_votes(log_ratio, options.gamma, population)
    return np.mean([rmia_ranks(log_ratio[:, :, q], options.gamma, None if population is None else population[:, :, q])
                    for q in range(log_ratio.shape[2])], axis=0)


# ------------------------------------------------------------------ likelihood ratios


def population_log_ratio(signal: np.ndarray, options: RmiaOptions = RmiaOptions(),
                         offline_a: np.ndarray | None = None) -> np.ndarray:
    """Log ``Pr(z|theta) / Pr(z)`` of each target on the population set, from its ``(M, P, Q)`` signal scores.

    ``signal``: float32 logit-scaled ``Pr(z|theta)`` per query (the LiRA
    scores, or RMIA's tempered channel).  ``Pr(z)``: the trimmed mean over
    the other ``M - 1`` models (all OUT for ``z``), or with ``offline_a``
    (per target) the offline approximation of it, as
    :func:`rmia_offline_log_ratio` uses.  Returns ``(M, P, Q)`` per query, or
    ``(M, P)`` with ``queries="pool"``.
    """
    n_models = len(signal)
    probs = np.concatenate([expit(signal[i : i + 64].astype(np.float64)) for i in range(0, n_models, 64)])  # (M, P, Q)
    if not options.per_query:
        probs = probs.mean(axis=2, keepdims=True)
    values = np.ascontiguousarray(probs.transpose(1, 2, 0))  # (P, Q, M)
    if options.trim == 0 and not options.per_query:  # the plain mean, as raypriv computed it before trimming
        out_mean = (probs.sum(axis=0)[None] - probs) / max(n_models - 1, 1)
    else:
        itself = np.broadcast_to(np.arange(n_models), (*values.shape[:2], n_models))
        out_mean = trimmed_mean_less(values, [itself], options.trim).transpose(2, 0, 1)  # (M, P, Q)
    prior = out_mean if offline_a is None else offline_prior(out_mean, np.asarray(offline_a)[:, None, None])
    ratio = np.log(probs + LOG_FLOOR) - np.log(prior + LOG_FLOOR)
    return ratio if options.per_query else ratio[:, :, 0]


def loo_prior(probs: np.ndarray, member: np.ndarray, ids_in: np.ndarray, ids_out: np.ndarray) -> np.ndarray:
    """RMIA's plain-mean ``Pr(x)`` per (sample, target) for one block: mean over the leave-one-out IN and OUT shadows.

    ``probs``: ``(B, M)``.  Sums of a group less one member are prefix plus
    suffix sums in model-id order (no subtraction, so a dominant target's own
    probability cannot cancel the small ones of its shadows).
    """
    total = loo_sum(probs, member, ids_in) + loo_sum(probs, ~member, ids_out)
    return total / (ids_in.shape[1] - 1 + ids_out.shape[1] - 1)


def _probabilities(block: SampleBlock, options: RmiaOptions) -> np.ndarray:
    """``Pr(x|theta)``: ``(B, Q, M)`` per query, or ``(B, M)`` pooled over queries."""
    probs = block.rmia_probability
    return probs if options.per_query else probs.mean(axis=1)


def rmia_log_ratio(block: SampleBlock, options: RmiaOptions = RmiaOptions()) -> np.ndarray:
    """``log Pr(x|theta) - log Pr(x)``, ``(B, M)`` pooled or ``(B, M, Q)`` per query; :func:`rmia_scores` scores it."""
    probs = _probabilities(block, options)
    if options.trim == 0 and probs.ndim == 2:  # the plain mean, as raypriv computed it before trimming
        prior = loo_prior(probs, block.member, block.ids_in, block.ids_out)
    else:
        prior = reference_prior(probs, block.member, block.ids_in, block.ids_out, options.trim)
    ratio = np.log(probs + LOG_FLOOR) - np.log(prior + LOG_FLOOR)
    return ratio if ratio.ndim == 2 else ratio.transpose(0, 2, 1)


def rmia_offline_log_ratio(block: SampleBlock, options: RmiaOptions = RmiaOptions()) -> np.ndarray:
    """``log Pr(x|theta) - log Pr(x)`` with the offline ``Pr(x) = ((1 + a) Pr_OUT(x) + 1 - a) / 2``.

    ``Pr_OUT(x)``: the trimmed mean of the target's leave-one-out OUT
    shadows.  Shapes as :func:`rmia_log_ratio`.
    """
    probs = _probabilities(block, options)
    if options.trim == 0 and probs.ndim == 2:
        out = loo_sum(probs, ~block.member, block.ids_out) / (block.ids_out.shape[1] - 1)
    else:
        out = group_prior(probs, block.ids_out, options.trim)
    a = block.offline_a[None, :] if probs.ndim == 2 else block.offline_a[None, None, :]
    ratio = np.log(probs + LOG_FLOOR) - np.log(offline_prior(out, a) + LOG_FLOOR)
    return ratio if ratio.ndim == 2 else ratio.transpose(0, 2, 1)
