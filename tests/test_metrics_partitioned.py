"""The range-partitioned metrics (Ray backend) equal the one-process metrics exactly, however the scores are cut."""

import numpy as np
import pytest

from raypriv.epsilon import combine_models, model_one_run, one_run_bounds, per_model_confidence
from raypriv.scoring.local import attack_metrics
from raypriv.scoring.partitions import (
    choose_boundaries,
    counts_above,
    merge_partitions,
    pack_keys,
    sample_values,
    split_keys,
    walk_partition,
)


def partitioned_metrics(keep, scores, delta, n_blocks, n_partitions, sample=7):
    """The Ray backend's three passes, run in this process: sample, split per block of targets, walk per range."""
    n_models = keep.shape[0]
    cuts = np.linspace(0, n_models, n_blocks + 1).astype(int)
    blocks = list(zip(cuts[:-1], cuts[1:], strict=True))  # neighbouring cuts: n_blocks pairs
    boundaries = choose_boundaries([sample_values(scores[a:b], sample) for a, b in blocks], n_partitions)
    splits = [split_keys(pack_keys(scores[a:b], keep[a:b]), boundaries) for a, b in blocks]
    counts = sum(c for _, c in splits)
    above, totals = counts_above(counts), counts.sum(axis=0)
    walks = [walk_partition([pieces[i] for pieces, _ in splits], above[i], totals, keep.size <= 200_000)
             for i in reversed(range(len(counts)))]
    for w in walks:  # as Ray hands them back: deserialised arrays are read-only
        for array in vars(w.grid).values():
            if isinstance(array, np.ndarray):
                array.setflags(write=False)
    return merge_partitions(walks, totals, delta), len(counts)


@pytest.mark.parametrize("n_models, n_audit, n_blocks, n_partitions, delta, decimals, signal", [
    (8, 40, 2, 4, 0.0, None, 1.0),  # the tiny audit
    (16, 300, 3, 5, 0.0, 1, 1.0),  # heavy ties: few distinct scores, runs across blocks
    (64, 1000, 5, 9, 1e-5, 2, 1.0),  # a DP paradigm's delta
    (64, 1000, 5, 9, 0.0, None, 3.0),  # a strong attack: a positive epsilon bound
    (100, 5000, 7, 13, 0.0, 3, 1.0),  # heavy ties across many partitions; a thinned curve
    (64, 1000, 9, 40, 0.0, None, 6.0),  # near separation: the grid's low counts, one per partition
    (2, 3, 1, 1, 0.0, None, 0.0),  # one partition, no bound possible
    (16, 50, 4, 64, 0.0, 0, 1.0),  # more partitions asked than distinct scores
])
def test_partitions_give_the_local_metrics_exactly(n_models, n_audit, n_blocks, n_partitions, delta, decimals, signal):
    rng = np.random.default_rng(n_models * n_audit)
    keep = rng.random((n_models, n_audit)) < 0.5
    scores = (rng.normal(size=keep.shape) + signal * keep).astype(np.float32)
    if decimals is not None:
        scores = np.round(scores, decimals).astype(np.float32)
    scores[0, :3] = [-0.0, 0.0, 0.0]  # -0.0 and 0.0 are one score
    (got, curve), used = partitioned_metrics(keep, scores, delta, n_blocks, n_partitions)
    expected, expected_curve = attack_metrics(keep, scores, delta)
    assert got == expected.to_json()
    if keep.size <= 200_000:  # every operating point: the same curve
        assert all(np.array_equal(a, b) for a, b in zip(curve, expected_curve, strict=True))
    if signal >= 3.0:
        assert expected["eps_lower_bound"] > 0.5 * signal  # the bound's path is exercised, not only its zero
    if n_partitions > 1:
        assert used > 1


def test_partitions_refuse_what_the_local_metrics_refuse():
    keep = np.ones((4, 10), dtype=bool)
    with pytest.raises(ValueError, match="IN and OUT"):
        partitioned_metrics(keep, np.zeros((4, 10), np.float32), 0.0, 2, 2)
    bad = np.zeros((4, 10), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        partitioned_metrics(keep, bad, 0.0, 2, 2)


def test_the_one_run_bounds_of_blocks_of_models_equal_the_whole():
    """The Ray backend computes the loss attack's one-run bounds per block of targets and combines them."""
    rng = np.random.default_rng(3)
    keep = np.argsort(rng.random((24, 200)), axis=0) < 12
    scores = rng.laplace(np.where(keep, 3.0, 0.0), 1.0).astype(np.float32)
    whole = one_run_bounds(keep, scores, 1e-5)
    blocks = [model_one_run(keep[a:b], scores[a:b], 1e-5, per_model_confidence()) for a, b in ((10, 24), (0, 4), (4, 10))]
    combined = combine_models(*(np.concatenate([block[i] for block in blocks]) for i in (0, 1)), 1e-5)
    assert combined.to_json() == whole.to_json()
    assert whole.eps_one_run > 0.5 and whole.eps_gdp_bound > 0.5
