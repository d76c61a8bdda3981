"""The epsilon lower bound is a lower bound: coverage on mechanisms of known epsilon (benchmarks/epsilon_coverage.py)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from raypriv.metrics import (
    audit_epsilon_lower_bound,
    clopper_pearson_lower,
    clopper_pearson_upper,
    epsilon_lower_bound_from_scores,
)

_spec = importlib.util.spec_from_file_location(
    "epsilon_coverage", Path(__file__).resolve().parents[1] / "benchmarks" / "epsilon_coverage.py"
)
coverage_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(coverage_module)

REPS = 200
# 5% plus three Monte-Carlo standard errors of a share over 200 repetitions
ALLOWED = 0.05 + 3 * np.sqrt(0.05 * 0.95 / REPS)


@pytest.mark.parametrize(
    "mechanism, epsilon, n_models, n_samples",
    [("laplace", 1.0, 64, 200), ("laplace", 2.0, 64, 200), ("rr", 1.0, 16, 100), ("rr", 4.0, 64, 200),
     ("laplace+sample", 2.0, 64, 200)],
)
def test_bound_covers_the_true_epsilon_and_stays_informative(mechanism, epsilon, n_models, n_samples):
    result = coverage_module.coverage(mechanism, epsilon, n_models, n_samples, REPS)
    assert result["exceed"] <= ALLOWED, result
    if mechanism != "laplace+sample":  # per-sample offsets hide a global threshold's signal; still valid
        assert result["mean"] >= 0.5 * epsilon, result


def test_the_old_best_threshold_bound_overstates():
    """The motivation: the uncorrected best-threshold bound exceeds the truth far more often than 5%."""
    result = coverage_module.coverage("laplace", 1.0, 64, 200, 60, old=True)
    assert result["old_exceed"] > 0.15 and result["exceed"] <= 0.05, result


def test_no_signal_gives_zero_and_input_errors():
    rng = np.random.default_rng(0)
    is_in = rng.random(4000) < 0.5
    assert epsilon_lower_bound_from_scores(is_in, rng.normal(size=4000)) < 0.2
    assert epsilon_lower_bound_from_scores(is_in, np.zeros(4000)) == 0.0
    with pytest.raises(ValueError, match="finite"):
        epsilon_lower_bound_from_scores(is_in, np.full(4000, np.nan))
    with pytest.raises(ValueError, match="must match"):
        epsilon_lower_bound_from_scores(is_in, np.zeros(10))


def test_per_sample_unit_uses_one_pair_per_sample():
    """With groups, perfectly separating scores on 100 samples bound epsilon by what 50 trials can show."""
    keep = np.zeros((64, 100), dtype=bool)
    keep[:32] = True
    scores = keep.astype(float)
    pairs = epsilon_lower_bound_from_scores(keep, scores)
    per_sample = audit_epsilon_lower_bound(keep, scores)
    assert 0 < per_sample < pairs
    # 50 held-out trials, about 25 IN and 25 OUT, all right: log(CP low(k of k) / CP high(0 of k)) for k near 25
    cp = lambda k: np.log(clopper_pearson_lower(k, k, 0.025) / clopper_pearson_upper(0, k, 0.025))
    assert cp(18) < per_sample < cp(32)
