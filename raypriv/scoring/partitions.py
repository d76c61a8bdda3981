"""Exact ROC metrics and epsilon bound of an attack from range partitions of its scores: many workers, a small driver.

:func:`raypriv.metrics.roc_metrics` and
:func:`raypriv.metrics.audit_epsilon_lower_bound` sort all ``M x N``
(model, sample) pairs in one process.  Spread over workers
(``scoring.backend: ray``; the tasks are in :mod:`raypriv.scoring.ray_metrics`), the same
numbers come from four steps, and the
driver only ever holds counts, boundaries and curve points:

1. **Keys.**  Each pair becomes one uint64 (:func:`pack_keys`): its float32
   score's order-preserving bits, then three label bits, IN, "in the bound's
   selection half" and "the bound's held-out pair of its sample"
   (:func:`bound_halves`: the same random halves as the local bound).
2. **Range partitions by score.**  Boundaries are quantiles of a small sample
   of the scores (:func:`choose_boundaries`); :func:`split_keys` cuts each
   block's sorted keys at them and counts each piece's labels.  Equal scores
   always fall in the same partition, so every run of tied scores, hence
   every ROC operating point, lies inside one partition.
3. **Offsets.**  Summed over blocks, the counts give each partition the
   number of IN, OUT, selected and held-out pairs scoring above it
   (:func:`counts_above`): its operating points' global ``(tp, fp)``.
4. **Walk and merge.**  Each partition walks its own operating points with
   those offsets (:func:`walk_partition`: a :class:`raypriv.metrics.RocWalk`
   plus the bound's candidate thresholds), and :func:`merge_partitions` adds
   the walks in score order.  AUC is an integer sum and the rest are maxima
   and the points around each FPR, so the result equals the one-process
   value exactly (the tests compare with ``==``); only ``roc.png``'s thinned
   curve may keep different exact points above 200,000 pairs.

For the bound, each partition keeps only the operating points of the
selection half that :func:`raypriv.metrics.grid_points` can pick (at most one
per count of its grid), with the held-out counts above each; picking again
among those, in order, gives the one-process choice
(:func:`raypriv.metrics.best_threshold`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raypriv.metrics import (
    RocWalk,
    best_threshold,
    grid_points,
    held_out_bound,
    run_ends,
    split_halves,
    value_keys,
)

IN, SELECTED, HELD = 1, 2, 4  # a key's label bits
LABEL_BITS = 3
# Columns of a piece's counts: every pair IN / OUT, the selection half's IN / OUT, the held-out pairs' IN / OUT.
COUNTS = ("in", "out", "selected_in", "selected_out", "held_in", "held_out")
BOUND_CONFIDENCE = 0.95  # audit_epsilon_lower_bound's
SAMPLE_PER_BLOCK = 1024  # scores per block and attack sent to choose the boundaries


def key_values(keys: np.ndarray) -> np.ndarray:
    """The float32 scores of :func:`value_keys`' keys (its inverse)."""
    keys = np.asarray(keys, dtype=np.uint32)
    return np.where(keys & np.uint32(0x80000000), keys & np.uint32(0x7FFFFFFF), ~keys).view(np.float32)


def bound_halves(n_models: int, n_audit: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`raypriv.metrics.audit_epsilon_lower_bound`'s random halves, per audit sample.

    Returns ``selected`` (bool ``(N,)``: the sample is in the threshold-choice
    half) and ``held_model`` (int32 ``(N,)``: the model of the sample's one
    held-out pair, -1 for a selected sample).  The same draws as the local
    bound (:func:`raypriv.metrics.split_halves` on the pairs in row order).
    """
    units = np.tile(np.arange(n_audit, dtype=np.int64), n_models)
    select, held = split_halves(units, n_audit, np.random.default_rng(seed), one_per_unit=True)
    held_model = np.full(n_audit, -1, dtype=np.int32)
    held_model[held % n_audit] = held // n_audit
    return select[:n_audit].copy(), held_model


def pack_keys(score: np.ndarray, is_in: np.ndarray, selected: np.ndarray, held_model: np.ndarray,
              models: np.ndarray) -> np.ndarray:
    """Sorted uint64 keys of the targets ``models``: their ``(M_block, N)`` float32 ``score`` and bool ``is_in``."""
    score = np.asarray(score, dtype=np.float32)
    if not np.isfinite(score).all():
        raise ValueError("attack scores must be finite")
    models = np.asarray(models)[:, None]
    keys = value_keys(score).astype(np.uint64) << np.uint64(LABEL_BITS)
    keys |= np.asarray(is_in, dtype=np.uint64)
    keys |= np.uint64(SELECTED) * np.asarray(selected, dtype=np.uint64)[None, :]
    keys |= np.uint64(HELD) * (held_model[None, :] == models).astype(np.uint64)
    keys = keys.ravel()
    keys.sort()
    return keys


def sample_values(score: np.ndarray, size: int = SAMPLE_PER_BLOCK) -> np.ndarray:
    """Up to ``size`` evenly spaced value keys of a block's scores (for :func:`choose_boundaries`)."""
    flat = np.asarray(score, dtype=np.float32).ravel()
    step = max(1, len(flat) // size)
    return value_keys(flat[::step])


def choose_boundaries(samples: list[np.ndarray], n_partitions: int) -> np.ndarray:
    """Value keys cutting the scores into about ``n_partitions`` ranges of equal size (ascending, distinct)."""
    values = np.sort(np.concatenate(samples)) if samples else np.empty(0, np.uint32)
    if len(values) == 0 or n_partitions <= 1:
        return np.empty(0, dtype=np.uint32)
    cuts = values[(np.arange(1, n_partitions) * len(values)) // n_partitions]
    return np.unique(cuts[cuts > values[0]])  # partition 0 is never empty by construction


def split_keys(keys: np.ndarray, boundaries: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """A block's sorted keys cut into ``len(boundaries) + 1`` score ranges (ascending), and each piece's counts.

    A pair of value ``v`` goes to the partition ``searchsorted(boundaries, v, "right")``: ties stay together."""
    values = keys >> np.uint64(LABEL_BITS)
    cuts = np.searchsorted(values, np.asarray(boundaries, dtype=np.uint64), side="left")
    pieces = np.split(keys, cuts)
    return pieces, np.array([piece_counts(piece) for piece in pieces], dtype=np.int64).reshape(len(pieces), len(COUNTS))


def piece_counts(keys: np.ndarray) -> list[int]:
    """:data:`COUNTS` of some keys."""
    is_in = (keys & np.uint64(IN)).astype(bool)
    selected = (keys & np.uint64(SELECTED)).astype(bool)
    held = (keys & np.uint64(HELD)).astype(bool)
    n_in = int(is_in.sum())
    sel_in, held_in = int((selected & is_in).sum()), int((held & is_in).sum())
    return [n_in, len(keys) - n_in, sel_in, int(selected.sum()) - sel_in, held_in, int(held.sum()) - held_in]


def counts_above(counts: np.ndarray) -> np.ndarray:
    """``(P, 6)`` per-partition counts (ascending scores) -> the counts of all partitions above each."""
    above = np.zeros_like(counts)
    above[:-1] = np.cumsum(counts[::-1], axis=0)[::-1][1:]
    return above


@dataclass
class PartitionWalk:
    """One partition's share of the metrics: its ROC walk and the bound's candidate operating points."""

    roc: RocWalk
    tp: np.ndarray  # selection half: cumulative IN count at each candidate point (global)
    fp: np.ndarray  # ... and OUT count
    values: np.ndarray  # float32 score of each candidate point
    held_in: np.ndarray  # held-out IN pairs scoring at or above it (global)
    held_out: np.ndarray  # ... and held-out OUT pairs


def walk_partition(pieces: list[np.ndarray], above: np.ndarray, totals: np.ndarray, keep_all: bool) -> PartitionWalk:
    """Walk one partition's operating points from its highest score down, offset by the pairs ``above`` it."""
    keys = np.sort(np.concatenate(pieces), kind="stable")  # a merge of sorted runs
    values_up = keys >> np.uint64(LABEL_BITS)
    is_in = (keys & np.uint64(IN)).astype(bool)[::-1]
    values = values_up[::-1]
    above_in, above_out, sel_in, sel_out, held_in, held_out = (int(v) for v in above)
    n_in, n_out, total_sel_in, total_sel_out = (int(v) for v in totals[:4])
    roc = RocWalk(n_in, n_out, keep_all)
    if len(keys):
        end = run_ends(values)  # the partition's last pair ends a run: the next partition scores strictly lower
        cumulative = above_in + np.cumsum(is_in)
        tp = cumulative[end]
        roc.add(tp, above_in + above_out + 1 + np.flatnonzero(end) - tp, above_in, above_out)
    # The bound's selection half: its operating points, then those grid_points can pick.
    selected = (keys & np.uint64(SELECTED)).astype(bool)[::-1]
    chosen_values, chosen_in = values[selected], is_in[selected]
    end = run_ends(chosen_values)
    tp = (sel_in + np.cumsum(chosen_in))[end]
    fp = (sel_out + np.cumsum(~chosen_in))[end]
    point = grid_points(fp, total_sel_out) if total_sel_out else np.empty(0, dtype=np.int64)
    tp, fp, at = tp[point], fp[point], chosen_values[end][point]
    # Held-out pairs at or above each candidate's score: those above the partition plus the partition's own.
    held = (keys & np.uint64(HELD)).astype(bool)
    in_up = np.concatenate([[0], np.cumsum(held & is_in[::-1])])
    out_up = np.concatenate([[0], np.cumsum(held & ~is_in[::-1])])
    below = np.searchsorted(values_up, at, side="left")  # pairs of the partition scoring under the candidate
    return PartitionWalk(roc, tp, fp, key_values(at.astype(np.uint32)),
                         held_in + in_up[-1] - in_up[below], held_out + out_up[-1] - out_up[below])


def merge_partitions(walks: list[PartitionWalk], totals: np.ndarray, delta: float) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """The attack's metrics.json entry and ROC curve from its partitions' walks, highest scores first.

    Equal to :func:`raypriv.scoring.local.attack_metrics` on the whole array."""
    n_in, n_out, sel_in, sel_out, held_in, held_out = (int(v) for v in totals)
    if n_in == 0 or n_out == 0:
        raise ValueError(f"ROC metrics need IN and OUT pairs; got {n_in} IN and {n_out} OUT")
    roc = walks[0].roc
    for later in walks[1:]:
        roc.merge(later.roc)
    metrics, curve = roc.result()
    alpha = (1.0 - BOUND_CONFIDENCE) / 2.0
    threshold, form, tp_held, fp_held = np.inf, 0, 0, 0
    if sel_in and sel_out:
        tp, fp, values, at_in, at_out = (np.concatenate([getattr(w, name) for w in walks])
                                         for name in ("tp", "fp", "values", "held_in", "held_out"))
        threshold, form, index = best_threshold(tp, fp, values.astype(np.float64), sel_in, sel_out, delta, alpha,
                                                max(held_in, 1), max(held_out, 1))
        if index >= 0:
            tp_held, fp_held = int(at_in[index]), int(at_out[index])
    metrics["eps_lower_bound"] = held_out_bound(tp_held, held_in, fp_held, held_out, threshold, form, delta, alpha)
    return metrics, curve
