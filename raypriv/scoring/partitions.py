"""Exact ROC metrics and epsilon bound of an attack from range partitions of its scores: many workers, a small driver.

:func:`raypriv.metrics.roc_metrics` and
:func:`raypriv.metrics.audit_epsilon_lower_bound` sort all ``M x N``
(model, sample) pairs in one process.  Spread over workers
(``scoring.backend: ray``; the tasks are in :mod:`raypriv.scoring.ray_metrics`), the same
numbers come from four steps, and the
driver only ever holds counts, boundaries and curve points:

1. **Keys.**  Each pair becomes one uint64 (:func:`pack_keys`): its float32
   score's order-preserving bits, then its label bit (IN).
2. **Range partitions by score.**  Boundaries are quantiles of a small sample
   of the scores (:func:`choose_boundaries`); :func:`split_keys` cuts each
   block's sorted keys at them and counts each piece's labels.  Equal scores
   always fall in the same partition, so every run of tied scores, hence
   every ROC operating point, lies inside one partition.
3. **Offsets.**  Summed over blocks, the counts give each partition the
   number of IN and OUT pairs scoring above it
   (:func:`counts_above`): its operating points' global ``(tp, fp)``.
4. **Walk and merge.**  Each partition walks its own operating points with
   those offsets (:func:`walk_partition`: a :class:`raypriv.metrics.RocWalk`
   and a :class:`raypriv.epsilon.GridWalk`), and :func:`merge_partitions` adds
   the walks in score order.  AUC is an integer sum and the rest are maxima
   and the points around each FPR, so the result equals the one-process
   value exactly (the tests compare with ``==``); only ``roc.png``'s thinned
   curve may keep different exact points above 200,000 pairs.

The ε bound's threshold grid is fixed by the totals alone (counts of OUT or
IN pairs above a threshold, :func:`raypriv.epsilon.count_grid`), so each
partition keeps, per grid count, the one operating point of its own that
could be the grid's, with global counts: a few dozen integers.  Merged in
score order they are the one-process grid, and the bound is computed from
those counts only, identically (:meth:`raypriv.epsilon.GridWalk.bound`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raypriv.epsilon import GridWalk
from raypriv.metrics import RocWalk
from raypriv.sorting import run_ends, value_keys

IN = 1  # a key's label bit
LABEL_BITS = 1
COUNTS = ("in", "out")  # columns of a piece's counts
BOUND_CONFIDENCE = 0.95  # audit_epsilon_lower_bound's
SAMPLE_PER_BLOCK = 1024  # scores per block and attack sent to choose the boundaries


def key_values(keys: np.ndarray) -> np.ndarray:
    """The float32 scores of :func:`value_keys`' keys (its inverse)."""
    keys = np.asarray(keys, dtype=np.uint32)
    return np.where(keys & np.uint32(0x80000000), keys & np.uint32(0x7FFFFFFF), ~keys).view(np.float32)


def pack_keys(score: np.ndarray, is_in: np.ndarray) -> np.ndarray:
    """Sorted uint64 keys of a block of targets: their ``(M_block, N)`` float32 ``score`` and bool ``is_in``."""
    score = np.asarray(score, dtype=np.float32)
    if not np.isfinite(score).all():
        raise ValueError("attack scores must be finite")
    keys = value_keys(score).astype(np.uint64) << np.uint64(LABEL_BITS)
    keys |= np.asarray(is_in, dtype=np.uint64)
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
    n_in = int((keys & np.uint64(IN)).astype(bool).sum())
    return [n_in, len(keys) - n_in]


def counts_above(counts: np.ndarray) -> np.ndarray:
    """``(P, 2)`` per-partition counts (ascending scores) -> the counts of all partitions above each."""
    above = np.zeros_like(counts)
    above[:-1] = np.cumsum(counts[::-1], axis=0)[::-1][1:]
    return above


@dataclass
class PartitionWalk:
    """One partition's share of the metrics: its ROC walk and the ε bound's grid points."""

    roc: RocWalk
    grid: GridWalk


def walk_partition(pieces: list[np.ndarray], above: np.ndarray, totals: np.ndarray, keep_all: bool) -> PartitionWalk:
    """Walk one partition's operating points from its highest score down, offset by the pairs ``above`` it."""
    keys = np.sort(np.concatenate(pieces), kind="stable")[::-1]  # a merge of sorted runs; descending
    values = keys >> np.uint64(LABEL_BITS)
    is_in = (keys & np.uint64(IN)).astype(bool)
    above_in, above_out = (int(v) for v in above[:2])
    n_in, n_out = (int(v) for v in totals[:2])
    roc, grid = RocWalk(n_in, n_out, keep_all), GridWalk(n_in, n_out)
    if len(keys):
        end = run_ends(values)  # the partition's last pair ends a run: the next partition scores strictly lower
        cumulative = above_in + np.cumsum(is_in)
        tp = cumulative[end]
        fp = above_in + above_out + 1 + np.flatnonzero(end) - tp
        roc.add(tp, fp, above_in, above_out)
        grid.add(tp, fp)
    return PartitionWalk(roc, grid)


def merge_partitions(walks: list[PartitionWalk], totals: np.ndarray, delta: float,
                     tpr_readout: str = "interpolate") -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """The attack's metrics.json entry and ROC curve from its partitions' walks, highest scores first.

    Equal to :func:`raypriv.scoring.outputs.attack_metrics` on the whole array."""
    n_in, n_out = (int(v) for v in totals[:2])
    if n_in == 0 or n_out == 0:
        raise ValueError(f"ROC metrics need IN and OUT pairs; got {n_in} IN and {n_out} OUT")
    roc = walks[0].roc
    for later in walks[1:]:
        roc.merge(later.roc)
    metrics, curve = roc.result(tpr_readout)
    grid = walks[0].grid
    for later in walks[1:]:
        grid.merge(later.grid)
    metrics["eps_lower_bound"] = grid.bound(delta, BOUND_CONFIDENCE)
    return metrics, curve
