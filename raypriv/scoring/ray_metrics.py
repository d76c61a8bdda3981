"""The Ray tasks of the partitioned metrics, and the driver's three passes over them.

:func:`metrics_on_ray` computes every attack's metrics.json entry and ROC
curve exactly as the local path does, from range partitions of the scores
(the maths, and why the numbers are equal, are in
:mod:`raypriv.scoring.partitions`).  The tasks are module-level functions,
because Ray pickles them; the driver holds block references, per-range
counts and curve points only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from raypriv.cluster import cluster_cpus
from raypriv.epsilon import ONE_RUN_ATTACK, combine_models, model_one_run, per_model_confidence
from raypriv.progress import Progress
from raypriv.scoring.partitions import (
    PartitionWalk,
    choose_boundaries,
    counts_above,
    merge_partitions,
    pack_keys,
    sample_values,
    split_keys,
    walk_partition,
)

PAIRS_PER_PARTITION = 1 << 22  # (model, sample) pairs per score range: 32 MB of keys
MAX_CURVE_POINTS = 200_000  # roc_metrics' default: every operating point up to this many pairs


def score_matrix(table: Any, column: str, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """``(model ids, (rows, N) values)`` of one binary column of per-model rows (an Arrow table)."""
    ids = table.column("model_id").to_numpy().astype(np.int64)
    values = np.stack([np.frombuffer(value.as_buffer(), dtype=dtype) for value in table.column(column)])
    return ids, values


def _sample_scores(table: Any, attacks: list[str], keep: np.ndarray, delta: float
                   ) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """Pass 1, per block of targets: a few scores per attack, to place the ranges' boundaries; and the block's
    per-model one-run ε bounds of the ``loss`` attack (:func:`raypriv.epsilon.model_one_run`), if it is scored."""
    samples = {attack: sample_values(score_matrix(table, attack)[1]) for attack in attacks}
    one_run = None
    if ONE_RUN_ATTACK in attacks:
        ids, scores = score_matrix(table, ONE_RUN_ATTACK)
        one_run = model_one_run(keep[ids], scores, delta, per_model_confidence())
    return samples, one_run


def _split_scores(table: Any, attack: str, keep: np.ndarray, boundaries: np.ndarray) -> tuple:
    """Pass 2, per block of targets and attack: its sorted keys cut into score ranges, and their counts."""
    ids, scores = score_matrix(table, attack)
    keys = pack_keys(scores, keep[ids])
    pieces, counts = split_keys(keys, boundaries)
    return (*pieces, counts)


def _walk(above: np.ndarray, totals: np.ndarray, keep_all: bool, *pieces: np.ndarray) -> PartitionWalk:
    """Pass 3, per attack and score range: the range's ROC walk and bound candidates."""
    return walk_partition(list(pieces), above, totals, keep_all)


def _n_partitions(n_pairs: int) -> int:
    """Score ranges per attack: about PAIRS_PER_PARTITION pairs each, and at least two per CPU of the cluster."""
    return max(-(-n_pairs // PAIRS_PER_PARTITION), 2 * cluster_cpus())


def _get(refs: list, progress: Progress) -> list:
    """``ray.get(refs)``, counting each task on ``progress`` as it finishes."""
    import ray

    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0, fetch_local=False)
        if done:
            progress.update(len(done))
    return ray.get(list(refs))


def metrics_on_ray(refs: list, attacks: list[str], keep_ref: Any, n_pairs: int, delta: float,
                   args: dict[str, Any], show_progress: bool = False, desc: str = "metrics", tpr_readout: str = "interpolate"
                   ) -> dict[str, tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]]:
    """Every attack's metrics.json entry and ROC curve, exactly as the local path's, in the three passes above.

    ``refs``: Ray object refs of Arrow blocks of per-target rows (``model_id`` and one float32 binary column per
    attack); ``keep_ref``: a ref of ``keep``; ``args``: each task's
    resources.  The driver holds block refs, per-range counts and curve points only.  ``show_progress``: tasks
    done / total with throughput and ETA under ``desc`` (:class:`raypriv.progress.Progress`).  ``tpr_readout``: as
    :func:`raypriv.metrics.roc_metrics` reads TPR at low FPR."""
    import ray

    n_partitions = _n_partitions(n_pairs)
    progress = Progress(len(refs) * (1 + len(attacks)) + len(attacks) * n_partitions, desc, "tasks", show_progress)
    sample = ray.remote(**args)(_sample_scores)
    passes = _get([sample.remote(ref, attacks, keep_ref, delta) for ref in refs], progress)
    boundaries = {a: choose_boundaries([s[a] for s, _ in passes], n_partitions) for a in attacks}
    one_run = None
    if ONE_RUN_ATTACK in attacks:  # per model, so the blocks' models in any order give the local medians
        one_run = combine_models(*(np.concatenate([block[i] for _, block in passes]) for i in (0, 1)), delta)
    del passes
    progress.set_total(len(refs) * (1 + len(attacks)) + sum(len(b) + 1 for b in boundaries.values()))  # ties can merge ranges
    split = ray.remote(**args)(_split_scores)
    splits = {a: [split.options(num_returns=len(boundaries[a]) + 2).remote(ref, a, keep_ref, boundaries[a])
                  for ref in refs] for a in attacks}
    walk = ray.remote(**args)(_walk)
    walks = {}
    keep_all = n_pairs <= MAX_CURVE_POINTS
    for attack in attacks:
        counts = sum(_get([parts[-1] for parts in splits[attack]], progress))
        above, totals = counts_above(counts), counts.sum(axis=0)
        walks[attack] = (totals, [walk.remote(above[i], totals, keep_all, *[parts[i] for parts in splits[attack]])
                                  for i in reversed(range(len(counts)))])  # highest scores first
    # One attack's walks on the driver at a time.
    results = {a: merge_partitions(_get(attack_walks, progress), totals, delta, tpr_readout)
               for a, (totals, attack_walks) in walks.items()}
    if one_run is not None:
        results[ONE_RUN_ATTACK][0].update(one_run.to_json())
    progress.close()
    return results
