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
and report the best threshold: optimistic (:mod:`raypriv.attacks.reference` keeps it for
comparison).  metrics.json reports the valid :func:`epsilon_lower_bound_from_scores` (end of this module,
computed in :mod:`raypriv.epsilon`: every pair, a fixed threshold grid, Bonferroni).

TPR at a target FPR ``t`` has three read-outs (:data:`TPR_READOUTS`; the
config's ``audit.tpr_readout``, recorded per attack in ``metrics.json``):

* ``interpolate`` (the default): the curve as it is achievable.  Between two
  operating points it is the straight line a randomised threshold attains,
  so the TPR is the highest TPR at FPR <= ``t`` when a point lies exactly at
  ``t``, and the linear interpolation between the two neighbouring points
  otherwise.
* ``at-or-below``: the TPR of the last operating point with FPR <= ``t``
  (deterministic thresholds only; sklearn-style).
* ``below``: the last point with FPR < ``t``, as the reference LiRA code
  (``tpr[np.where(fpr < t)[0][-1]]``) and RMIA's read it; it under-reads
  whenever the grid is coarse, e.g. 0 at ``t = 1 / n_out``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import beta

from raypriv.epsilon import check_balanced, pair_epsilon_bound
from raypriv.sorting import flat_pairs, run_ends, sorted_keys

LOW_FPRS = {"tpr@0.1%fpr": 0.001, "tpr@1%fpr": 0.01}
TPR_READOUTS = ("interpolate", "at-or-below", "below")


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float, readout: str = "interpolate") -> float:
    """TPR of the ROC curve ``(fpr, tpr)`` (non-decreasing, from ``(0, 0)`` or not) at FPR ``target``.

    ``readout``: one of :data:`TPR_READOUTS` (module docstring); 0 where no
    point qualifies.
    """
    if readout not in TPR_READOUTS:
        raise ValueError(f"unknown TPR read-out {readout!r}; choose one of {TPR_READOUTS}")
    fpr, tpr = np.asarray(fpr), np.asarray(tpr)
    if readout == "below":
        below = np.flatnonzero(fpr < target)
        return float(tpr[below[-1]]) if len(below) else 0.0
    at_or_below = np.flatnonzero(fpr <= target)
    if len(at_or_below) == 0:
        return 0.0
    i = at_or_below[-1]
    if readout == "at-or-below" or fpr[i] == target or i == len(fpr) - 1:
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
        self.strictly_below: dict[str, tuple[float, float] | None] = {key: None for key in LOW_FPRS}  # ... FPR < target
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
            strict = np.flatnonzero(fpr < target)
            if len(strict):
                self.strictly_below[key] = (fpr[strict[-1]], tpr[strict[-1]])
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
            if later.strictly_below[key] is not None:
                self.strictly_below[key] = later.strictly_below[key]
            if self.above[key] is None:
                self.above[key] = later.above[key]
        self.curve_fpr += later.curve_fpr
        self.curve_tpr += later.curve_tpr
        return self

    def result(self, tpr_readout: str = "interpolate") -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
        """:func:`roc_metrics`' return value, once every slice is in; TPR at low FPR read as ``tpr_readout``."""
        metrics: dict[str, Any] = {
            "auc": self.twice_area / (2.0 * self.n_in * self.n_out),
            "balanced_acc": max(0.5, self.balanced),  # 0.5 at the (0, 0) point
        }
        for key, target in LOW_FPRS.items():
            points = [(0.0, 0.0)] + [p for p in (self.strictly_below[key], self.below[key], self.above[key]) if p is not None]
            metrics[key] = tpr_at_fpr(np.array([p[0] for p in points]), np.array([p[1] for p in points]), target, tpr_readout)
        metrics["n_in"] = self.n_in
        metrics["n_out"] = self.n_out
        metrics["tpr_readout"] = tpr_readout
        return metrics, (np.concatenate([np.zeros(1), *self.curve_fpr]), np.concatenate([np.zeros(1), *self.curve_tpr]))


def roc_metrics(
    is_in: np.ndarray, score: np.ndarray, *, chunk: int = 1 << 22, max_curve_points: int = 200_000,
    tpr_readout: str = "interpolate",
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """AUC, balanced accuracy and TPR at low FPR in bounded memory, and the ROC curve to plot.

    Walks the ROC operating points (one per distinct score, from the highest
    threshold down) ``chunk`` pairs at a time, keeping running sums
    (:class:`RocWalk`): AUC as the exact trapezoid sum in integer counts,
    balanced accuracy as a running maximum, TPR at each low FPR from the two
    operating points around it, read as ``tpr_readout`` (:data:`TPR_READOUTS`,
    recorded under ``"tpr_readout"``).  Values equal
    :func:`raypriv.attacks.reference.sklearn_metrics`' (sklearn's full curve; AUC to
    rounding).  The epsilon lower bound is
    :func:`epsilon_lower_bound_from_scores`: the best threshold of this curve
    would be an optimistic, invalid bound.  The returned ``(fpr, tpr)``
    is every operating point when there are at most ``max_curve_points``
    pairs, else a subset on a log- and a linear-spaced FPR grid (exact
    points, fine enough for the log-log plot).
    """
    is_in, score = flat_pairs(is_in, score)
    n = len(score)
    n_in = int(is_in.sum())
    n_out = n - n_in
    if n_in == 0 or n_out == 0:
        raise ValueError(f"ROC metrics need IN and OUT pairs; got {n_in} IN and {n_out} OUT")
    keys, labels = sorted_keys(is_in, score)
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
    return walk.result(tpr_readout)


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
# * Two-way bootstrap over models and audit samples (``model_weights`` of
#   :func:`bootstrap_roc_metrics`, drawn by :func:`two_way_bootstrap_weights`):
#   each replicate resamples the target models and the audit samples
#   independently and weights pair (m, s) by the product of their counts
#   (Owen 2007's "pigeonhole" bootstrap for crossed designs).  It includes
#   model-to-model variation (one noisy training run, one lucky seed), which the
#   sample bootstrap leaves out; it double-counts the pair-level noise, so it is
#   conservative.  The DP-SGD frontier verdict uses it.  What it does not cover:
#   a LiRA or RMIA score of one model depends on the other models (its
#   shadows), so the models are not fully independent units.
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


def two_way_bootstrap_weights(
    n_models: int, n_samples: int, n_boot: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(model_weights int32[n_boot, n_models], sample_weights int32[n_boot, n_samples])``: one two-way resample each.

    Replicate ``r`` draws the models and the audit samples independently with
    replacement; pass both to :func:`bootstrap_roc_metrics`.  Runs whose
    paradigms share the keep matrix use the same draws for all of them, so
    model ``m`` (keep row ``m``) and sample ``s`` are resampled together across
    paradigms and the comparison stays paired.
    """
    def draw(n: int) -> np.ndarray:  # counts of n draws with replacement among n, one row per replicate
        return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.int32)

    return draw(n_models), draw(n_samples)


def bootstrap_roc_metrics(
    is_in: np.ndarray,
    score: np.ndarray,
    weights: np.ndarray,
    fprs: dict[str, float] = LOW_FPRS,
    block_elements: int = 4_000_000,
    model_weights: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """AUC and TPR at each FPR in ``fprs`` for every weighting of the audit samples (and of the models).

    ``is_in`` and ``score`` are ``(n_models, n_audit)`` (column = audit
    sample); ``weights`` is ``(n_replicates, n_audit)`` (e.g. from
    :func:`bootstrap_weights`).  With ``model_weights``
    (``(n_replicates, n_models)``, e.g. from :func:`two_way_bootstrap_weights`)
    pair ``(m, s)`` of replicate ``r`` weighs ``model_weights[r, m] *
    weights[r, s]``: the two-way bootstrap; without, the models are held
    fixed.  Returns ``{"auc": float64[n_replicates], key:
    float64[n_replicates] for key in fprs}``, computed exactly as
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
    if model_weights is not None:
        model_weights = np.asarray(model_weights, dtype=np.float64)
        if model_weights.shape != (len(weights), score.shape[0]):
            raise ValueError(f"model_weights {model_weights.shape} must be ({len(weights)}, {score.shape[0]})")
    flat_score = score.ravel()
    order = np.argsort(-flat_score, kind="stable")
    sorted_score = flat_score[order]
    sorted_in = is_in.ravel()[order]
    sorted_sample = np.tile(np.arange(score.shape[1]), score.shape[0])[order]
    sorted_model = np.repeat(np.arange(score.shape[0]), score.shape[1])[order]
    # The last pair of each run of tied scores: one operating point per distinct threshold.
    group_end = np.append(sorted_score[1:] != sorted_score[:-1], True)

    n_rep = len(weights)
    out: dict[str, np.ndarray] = {"auc": np.empty(n_rep)}
    out.update({key: np.empty(n_rep) for key in fprs})
    block = max(1, block_elements // max(1, len(order)))
    for start in range(0, n_rep, block):
        pair_weight = weights[start : start + block][:, sorted_sample]
        if model_weights is not None:
            pair_weight *= model_weights[start : start + block][:, sorted_model]
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


def bootstrap_tpr_at_fpr(
    is_in: np.ndarray,
    score: np.ndarray,
    weights: np.ndarray,
    fpr: float,
    model_weights: np.ndarray | None = None,
) -> np.ndarray:
    """float64 ``(n_replicates,)``: TPR at FPR ``fpr`` for every weighting, as :func:`bootstrap_roc_metrics` gives it.

    The same arguments and the same value (ties kept together, TPR
    interpolated between operating points, NaN without IN or OUT weight), for
    one FPR and without the AUC: it walks the OUT and the IN pairs apart, so
    it costs ``O(n_replicates * n_pairs)`` with a small constant (the DP-SGD
    frontier's two-way bootstrap, and its simulation, call it thousands of
    times).  The last operating point at or below ``fpr`` is the one just
    above the first OUT score whose cumulative OUT weight exceeds ``fpr``;
    the next is the end of that score's run of ties.
    """
    is_in = np.asarray(is_in, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    if is_in.shape != score.shape or is_in.ndim != 2:
        raise ValueError(f"is_in {is_in.shape} and score {score.shape} must both be (n_models, n_audit)")
    weights = np.asarray(weights)
    if weights.ndim != 2 or weights.shape[1] != score.shape[1]:
        raise ValueError(f"weights {weights.shape} must be (n_replicates, {score.shape[1]})")
    n_rep = len(weights)
    if model_weights is None:
        model_weights = np.ones((n_rep, score.shape[0]), dtype=np.int32)
    model_weights = np.asarray(model_weights)
    if model_weights.shape != (n_rep, score.shape[0]):
        raise ValueError(f"model_weights {model_weights.shape} must be ({n_rep}, {score.shape[0]})")
    counts = weights.dtype.kind in "iu" and model_weights.dtype.kind in "iu"  # resampling counts add up exactly
    dtype = np.int64 if counts else np.float64
    weights, model_weights = weights.astype(dtype, copy=False), model_weights.astype(dtype, copy=False)
    flat_score, flat_in = score.ravel(), is_in.ravel()

    def side(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Descending scores of one side, and the cumulative weight of each replicate along them (prefixed 0)."""
        pairs = np.flatnonzero(mask)
        pairs = pairs[np.argsort(-flat_score[pairs], kind="stable")]
        model, sample = np.divmod(pairs, score.shape[1])  # pair (m, s) weighs model_weights[r, m] * weights[r, s]
        cumulative = np.zeros((n_rep, len(pairs) + 1), dtype=dtype)
        np.cumsum(np.take(model_weights, model, axis=1) * np.take(weights, sample, axis=1), axis=1, out=cumulative[:, 1:])
        return flat_score[pairs], cumulative

    in_score, in_cum = side(flat_in)
    out_score, out_cum = side(~flat_in)
    rows = np.arange(n_rep)
    total_in, total_out = in_cum[:, -1].astype(np.float64), out_cum[:, -1].astype(np.float64)
    target = fpr * total_out
    result = np.ones(n_rep)
    # The index of the first OUT pair past the target (for integer weights, cum <= target iff cum <= floor(target)).
    bound = np.floor(target).astype(dtype) if counts else target
    crossing = np.count_nonzero(out_cum[:, 1:] <= bound[:, None], axis=1)
    inside = crossing < len(out_score)  # beyond the last OUT pair the curve ends at (1, 1)
    at = out_score[np.minimum(crossing, len(out_score) - 1)]

    def weight_above(sorted_desc: np.ndarray, cum: np.ndarray, strictly: bool) -> np.ndarray:
        count = np.searchsorted(-sorted_desc, -at, side="left" if strictly else "right")
        return cum[rows, count].astype(np.float64)

    fpr_before, fpr_after = weight_above(out_score, out_cum, True), weight_above(out_score, out_cum, False)
    tpr_before, tpr_after = weight_above(in_score, in_cum, True), weight_above(in_score, in_cum, False)
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.where(fpr_before == target, 0.0, (target - fpr_before) / (fpr_after - fpr_before))
        result = np.where(inside, (tpr_before + step * (tpr_after - tpr_before)) / total_in, 1.0)
    return np.where((total_in > 0) & (total_out > 0), result, np.nan)


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


def one_sided_bootstrap_p(replicates: np.ndarray, side: str) -> float:
    """Bootstrap p-value against "the statistic lies on ``side`` of zero" (``"below"`` or ``"above"``).

    ``replicates``: the statistic's bootstrap replicates (e.g. a paired
    difference; NaN dropped).  The share of replicates on ``side`` of zero, ties
    at zero counted half (mid-p): a percentile interval at ``1 - 2 alpha`` lies
    strictly on the other side exactly when this is at most ``alpha``, up to
    ties.  Counting ties half means that replicates stuck at 0 (two TPRs of 0,
    nothing measured) give ``p >= 0.5`` and never evidence.  NaN with no finite
    replicate.
    """
    values = np.asarray(replicates, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan")
    if side not in ("below", "above"):
        raise ValueError(f"side={side!r}: choose 'below' or 'above'")
    beyond = np.mean(values < 0.0) if side == "below" else np.mean(values > 0.0)
    return float(beyond + 0.5 * np.mean(values == 0.0))


def mean_difference_test(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> dict[str, float]:
    """Welch's t for ``mean(a) - mean(b)`` of two independent samples (e.g. per-model test accuracies).

    Returns ``difference``, its two-sided ``low``/``high`` interval at
    ``confidence`` (t quantile, Welch–Satterthwaite degrees of freedom ``df``),
    ``p_above``: the one-sided p-value against ``difference > 0`` (small when
    ``a`` is clearly lower), and ``p_below`` against ``difference < 0``.  With
    fewer than 2 values in either sample nothing can be concluded (NaN interval,
    p-values 1); with no spread at all the difference is taken as exact.
    """
    from scipy.stats import t as student_t

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    nan = float("nan")
    if len(a) < 2 or len(b) < 2:
        difference = float(a.mean() - b.mean()) if len(a) and len(b) else nan
        return {"difference": difference, "low": nan, "high": nan, "p_above": 1.0, "p_below": 1.0, "df": nan}
    difference = float(a.mean() - b.mean())
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = float(np.sqrt(va + vb))
    if se == 0.0:  # every value identical within each sample: the sign of the difference is certain
        sign = float(np.sign(difference))
        return {"difference": difference, "low": difference, "high": difference, "df": float("inf"),
                "p_above": (1.0 + sign) / 2.0, "p_below": (1.0 - sign) / 2.0}
    df = float((va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)))
    spread = float(student_t.ppf(0.5 + confidence / 2.0, df)) * se
    statistic = difference / se
    return {
        "difference": difference, "low": difference - spread, "high": difference + spread, "df": df,
        "p_above": float(student_t.cdf(statistic, df)), "p_below": float(student_t.sf(statistic, df)),
    }


# ------------------------------------------------------- the epsilon lower bound
#
# The bound metrics.json reports lives in :mod:`raypriv.epsilon` (all pairs, a fixed threshold grid, Bonferroni;
# its docstring says why pooling pairs is valid and what it does not cover).  These two are its public names here.


def epsilon_lower_bound_from_scores(
    is_in: np.ndarray,
    scores: np.ndarray,
    *,
    delta: float = 0.0,
    confidence: float = 0.95,
    groups: np.ndarray | None = None,
) -> float:
    """A lower bound on the ε of any (ε, δ)-DP training that gave these attack scores, valid at ``confidence``.

    ``is_in``: bool, ``scores``: float, of one shape (one entry per (model, canary) pair; any shape, flattened).
    :func:`raypriv.epsilon.pair_epsilon_bound`: every pair, a fixed grid of thresholds, Bonferroni over it; no
    split, no seed.  ``groups``: optional canary id per pair; when given, the balanced design the pooling argument
    needs (each canary as often IN as OUT) is checked, and an unbalanced one is a ValueError.  0 when nothing can
    be concluded.  metrics.json's ``eps_lower_bound`` is this value at 95%.
    """
    is_in = np.asarray(is_in, dtype=bool)
    scores = np.asarray(scores)
    if is_in.size != scores.size:
        raise ValueError(f"is_in has {is_in.size} entries but scores {scores.size}; they must match")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be between 0 and 1")
    if groups is not None:
        if np.size(groups) != scores.size:
            raise ValueError(f"groups has {np.size(groups)} entries but scores {scores.size}; they must match")
        check_balanced(is_in, groups)
    return pair_epsilon_bound(is_in, scores, delta, confidence)


def audit_epsilon_lower_bound(is_in: np.ndarray, scores: np.ndarray, delta: float = 0.0) -> float:
    """metrics.json's ``eps_lower_bound`` of ``(n_models, n_audit)`` arrays: :func:`epsilon_lower_bound_from_scores`
    at 95%.  The Ray backend computes the same value from its partitions (:mod:`raypriv.scoring.partitions`)."""
    return epsilon_lower_bound_from_scores(is_in, scores, delta=delta)
