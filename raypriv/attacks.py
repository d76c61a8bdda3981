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
* **Means** of the IN and OUT Gaussians are the *median* over shadows
  (``lira.center: mean`` takes the mean, as Aerni et al. 2024 do).
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
  (``rmia.gamma``, :data:`RMIA_GAMMA` = 1 by default).  The paper draws ``z``
  from a population set no model trained on; here ``z`` runs over *all the
  other audit samples*, ``Pr(z)`` from the same target's leave-one-out
  shadows: nothing the attacker could not know, but about half of those
  ``z`` are members, a harder comparison set than pure non-members.
  ``audit.n_population`` gives the paper's population set instead.  ``Pr(x)``
  is a plain mean over the shadows; the authors' code uses a trimmed mean,
  which raypriv does not.
* **RMIA offline** (``rmia_offline``): the paper's linear approximation
  ``Pr(x) = ((1 + a) Pr_OUT(x) + 1 - a) / 2`` from the leave-one-out OUT mean.
  ``a`` is fitted as in the paper: reference models attacked with OUT
  references, the ``a`` in 0, 0.1, ..., 1 of highest AUC, cross-fitted over
  two folds of model ids, so a target's own scores and membership never enter.
  ``Pr(x|theta)`` is computed as ``sigmoid(s)``, which equals ``p_y`` (up to
  the 1e-45 floors) and keeps ``1 - p_y`` for confident samples that a
  float32 probability would round to 1.

**The table.**  :data:`ATTACKS` lists every attack once: its name, family,
inputs, its place in the report's fixed headline order, and a function of
one :class:`SampleBlock` (all models' scores for a block of audit samples,
with the leave-one-out statistics computed once and shared).  A new attack
is one entry there plus its function.

**The engine** (:func:`reduce_logits`, :func:`score_attacks`) is what
audits run; whole-array float64 versions that read like the definitions are
in :mod:`raypriv.reference`, for the tests.  Pass 1 reduces each model's logits, one row batch at a time,
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

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Iterable

import numpy as np
from scipy.special import expit

from raypriv.errors import RayprivError
from raypriv.rmia import _LOG_FLOOR, RMIA_GAMMA, fit_offline_a, offline_prior, population_log_ratio, rmia_ranks
from raypriv.store import RunStore, iter_logits

_STD_FLOOR = 1e-30
_HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)
_FLOAT32_MAX = float(np.finfo(np.float32).max)

def log_normal_pdf(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``log N(x; mean, std)``, elementwise."""
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - _HALF_LOG_2PI


# ------------------------------------------------------------------- pass 1: reduce each model's logits


def reduce_logits(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``(R, C)`` logits: the LiRA score ``s`` and ``log p_label``, both float64 ``(R,)``.

    The float64 formulas of :func:`raypriv.reference.lira_scores_from_logits` and
    :func:`raypriv.reference.loss_attack`, one row at a time, so a model's logits can be reduced
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


def reduce_model(store: RunStore, paradigm: str, model_id: int, n_audit: int, n_queries: int, labels: np.ndarray,
                 scores: np.ndarray | None, log_p: np.ndarray | None, batch_elements: int = 1 << 22,
                 n_population: int = 0, population: bool = False) -> tuple[float, float]:
    """One model's stored logits, read in row batches and reduced as they are read (both scoring backends).

    Fills ``scores`` (``(rows, Q)`` float32 LiRA scores) and ``log_p`` (``(rows,)``
    float32 label log-probability on query 0); either may be None.  ``labels``:
    the rows' labels (the audit's, or the population set's with ``population``).
    Returns the seconds spent reading and reducing.
    """
    batches = iter_logits(store, paradigm, model_id, n_audit, n_queries, batch_elements, n_population, population)
    read = reduce = 0.0
    while True:
        start = time.perf_counter()
        batch = next(batches, None)
        middle = time.perf_counter()
        read += middle - start
        if batch is None:
            return read, reduce
        sample, query, logits = batch
        score, label_log_p = reduce_logits(logits, labels[sample])
        if scores is not None:
            scores[sample, query] = to_float32(score)
        if log_p is not None:
            first = query == 0
            log_p[sample[first]] = to_float32(label_log_p[first])
        reduce += time.perf_counter() - middle


# ------------------------------------------------------------------- pass 2: blocks of audit samples


def _group_ids(member: np.ndarray) -> np.ndarray:
    """``(B, K)`` model ids of each sample's group, ascending; ``member`` is ``(B, M)`` with K Trues per row."""
    n_rows, n_models = member.shape
    flat = np.flatnonzero(member)
    return (flat - np.repeat(np.arange(n_rows) * n_models, member.sum(axis=1))).reshape(n_rows, -1)


def _loo_moments(
    scores32: np.ndarray, scores64: np.ndarray, member: np.ndarray, ids: np.ndarray, need_median: bool, center: str = "median"
) -> tuple[np.ndarray | None, np.ndarray]:
    """Leave-one-out centre (median, or mean with ``center="mean"``) and variance of one group, for one block; arrays are ``(B, Q, M)``.

    ``scores32``/``scores64``: the block's scores (float32 as stored, and as
    float64); ``member``: ``(B, M)`` group membership; ``ids``: its
    :func:`_group_ids`.  Same definitions as :func:`raypriv.reference.lira_attack`'s leave-one-out statistics:
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
    if center == "mean":
        return mean, variance
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
    total = _loo_sum(probs, member, ids_in) + _loo_sum(probs, ~member, ids_out)
    return total / (ids_in.shape[1] - 1 + ids_out.shape[1] - 1)


def _loo_sum(probs: np.ndarray, member: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per (sample, target): the sum of ``probs`` over the group ``ids`` less one (the target, else the highest id)."""
    values = np.take_along_axis(probs, ids, axis=1)  # (B, K)
    prefix = np.zeros_like(values)
    np.cumsum(values[:, :-1], axis=1, out=prefix[:, 1:])
    suffix = np.zeros_like(values)
    np.cumsum(values[:, :0:-1], axis=1, out=suffix[:, -2::-1])
    total = np.empty_like(probs)
    np.put_along_axis(total, ids, prefix + suffix, axis=1)  # targets in this group drop themselves
    return np.where(member, total, prefix[:, -1:])  # targets outside it: the group less its highest model id


class SampleBlock:
    """Every model's scores for one block of audit samples, and the statistics attacks share.

    Arrays are ``(B, Q, M)`` (samples, queries, models) or ``(B, M)``.  Each
    statistic is computed the first time an attack asks for it and then kept,
    so LiRA's online and offline variants share one OUT fit.
    """

    def __init__(self, scores: np.ndarray, keep: np.ndarray, start: int, stop: int, pooled: dict | None = None,
                 center: str = "median", offline_a: np.ndarray | None = None):
        self.scores32 = np.ascontiguousarray(scores[:, start:stop, :].transpose(1, 2, 0))  # (B, Q, M)
        self.scores64 = self.scores32.astype(np.float64)
        self.member = np.ascontiguousarray(keep[:, start:stop].T)  # (B, M)
        self.ids_in, self.ids_out = _group_ids(self.member), _group_ids(~self.member)
        self.pooled = pooled or {}  # {is_in_side: (Q, M) pooled variance} for the fixed-variance attacks
        self.center, self.offline_a = center, offline_a  # LiRA's Gaussian centre; RMIA offline's a per target

    def variance(self, in_side: bool) -> np.ndarray:
        """Leave-one-out variance of the IN (or OUT) shadows, without the median (the pooling pre-pass)."""
        member, ids = (self.member, self.ids_in) if in_side else (~self.member, self.ids_out)
        return _loo_moments(self.scores32, self.scores64, member, ids, need_median=False)[1]

    @cached_property
    def moments_out(self) -> tuple[np.ndarray, np.ndarray]:
        return _loo_moments(self.scores32, self.scores64, ~self.member, self.ids_out, True, self.center)

    @cached_property
    def moments_in(self) -> tuple[np.ndarray, np.ndarray]:
        return _loo_moments(self.scores32, self.scores64, self.member, self.ids_in, True, self.center)

    def log_pdf(self, in_side: bool, fixed_variance: bool) -> np.ndarray:
        """``log N(s; centre, std)`` of each score under its leave-one-out IN or OUT Gaussian."""
        key = (in_side, fixed_variance)
        cache = self.__dict__.setdefault("_log_pdf", {})
        if key not in cache:
            median, variance = self.moments_in if in_side else self.moments_out
            std = np.sqrt(self.pooled[in_side] if fixed_variance else variance) + _STD_FLOOR
            cache[key] = log_normal_pdf(self.scores64, median, std)
        return cache[key]

    @cached_property
    def label_probability(self) -> np.ndarray:
        """RMIA's ``Pr(x|theta)``: ``sigmoid(s) = p_y``, mean over queries, ``(B, M)``."""
        return expit(self.scores64).mean(axis=1)


def lira_online(block: SampleBlock, fixed_variance: bool = False) -> np.ndarray:
    return (block.log_pdf(True, fixed_variance) - block.log_pdf(False, fixed_variance)).mean(axis=1)


def lira_offline(block: SampleBlock, fixed_variance: bool = False) -> np.ndarray:
    return -block.log_pdf(False, fixed_variance).mean(axis=1)


def rmia_log_ratio(block: SampleBlock) -> np.ndarray:
    """``log Pr(x|theta) - log Pr(x)``; :func:`rmia_ranks` turns it into the RMIA score per target."""
    probs = block.label_probability
    prior = _loo_prior(probs, block.member, block.ids_in, block.ids_out)
    return np.log(probs + _LOG_FLOOR) - np.log(prior + _LOG_FLOOR)


def rmia_offline_log_ratio(block: SampleBlock) -> np.ndarray:
    """``log Pr(x|theta) - log Pr(x)`` with the offline ``Pr(x) = ((1 + a) Pr_OUT(x) + 1 - a) / 2``."""
    probs = block.label_probability
    out = _loo_sum(probs, ~block.member, block.ids_out) / (block.ids_out.shape[1] - 1)
    prior = offline_prior(out, block.offline_a[None, :])
    return np.log(probs + _LOG_FLOOR) - np.log(prior + _LOG_FLOOR)


@dataclass(frozen=True)
class Attack:
    """One entry of the attack table."""

    family: str  # "loss", "lira" or "rmia"
    inputs: str  # "loss": the label log-probability on query 0; "scores": the per-query LiRA scores
    headline_rank: int  # the report's fixed preference for its headline attack (0 first)
    block: Callable[[SampleBlock], np.ndarray] | None = None  # block -> float64 (B, M); None: the input itself
    # whole rows of block output, gamma, the rows' population log ratios (or None) -> scores
    finish: Callable[[np.ndarray, float, np.ndarray | None], np.ndarray] | None = None
    pooled_variance: tuple[bool, ...] = ()  # sides (True: IN) whose variance is pooled over all samples first


ATTACKS: dict[str, Attack] = {
    "loss": Attack("loss", "loss", 5),
    "lira_online": Attack("lira", "scores", 0, lira_online),
    "lira_offline": Attack("lira", "scores", 3, lira_offline),
    "lira_online_fixed": Attack("lira", "scores", 2, lambda b: lira_online(b, True), pooled_variance=(True, False)),
    "lira_offline_fixed": Attack("lira", "scores", 4, lambda b: lira_offline(b, True), pooled_variance=(False,)),
    "rmia": Attack("rmia", "scores", 1, rmia_log_ratio, finish=rmia_ranks),
    "rmia_offline": Attack("rmia", "scores", 6, rmia_offline_log_ratio, finish=rmia_ranks),
}


def headline_order() -> list[str]:
    """Attack names in the report's fixed order of preference for its headline attack."""
    return sorted(ATTACKS, key=lambda name: ATTACKS[name].headline_rank)


def check_attacks(attacks: Iterable[str]) -> list[str]:
    """The attack names as a list; an unknown one is a RayprivError listing the known ones."""
    attacks = list(attacks)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise RayprivError(f"unknown attack(s) {unknown}; choose from {list(ATTACKS)}")
    return attacks


def _map(function: Callable, items: Iterable, workers: int) -> list:
    """``list(map(function, items))`` on ``workers`` threads (NumPy releases the GIL in its kernels)."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, items))


def _group_size(keep: np.ndarray, attacks: list[str]) -> tuple[int, int]:
    """IN and OUT models per sample; the leave-one-out attacks need the same counts for every sample."""
    counts = keep.sum(axis=0)
    k_in, k_out = int(counts[0]), keep.shape[0] - int(counts[0])
    if any(ATTACKS[a].inputs == "scores" for a in attacks):
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
    center: str = "median",
    population: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every named attack from the reduced logits: ``{attack: float32 (n_models, n_audit)}``.

    ``scores``: float32 ``(M, N, Q)`` LiRA scores (needed by LiRA and RMIA);
    ``loss``: ``(M, N)`` log-probability of the label on query 0 (the loss
    attack, returned as it is); ``keep``: ``(M, N)`` membership.  Sample
    blocks of about ``block_elements`` scores are processed on ``workers``
    threads; results do not depend on either.  ``center``: LiRA's Gaussian
    centre, ``"median"`` or ``"mean"``; ``gamma``: RMIA's; ``population``:
    float32 ``(M, P, Q)`` LiRA scores on the population set, RMIA's ``z``.
    """
    attacks = check_attacks(attacks)
    keep = np.asarray(keep, dtype=bool)
    n_models, n_samples = keep.shape
    _group_size(keep, attacks)
    results: dict[str, np.ndarray] = {}
    for name in attacks:
        if ATTACKS[name].inputs == "loss":
            if loss is None or loss.shape != keep.shape:
                raise ValueError(f"the loss attack needs the (n_models, n_audit) = {keep.shape} label log-probabilities")
            results[name] = to_float32(loss)
    blocked = [name for name in attacks if ATTACKS[name].block is not None]
    if not blocked:
        return {a: results[a] for a in attacks}
    if scores is None or scores.shape[:2] != keep.shape:
        raise ValueError(f"LiRA and RMIA need (n_models, n_audit, n_queries) scores matching keep {keep.shape}")
    if scores.dtype != np.float32:
        scores = to_float32(scores)
    block = max(1, block_elements // (n_models * scores.shape[2]))
    bounds = [(start, min(n_samples, start + block)) for start in range(0, n_samples, block)]

    # The fixed-variance attacks pool each side's per-sample variances over all samples first: a cheap pass.
    pooled_sides = sorted({side for name in blocked for side in ATTACKS[name].pooled_variance})
    pooled: dict[bool, np.ndarray] = {}
    if pooled_sides:
        partial = _map(lambda b: [SampleBlock(scores, keep, *b).variance(side).sum(axis=0) for side in pooled_sides], bounds, workers)
        for i, side in enumerate(pooled_sides):
            pooled[side] = sum(p[i] for p in partial) / n_samples  # (Q, M): one variance per query and target

    offline_a = None
    if "rmia_offline" in blocked:  # Pr(x|theta) of every pair, as SampleBlock.label_probability computes it
        rows = max(1, block_elements // (n_samples * scores.shape[2]))
        probs = np.concatenate([expit(scores[i : i + rows].astype(np.float64)).mean(axis=2) for i in range(0, n_models, rows)])
        offline_a = fit_offline_a(probs, keep, gamma)
        del probs

    staged = {}  # attacks with a whole-row finish keep their block outputs in float64 until then
    for name in blocked:
        if ATTACKS[name].finish is None:
            results[name] = np.empty((n_models, n_samples), dtype=np.float32)
        else:
            staged[name] = np.empty((n_models, n_samples), dtype=np.float64)

    def main_pass(b: tuple[int, int]) -> None:
        sample_block = SampleBlock(scores, keep, *b, pooled=pooled, center=center, offline_a=offline_a)
        for name in blocked:
            value = ATTACKS[name].block(sample_block)
            if name in staged:
                staged[name][:, b[0] : b[1]] = value.T
            else:
                results[name][:, b[0] : b[1]] = to_float32(value).T

    _map(main_pass, bounds, workers)
    for name, values in staged.items():
        rows = max(1, (1 << 22) // max(n_samples, 1))
        results[name] = np.empty((n_models, n_samples), dtype=np.float32)
        versus = None if population is None else population_log_ratio(population, offline_a if name == "rmia_offline" else None)

        def finish(start: int, name: str = name, values: np.ndarray = values, versus: np.ndarray | None = versus) -> None:
            z = None if versus is None else versus[start : start + rows]
            results[name][start : start + rows] = ATTACKS[name].finish(values[start : start + rows], gamma, z)

        _map(finish, range(0, n_models, rows), workers)
    return {a: results[a] for a in attacks}


def run_attacks(
    logits: np.ndarray, labels: np.ndarray, keep: np.ndarray, attacks: list[str], gamma: float = RMIA_GAMMA, workers: int = 1,
    center: str = "median",
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
    return score_attacks(score, log_p, keep, attacks, gamma=gamma, workers=workers, center=center)
