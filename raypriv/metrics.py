"""ROC metrics of an attack: AUC, balanced accuracy, TPR at low FPR, the epsilon lower bound, intervals.

One implementation of each: :func:`roc_metrics` summarises an attack's ROC
in one streaming pass (the audit and the report use it), :func:`clopper_pearson_lower`
and :func:`clopper_pearson_upper` are the one exact binomial bound, and the
bootstrap below gives the report's intervals.  A plain reference version on
sklearn's full curve is in :mod:`raypriv.attacks.reference`, for the tests.

The empirical epsilon lower bound turns the ROC counts into the smallest
epsilon any (epsilon, delta)-DP training could have and still produce them
(Kairouz et al. 2015's hypothesis-testing view, as used by Jagielski et al.
2020 and Nasr et al. 2021): DP forces ``TPR <= e^eps FPR + delta`` and
``1 - FPR <= e^eps (1 - TPR) + delta`` at every threshold.  The counts are
samples, so we take a one-sided Clopper-Pearson upper bound on FPR and lower
bound on TPR (confidence ``1 - alpha`` each) before solving for epsilon,
and report the best threshold: optimistic, so metrics.json reports the valid
:func:`epsilon_lower_bound_from_scores` instead (end of this module).

TPR at a target FPR reads the ROC curve the way it is achievable: the curve
between two operating points is the straight line a randomised threshold
attains, so the TPR at FPR ``t`` is the highest TPR at FPR <= ``t`` when a
point lies exactly at ``t``, and the linear interpolation between the two
neighbouring points otherwise.  (The reference LiRA code takes the last point
with FPR < ``t``, which under-reads the TPR whenever the grid is coarse.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import beta

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


def clopper_pearson_lower(successes, trials, alpha: float):
    """One-sided Clopper-Pearson lower bound at confidence ``1 - alpha`` (vectorised; 0 for 0 successes)."""
    successes = np.asarray(successes)
    return np.where(successes <= 0, 0.0, beta.ppf(alpha, successes, trials - successes + 1))


def clopper_pearson_upper(successes, trials, alpha: float):
    """One-sided Clopper-Pearson upper bound at confidence ``1 - alpha`` (vectorised; 1 for all successes)."""
    successes = np.asarray(successes)
    return np.where(successes >= trials, 1.0, beta.ppf(1 - alpha, successes + 1, trials - successes))


def value_keys(score: np.ndarray) -> np.ndarray:
    """uint32 keys in the order of the float32 ``score``: equal keys are equal scores (-0.0 is 0.0)."""
    bits = (np.asarray(score, dtype=np.float32) + np.float32(0.0)).view(np.uint32)
    return np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))


def _sorted_keys(is_in: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ascending score order as ``(value keys, labels)``: equal keys are equal scores.

    float32 scores are packed with their label into one uint64 (the float's
    bits made order-preserving, shifted, plus the label bit), so one sort of
    8-byte keys does it; other dtypes fall back to an argsort.
    """
    if score.dtype == np.float32:
        keys = value_keys(score).astype(np.uint64)
        keys <<= np.uint64(1)
        keys |= is_in.view(np.uint8)
        keys.sort()
        return keys, None
    order = np.argsort(score, kind="stable")
    return score[order], is_in[order]


def _count_grid(n: int) -> np.ndarray:
    """Counts 0..n, dense at both ends: every count within 2048 of 0 or of n, else steps of 0.05% of the
    distance to the nearer end (a Clopper-Pearson bound moves with the count's distance from 0 and from n)."""
    if n <= 4096:
        return np.arange(n + 1)
    steps = int(np.ceil(np.log(n / 2048) / np.log(1.0005))) + 1
    half = np.union1d(np.arange(2049), np.round(np.geomspace(2048, n, steps)).astype(np.int64))
    return np.union1d(half, n - half)


def run_ends(values: np.ndarray, following: Any = None) -> np.ndarray:
    """Mask of the last pair of each run of equal ``values``, one operating point each (``following``: the next value)."""
    end = np.empty(len(values), dtype=bool)
    end[:-1] = values[:-1] != values[1:]
    if len(values):
        end[-1] = following is None or values[-1] != following
    return end


class RocWalk:
    """The running sums of :func:`roc_metrics`, fed one slice of operating points at a time, from the top.

    :meth:`add` takes the cumulative ``(tp, fp)`` at each operating point of a slice (descending scores) after
    the point ``(start_tp, start_fp)``: a chunk of one sort (:func:`roc_metrics`) or a score range on a worker
    (:mod:`raypriv.scoring.partitions`).  :meth:`merge` appends a later slice's walk; the sums are integers
    and maxima, so any cut of the curve into slices gives the same numbers."""

    def __init__(self, n_in: int, n_out: int, keep_all: bool) -> None:
        self.n_in, self.n_out = n_in, n_out
        self.twice_area = 0  # sum of (fp_i - fp_{i-1}) * (tp_i + tp_{i-1}): exact in integers
        self.balanced = -np.inf
        self.below: dict[str, tuple[float, float] | None] = {key: None for key in LOW_FPRS}  # last point at FPR <= target
        self.above: dict[str, tuple[float, float] | None] = {key: None for key in LOW_FPRS}  # first point above it
        self.curve_fpr, self.curve_tpr = [], []  # the curve's points, one array per slice
        self.grid = None if keep_all else np.unique(  # the thinned curve's FPR grid, built once, not per slice
            np.concatenate([np.geomspace(1.0 / n_out, 1.0, 2000), np.linspace(0.0, 1.0, 1001)]))

    def add(self, tp: np.ndarray, fp: np.ndarray, start_tp: int, start_fp: int) -> "RocWalk":
        if len(tp) == 0:
            return self
        fpr, tpr = fp / self.n_out, tp / self.n_in
        previous_fp = np.concatenate([[start_fp], fp[:-1]]).astype(np.int64)
        previous_tp = np.concatenate([[start_tp], tp[:-1]]).astype(np.int64)
        self.twice_area += int(np.sum((fp - previous_fp) * (tp + previous_tp)))
        self.balanced = max(self.balanced, float(np.max(1.0 - (fpr + (1.0 - tpr)) / 2.0)))
        for key, target in LOW_FPRS.items():
            at_or_below = np.flatnonzero(fpr <= target)  # a prefix: fpr is non-decreasing
            if len(at_or_below):
                self.below[key] = (fpr[at_or_below[-1]], tpr[at_or_below[-1]])
            if self.above[key] is None and len(at_or_below) < len(fpr):
                first = at_or_below[-1] + 1 if len(at_or_below) else 0
                self.above[key] = (fpr[first], tpr[first])
        if self.grid is None:  # every operating point
            self.curve_fpr.append(fpr)
            self.curve_tpr.append(tpr)
        else:  # exact points on the FPR grid
            index = np.searchsorted(fpr, self.grid, side="right") - 1
            index = np.unique(np.concatenate([index, index + 1, [len(fpr) - 1]]))
            index = index[(index >= 0) & (index < len(fpr))]
            self.curve_fpr.append(fpr[index])
            self.curve_tpr.append(tpr[index])
        return self

    def merge(self, later: "RocWalk") -> "RocWalk":
        """Append the walk of the slice that follows this one's (lower scores)."""
        self.twice_area += later.twice_area
        self.balanced = max(self.balanced, later.balanced)
        for key in LOW_FPRS:
            if later.below[key] is not None:
                self.below[key] = later.below[key]
            if self.above[key] is None:
                self.above[key] = later.above[key]
        self.curve_fpr += later.curve_fpr
        self.curve_tpr += later.curve_tpr
        return self

    def result(self) -> tuple[dict[str, float], tuple[np.ndarray, np.ndarray]]:
        """:func:`roc_metrics`' return value, once every slice is in."""
        metrics: dict[str, float] = {
            "auc": self.twice_area / (2.0 * self.n_in * self.n_out),
            "balanced_acc": max(0.5, self.balanced),  # 0.5 at the (0, 0) point
        }
        for key, target in LOW_FPRS.items():
            points = [self.below[key] or (0.0, 0.0)] + ([self.above[key]] if self.above[key] is not None else [])
            metrics[key] = tpr_at_fpr(np.array([p[0] for p in points]), np.array([p[1] for p in points]), target)
        metrics["n_in"] = self.n_in
        metrics["n_out"] = self.n_out
        return metrics, (np.concatenate([np.zeros(1), *self.curve_fpr]), np.concatenate([np.zeros(1), *self.curve_tpr]))


def roc_metrics(
    is_in: np.ndarray, score: np.ndarray, *, chunk: int = 1 << 22, max_curve_points: int = 200_000
) -> tuple[dict[str, float], tuple[np.ndarray, np.ndarray]]:
    """AUC, balanced accuracy and TPR at low FPR in bounded memory, and the ROC curve to plot.

    Walks the ROC operating points (one per distinct score, from the highest
    threshold down) ``chunk`` pairs at a time, keeping running sums
    (:class:`RocWalk`): AUC as the exact trapezoid sum in integer counts,
    balanced accuracy as a running maximum, TPR at each low FPR from the two
    operating points around it.  Values equal
    :func:`raypriv.attacks.reference.sklearn_metrics`' (sklearn's full curve; AUC to
    rounding).  The epsilon lower bound is
    :func:`epsilon_lower_bound_from_scores`: the best threshold of this curve
    would be an optimistic, invalid bound.  The returned ``(fpr, tpr)``
    is every operating point when there are at most ``max_curve_points``
    pairs, else a subset on a log- and a linear-spaced FPR grid (exact
    points, fine enough for the log-log plot).
    """
    is_in = np.asarray(is_in, dtype=bool).ravel()
    score = np.asarray(score).ravel()
    if score.dtype.kind != "f":
        score = score.astype(np.float64)
    if not np.isfinite(score).all():
        raise ValueError("attack scores must be finite")
    n = len(score)
    n_in = int(is_in.sum())
    n_out = n - n_in
    if n_in == 0 or n_out == 0:
        raise ValueError(f"ROC metrics need IN and OUT pairs; got {n_in} IN and {n_out} OUT")
    keys, labels = _sorted_keys(is_in, score)
    packed = labels is None
    walk = RocWalk(n_in, n_out, keep_all=n <= max_curve_points)
    last_tp, last_fp, tp_before, seen = 0, 0, 0, 0  # the previous operating point; pairs walked so far
    for stop in range(n, 0, -chunk):
        start = max(0, stop - chunk)
        part = keys[start:stop][::-1]  # descending scores
        if packed:
            values, label = part >> np.uint64(1), (part & np.uint64(1)).astype(np.int64)
            following = keys[start - 1] >> np.uint64(1) if start > 0 else None
        else:
            values, label = part, labels[start:stop][::-1].astype(np.int64)
            following = keys[start - 1] if start > 0 else None
        end = run_ends(values, following)
        cumulative = tp_before + np.cumsum(label)
        tp = cumulative[end]
        fp = seen + 1 + np.flatnonzero(end) - tp
        tp_before, seen = int(cumulative[-1]), seen + len(values)
        walk.add(tp, fp, last_tp, last_fp)
        if len(tp):
            last_tp, last_fp = int(tp[-1]), int(fp[-1])
    del keys, labels
    return walk.result()


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
    return float(clopper_pearson_lower(k, trials, tail)), float(clopper_pearson_upper(k, trials, tail))


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
    :func:`roc_metrics` does (ties kept together, TPR interpolated between
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


# ------------------------------------------------------- a valid epsilon lower bound
#
# roc_metrics' eps_lower_bound takes the best of all thresholds, each bounded at 95% on the same data: it exceeds
# a known epsilon in about a third of simulated audits.  This one is valid: (1) the threshold and which DP
# inequality to test are chosen on a random half of the units, the bound computed on the other half alone (one
# test: a union bound over ~10^4 thresholds costs more than halving the data at low FPR); (2) the two one-sided
# bounds share 1 - confidence; (3) with ``groups`` the unit is the sample: halves split samples and the held-out
# half gives one pair per sample (random model), so one sample's correlated pairs are never separate trials.


def _epsilon_candidates(tp, n_in, fp, n_out, delta: float, alpha: float) -> np.ndarray:
    """``(2, K)``: epsilon from ``TPR <= e^eps FPR + delta`` (row 0) and from its complement (row 1), NaN if none."""
    fpr_high = clopper_pearson_upper(fp, n_out, alpha)
    tpr_low = clopper_pearson_lower(tp, n_in, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        forms = np.stack([np.log((tpr_low - delta) / fpr_high), np.log((1.0 - fpr_high - delta) / (1.0 - tpr_low))])
    return np.where(np.isfinite(forms), forms, np.nan)


def grid_points(fp: np.ndarray, n_out: int) -> np.ndarray:
    """Indices of the operating points ``_choose_threshold`` considers: per :func:`_count_grid` count, the last
    point at or below it (only its highest-TP point can win).  Applied to any subsequence that keeps those
    points, in order, it picks the same points (how the partitioned metrics merge)."""
    point = np.unique(np.searchsorted(fp, _count_grid(n_out), side="right") - 1)
    return point[point >= 0]


def best_threshold(tp: np.ndarray, fp: np.ndarray, values: np.ndarray, n_in: int, n_out: int, delta: float, alpha: float,
                   held_in: int, held_out: int) -> tuple[float, int, int]:
    """``(threshold, inequality, index into the points)`` of largest bound, ``(inf, 0, -1)`` if none.

    ``tp``, ``fp``, ``values``: cumulative counts and score at operating points
    (descending scores) of the selection half (``n_in`` IN, ``n_out`` OUT
    pairs), all of them or any subsequence holding :func:`grid_points`'; rates
    are scaled to the held-out counts."""
    point = grid_points(fp, n_out)
    tp_held, fp_held = tp[point] * (held_in / n_in), fp[point] * (held_out / n_out)
    candidates = _epsilon_candidates(tp_held, held_in, fp_held, held_out, delta, alpha)
    if np.isnan(candidates).all():
        return np.inf, 0, -1
    form, best = np.unravel_index(np.nanargmax(candidates), candidates.shape)
    return float(values[point[best]]), int(form), int(point[best])


def _choose_threshold(
    is_in: np.ndarray, scores: np.ndarray, delta: float, alpha: float, held_in: int, held_out: int
) -> tuple[float, int]:
    """The threshold (IN at ``score >= t``) and inequality of largest bound, rates scaled to the held-out counts.

    Per FP count only its highest-TP point can win; beyond 4,096 OUT pairs only :func:`_count_grid`'s counts."""
    n_in, n_out = int(is_in.sum()), int((~is_in).sum())
    if n_in == 0 or n_out == 0:
        return np.inf, 0
    order = np.argsort(-scores)  # the order within ties is irrelevant: only each run's end is an operating point
    ordered, labels = scores[order], is_in[order]
    last = run_ends(ordered)  # one operating point per distinct score
    tp, fp = np.cumsum(labels)[last], np.cumsum(~labels)[last]
    threshold, form, _ = best_threshold(tp, fp, ordered[last], n_in, n_out, delta, alpha, held_in, held_out)
    return threshold, form


def split_halves(units: np.ndarray, n_units: int, rng: np.random.Generator, one_per_unit: bool) -> tuple[np.ndarray, np.ndarray]:
    """The bound's random halves: ``select`` (bool per pair: the threshold-choice half, a random half of the
    units) and ``held`` (indices of the held-out pairs; with ``one_per_unit`` one per held-out unit, its pair
    drawn at random)."""
    select = (rng.permutation(n_units) < n_units // 2)[units]
    held = np.flatnonzero(~select)
    if one_per_unit:
        shuffled, chosen = rng.permutation(held), np.full(n_units, -1, dtype=np.int64)
        chosen[units[shuffled]] = shuffled  # one pair per unit (the one written last): fixed by the shuffle alone
        held = chosen[chosen >= 0]
    return select, held


def epsilon_lower_bound_from_scores(
    is_in: np.ndarray,
    scores: np.ndarray,
    *,
    delta: float = 0.0,
    confidence: float = 0.95,
    groups: np.ndarray | None = None,
    seed: int = 0,
) -> float:
    """A lower bound on the epsilon of any (epsilon, delta)-DP training that gave these attack scores, valid at ``confidence``.

    ``is_in``: bool, ``scores``: float of the same shape (one entry per
    (model, sample) pair); ``groups``: optional sample id per pair, making the
    audit sample the unit (see the comment above).  ``seed`` fixes the random
    halves, so the value is reproducible.  0 when nothing can be concluded.
    """
    is_in = np.asarray(is_in, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if is_in.shape != scores.shape:
        raise ValueError(f"is_in has {is_in.size} entries but scores {scores.size}; they must match")
    if not np.isfinite(scores).all():
        raise ValueError("attack scores must be finite")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be between 0 and 1")
    rng = np.random.default_rng(seed)
    if groups is None:
        units = np.arange(len(scores))
    else:
        groups = np.asarray(groups).ravel()
        if groups.shape != scores.shape:
            raise ValueError(f"groups has {groups.size} entries but scores {scores.size}; they must match")
        small_ids = groups.dtype.kind in "iu" and len(groups) and groups.min() >= 0 and groups.max() < len(groups)
        units = groups.astype(np.int64) if small_ids else np.unique(groups, return_inverse=True)[1]  # ids as they are
    n_units = int(units.max()) + 1 if len(units) else 0
    select, held = split_halves(units, n_units, rng, one_per_unit=groups is not None)
    alpha = (1.0 - confidence) / 2.0
    held_in = is_in[held]
    n_in, n_out = int(held_in.sum()), int((~held_in).sum())
    # The choice sees only the selected half and the held-out counts (not which held-out pair is IN).
    threshold, form = _choose_threshold(is_in[select], scores[select], delta, alpha, max(n_in, 1), max(n_out, 1))
    guess = scores[held] >= threshold
    return held_out_bound(int(np.sum(guess & held_in)), n_in, int(np.sum(guess & ~held_in)), n_out, threshold, form, delta, alpha)


def held_out_bound(tp: int, n_in: int, fp: int, n_out: int, threshold: float, form: int, delta: float, alpha: float) -> float:
    """The bound from the held-out half's counts at the chosen threshold and inequality (0 if none)."""
    if n_in == 0 or n_out == 0 or not np.isfinite(threshold):
        return 0.0
    value = _epsilon_candidates(tp, n_in, fp, n_out, delta, alpha)[form]
    return float(max(0.0, value)) if np.isfinite(value) else 0.0


def audit_epsilon_lower_bound(is_in: np.ndarray, scores: np.ndarray, delta: float = 0.0) -> float:
    """metrics.json's ``eps_lower_bound``: :func:`epsilon_lower_bound_from_scores` of ``(n_models, n_audit)``
    arrays with the audit sample (column) as the unit, at 95%."""
    is_in = np.asarray(is_in, dtype=bool)
    groups = np.broadcast_to(np.arange(is_in.shape[-1]), is_in.shape)
    return epsilon_lower_bound_from_scores(is_in, scores, delta=delta, groups=groups)
