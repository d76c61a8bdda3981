"""Scoring a run in bounded memory: stream the logits, attack, write scores, summarise the ROC.

At 1,024 models x 50,000 audit samples x 2 queries the logits are 10^9
numbers per 10 classes; the whole float64 array would be 8 GB per class.
The audit never holds them:

1. :func:`load_attack_inputs` reads each model's Parquet file in row
   batches and reduces every row at once to the LiRA score ``s`` and the
   label's log-probability (:func:`raypriv.attacks.reduce_logits`), kept as
   float32 ``(M, N, Q)`` and ``(M, N)``: 0.6 GB at that size.
2. :func:`raypriv.attacks.score_attacks` computes the attacks in blocks of
   audit samples; each attack is a float32 ``(M, N)`` array (0.2 GB).
3. :func:`write_scores` appends ``scores.parquet`` in row groups of whole
   target models.
4. :func:`roc_metrics` gives exactly what :func:`raypriv.metrics.attack_metrics`
   gives, from one sort of packed (score, label) keys and a walk over the
   ROC in chunks, instead of sklearn's full-size float64 curve arrays and a
   Clopper-Pearson quantile at every one of its points.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from scipy.stats import beta

from raypriv.attacks import _map, reduce_logits, to_float32
from raypriv.metrics import LOW_FPRS, epsilon_lower_bound, tpr_at_fpr
from raypriv.store import RunStore, iter_logits, scores_table

# epsilon_lower_bound's default confidence (its one-sided Clopper-Pearson level); tests check the two agree.
_ALPHA = 0.05


def scoring_workers() -> int:
    """Threads for scoring: the machine's cores, at most 4 (NumPy and Arrow release the GIL)."""
    return max(1, min(4, os.cpu_count() or 1))


def load_attack_inputs(
    store: RunStore,
    paradigm: str,
    n_models: int,
    n_audit: int,
    n_queries: int,
    labels: np.ndarray,
    need_scores: bool = True,
    need_loss: bool = True,
    workers: int = 1,
    timings: dict[str, float] | None = None,
    batch_elements: int = 1 << 22,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Pass 1: every model's logits, streamed and reduced as read.

    Returns float32 LiRA scores ``(n_models, n_audit, n_queries)`` (or None
    without ``need_scores``) and the label log-probability on query 0,
    ``(n_models, n_audit)`` (or None).  ``labels`` are the audit labels the
    models trained on.  Models are read on ``workers`` threads; with
    ``timings`` the seconds spent decoding Parquet (``read_seconds``) and
    reducing (``reduce_seconds``) are added up over threads.  Each read
    holds about ``batch_elements`` logits.
    """
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.empty((n_models, n_audit, n_queries), dtype=np.float32) if need_scores else None
    log_p = np.empty((n_models, n_audit), dtype=np.float32) if need_loss else None
    spent = np.zeros((n_models, 2))

    def load(model_id: int) -> None:
        batches = iter_logits(store, paradigm, model_id, n_audit, n_queries, batch_elements)
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            middle = time.perf_counter()
            spent[model_id, 0] += middle - start
            if batch is None:
                return
            sample, query, logits = batch
            score, label_log_p = reduce_logits(logits, labels[sample])
            if scores is not None:
                scores[model_id, sample, query] = to_float32(score)
            if log_p is not None:
                first = query == 0
                log_p[model_id, sample[first]] = to_float32(label_log_p[first])
            spent[model_id, 1] += time.perf_counter() - middle

    _map(load, range(n_models), workers)
    if timings is not None:
        timings["read_seconds"] = timings.get("read_seconds", 0.0) + float(spent[:, 0].sum())
        timings["reduce_seconds"] = timings.get("reduce_seconds", 0.0) + float(spent[:, 1].sum())
    return scores, log_p


def write_scores(writer: pq.ParquetWriter, paradigm: str, keep: np.ndarray, scores: dict[str, np.ndarray], rows_per_group: int = 1 << 20) -> None:
    """Append one paradigm's rows to ``scores.parquet``, whole target models per row group."""
    n_models, n_audit = keep.shape
    models_per_group = max(1, rows_per_group // max(n_audit, 1))
    for start in range(0, n_models, models_per_group):
        stop = min(n_models, start + models_per_group)
        writer.write_table(scores_table(paradigm, start, keep[start:stop], {a: s[start:stop] for a, s in scores.items()}))


# ------------------------------------------------------------------- ROC metrics


def _sorted_keys(is_in: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ascending score order as ``(value keys, labels)``: equal keys are equal scores.

    float32 scores are packed with their label into one uint64 (the float's
    bits made order-preserving, shifted, plus the label bit), so one sort of
    8-byte keys does it; other dtypes fall back to an argsort.
    """
    if score.dtype == np.float32:
        bits = (score + np.float32(0.0)).view(np.uint32)  # + 0.0 turns -0.0 into 0.0: one key per value
        keys = np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000)).astype(np.uint64)
        del bits
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


def roc_metrics(
    is_in: np.ndarray, score: np.ndarray, delta: float = 0.0, chunk: int = 1 << 22, max_curve_points: int = 200_000
) -> tuple[dict[str, float], tuple[np.ndarray, np.ndarray]]:
    """:func:`raypriv.metrics.attack_metrics` in bounded memory, and the ROC curve to plot.

    Walks the ROC operating points (one per distinct score, from the highest
    threshold down) ``chunk`` pairs at a time, keeping running sums: AUC as
    the exact trapezoid sum in integer counts, balanced accuracy as a running
    maximum, TPR at each low FPR from the two operating points around it, and
    the epsilon lower bound by branch and bound: only points no other point
    beats in both FP and TP can attain it, and an upper bound from
    Clopper-Pearson bounds precomputed on a grid of counts skips the exact
    quantiles of every point that cannot beat the best one so far.  Values
    equal attack_metrics' (AUC to rounding).  The returned ``(fpr, tpr)``
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

    # Clopper-Pearson bounds (as epsilon_lower_bound computes them) on grids of counts (_count_grid).  Both
    # grow with the count, so a point's bounds lie between those of the grid counts around it, which bounds
    # its epsilon candidates to within about 0.001 without computing its own.
    fp_grid, tp_grid = _count_grid(n_out), _count_grid(n_in)
    fpr_high_grid = np.where(fp_grid >= n_out, 1.0, beta.ppf(1 - _ALPHA, fp_grid + 1, n_out - fp_grid))
    tpr_low_grid = np.where(tp_grid <= 0, 0.0, beta.ppf(_ALPHA, tp_grid, n_in - tp_grid + 1))
    targets = dict(LOW_FPRS)
    below = {key: (0.0, 0.0) for key in targets}  # last operating point with FPR <= target
    above: dict[str, tuple[float, float] | None] = {key: None for key in targets}
    keep_all = n <= max_curve_points
    grid = np.unique(np.concatenate([np.geomspace(1.0 / n_out, 1.0, 2000), np.linspace(0.0, 1.0, 1001)]))
    curve_fpr, curve_tpr = [np.zeros(1)], [np.zeros(1)]
    balanced = 0.5  # at the (0, 0) point
    twice_area = 0  # sum of (fp_i - fp_{i-1}) * (tp_i + tp_{i-1}): exact in int64
    best_eps = 0.0
    candidates: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    last_fp, last_tp = np.zeros(1, np.int64), np.zeros(1, np.int64)  # the previous operating point
    before_last_tp = np.full(1, -1, np.int64)  # and the TP of the one before it (none before (0, 0))
    tp_before, seen = 0, 0

    def upper_bounds(fp: np.ndarray, tp: np.ndarray) -> np.ndarray:
        # fpr_high(fp) >= fpr_high(grid count <= fp) and tpr_low(tp) <= tpr_low(grid count >= tp).
        fpr_floor = fpr_high_grid[np.searchsorted(fp_grid, fp, side="right") - 1]
        tpr_ceiling = tpr_low_grid[np.searchsorted(tp_grid, tp, side="left")]
        with np.errstate(divide="ignore", invalid="ignore"):
            upper_left = np.log((tpr_ceiling - delta) / fpr_floor)
            lower_right = np.log((1.0 - fpr_floor - delta) / (1.0 - tpr_ceiling))
        bound = np.fmax(upper_left, lower_right)
        return np.where(np.isnan(bound), -np.inf, bound) + 1e-9

    def exact(fp: np.ndarray, tp: np.ndarray) -> float:
        return epsilon_lower_bound(fp / n_out, tp / n_in, n_in, n_out, delta)

    for stop in range(n, 0, -chunk):
        start = max(0, stop - chunk)
        part = keys[start:stop][::-1]  # descending scores
        if packed:
            values, label = part >> np.uint64(1), (part & np.uint64(1)).astype(np.int64)
            following = keys[start - 1] >> np.uint64(1) if start > 0 else None
        else:
            values, label = part, labels[start:stop][::-1].astype(np.int64)
            following = keys[start - 1] if start > 0 else None
        run_end = np.empty(len(values), dtype=bool)  # last pair of each run of equal scores
        run_end[:-1] = values[:-1] != values[1:]
        run_end[-1] = following is None or values[-1] != following
        cumulative = tp_before + np.cumsum(label)
        tp = cumulative[run_end]
        fp = seen + 1 + np.flatnonzero(run_end) - tp
        tp_before, seen = int(cumulative[-1]), seen + len(values)
        if len(tp) == 0:
            continue
        fpr, tpr = fp / n_out, tp / n_in

        previous_fp = np.concatenate([last_fp, fp[:-1]])
        previous_tp = np.concatenate([last_tp, tp[:-1]])
        twice_area += int(np.sum((fp - previous_fp) * (tp + previous_tp)))
        balanced = max(balanced, float(np.max(1.0 - (fpr + (1.0 - tpr)) / 2.0)))
        for key, target in targets.items():
            at_or_below = np.flatnonzero(fpr <= target)
            if len(at_or_below):
                below[key] = (fpr[at_or_below[-1]], tpr[at_or_below[-1]])
            if above[key] is None and (len(at_or_below) < len(fpr)):
                first = at_or_below[-1] + 1 if len(at_or_below) else 0
                above[key] = (fpr[first], tpr[first])

        # Only corners can attain the bound (it grows with TP and falls with FP): points whose successor adds
        # FP (else the successor has more TP) and whose predecessor has less TP (else it has less FP).  The
        # chunk's last point waits for its successor in the next chunk.
        points_fp = np.concatenate([last_fp, fp])
        points_tp = np.concatenate([last_tp, tp])
        predecessor_tp = np.concatenate([before_last_tp, points_tp[:-1]])
        adds_fp = np.append(points_fp[:-1] != points_fp[1:], start == 0)  # (n_out, n_in) ends the curve
        frontier = np.flatnonzero(adds_fp & (points_tp != predecessor_tp))
        bound = upper_bounds(points_fp[frontier], points_tp[frontier])
        alive = bound > best_eps
        frontier, bound = frontier[alive], bound[alive]
        if len(frontier) > 4096:  # settle the most promising now, so the rest prunes harder
            top = np.argpartition(-bound, 256)[:256]
            best_eps = max(best_eps, exact(points_fp[frontier[top]], points_tp[frontier[top]]))
            alive = bound > best_eps
            frontier, bound = frontier[alive], bound[alive]
        candidates.append((points_fp[frontier], points_tp[frontier], bound))
        before_last_tp = points_tp[-2:-1]
        last_fp, last_tp = fp[-1:], tp[-1:]

        if keep_all:
            curve_fpr.append(fpr)
            curve_tpr.append(tpr)
        else:
            index = np.searchsorted(fpr, grid, side="right") - 1
            index = np.unique(np.concatenate([index, index + 1, [len(fpr) - 1]]))
            index = index[(index >= 0) & (index < len(fpr))]
            curve_fpr.append(fpr[index])
            curve_tpr.append(tpr[index])
    del keys, labels

    if candidates:
        fp_all = np.concatenate([c[0] for c in candidates])
        tp_all = np.concatenate([c[1] for c in candidates])
        bound_all = np.concatenate([c[2] for c in candidates])
        order = np.argsort(-bound_all, kind="stable")
        for begin in range(0, len(order), 1024):
            batch = order[begin : begin + 1024]
            if bound_all[batch[0]] <= best_eps:
                break
            best_eps = max(best_eps, exact(fp_all[batch], tp_all[batch]))

    metrics: dict[str, float] = {
        "auc": twice_area / (2.0 * n_in * n_out),
        "balanced_acc": balanced,
    }
    for key, target in targets.items():
        points = [below[key]] + ([above[key]] if above[key] is not None else [])
        metrics[key] = tpr_at_fpr(np.array([p[0] for p in points]), np.array([p[1] for p in points]), target)
    metrics["n_in"] = n_in
    metrics["n_out"] = n_out
    metrics["eps_lower_bound"] = best_eps
    return metrics, (np.concatenate(curve_fpr), np.concatenate(curve_tpr))


def scores_summary(path: str) -> dict[str, Any]:
    """Rows, row groups and columns of a ``scores.parquet`` (for logs and benchmarks)."""
    metadata = pq.read_metadata(path)
    return {"rows": metadata.num_rows, "row_groups": metadata.num_row_groups, "columns": metadata.schema.names}
