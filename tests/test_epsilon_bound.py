"""The ε lower bounds against ground truth: mechanisms of known ε, an independent jax_privacy bound, exact integrals.

The full-scale coverage (200 repetitions, 64 models × 500 canaries) is benchmarks/epsilon_coverage.py's, in
benchmarks/RESULTS.md; here the same simulations run smaller, fast enough for the suite.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate, optimize
from scipy.stats import beta, binom

from raypriv.epsilon import (
    bound_over_attacks,
    count_grid,
    gdp_epsilon,
    max_tail_slope,
    mixture_epsilon,
    one_run_bounds,
    pair_epsilon_bound,
    steinke_epsilon,
)
from raypriv.metrics import audit_epsilon_lower_bound, epsilon_lower_bound_from_scores, roc_metrics, tpr_interval
from raypriv.report.verdicts import LevelEvidence, VerdictInput, verdict
from raypriv.results import AttackMetrics

_spec = importlib.util.spec_from_file_location(
    "epsilon_coverage", Path(__file__).resolve().parents[1] / "benchmarks" / "epsilon_coverage.py"
)
coverage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(coverage)


@pytest.mark.parametrize("setting", sorted(coverage.SETTINGS))
def test_coverage_and_tightness_against_jax_privacy_on_small_audits(setting):
    """20 audits of 32 models × 250 canaries per setting: at most 2 exceed the true ε (5% of 20 is 1; a valid
    bound exceeds twice or more with probability under 0.27, these seeds are fixed), and the mean is at least
    that of jax_privacy's all-pairs Bonferroni bound on the same scores."""
    result = coverage.run_setting(setting, 20, 32, 250, seed=1)
    assert result["exceed"] <= 0.10, result
    assert result["mean"] >= result["jax_mean"], result
    informative = {"laplace": 0.5, "rr": 0.5, "heterogeneous": 0.25, "sparse": 0.05}  # share of ε the mean reaches
    assert result["mean"] >= informative[setting] * result["epsilon"], result


def test_the_bound_is_not_capped_by_the_number_of_canaries():
    """ε = 50 (perfect separation) at 64 models × 500 canaries: the old one-pair-per-canary bound gave about 3.6."""
    rng = np.random.default_rng(0)
    keep = coverage.balanced_keep(64, 500, rng)
    bound = pair_epsilon_bound(keep, keep + rng.normal(0, 0.01, keep.shape))
    assert bound > 7.0
    assert bound < np.log(keep.size / 2)  # no more than all the OUT pairs can show


def test_the_broken_dp_check_fires():
    """A mechanism that claims ε = 1 and is ε = 4 (Laplace scores), 64 models × 500 canaries, through the
    metrics and the verdict the report prints."""
    keep, scores = coverage.simulate("laplace", 4.0, 64, 500, np.random.default_rng(4))
    scores = scores.astype(np.float32)
    bound = audit_epsilon_lower_bound(keep, scores)
    assert 1.0 < bound <= 4.0
    metrics, _ = roc_metrics(keep, scores)
    levels = tuple(LevelEvidence(fpr, metrics[key], *tpr_interval(metrics[key], metrics["n_in"]))
                   for key, fpr in (("tpr@0.1%fpr", 0.001), ("tpr@1%fpr", 0.01)))
    _, text = verdict(VerdictInput(n_models=64, n_audit=500, n_out=metrics["n_out"], attack="loss", levels=levels,
                                   accounted_epsilon=1.0, eps_lower_bound=bound))
    assert "EXCEEDS the accounted ε" in text
    _, honest = verdict(VerdictInput(n_models=64, n_audit=500, n_out=metrics["n_out"], attack="loss", levels=levels,
                                     accounted_epsilon=4.0, eps_lower_bound=bound))
    assert "EXCEEDS" not in honest


def test_the_mixture_test_matches_a_direct_integral():
    """At the ε it returns, the mixture p-value (computed here by adaptive quadrature) is at the level."""
    tp, n_in, fp, n_out, alpha = 700, 2000, 120, 2000, 0.001
    eps = mixture_epsilon(np.array([tp]), n_in, np.array([fp]), n_out, alpha)[0]

    def p_value(e):
        def integrand(u):
            return binom.sf(tp - 1, n_in, min(1.0, np.exp(e) * u)) * beta.pdf(u, fp + 1, n_out - fp)
        lo, hi = beta.ppf([1e-12, 1 - 1e-12], fp + 1, n_out - fp)
        return integrate.quad(integrand, lo, hi, limit=200, epsabs=1e-12)[0]

    assert p_value(eps) <= alpha * 1.001
    assert p_value(eps + 0.01) > alpha  # as tight as the quadrature allows
    # tighter than two separate Clopper-Pearson bounds at alpha / 2 each
    cp = np.log(beta.ppf(alpha / 2, tp, n_in - tp + 1) / beta.ppf(1 - alpha / 2, fp + 1, n_out - fp))
    assert eps > cp


def test_no_seed_no_order_one_value():
    rng = np.random.default_rng(1)
    keep = coverage.balanced_keep(16, 200, rng)
    scores = rng.laplace(np.where(keep, 2.0, 0.0), 1.0).astype(np.float32)
    order = rng.permutation(keep.size)
    base = epsilon_lower_bound_from_scores(keep, scores)
    assert epsilon_lower_bound_from_scores(keep.ravel()[order], scores.ravel()[order]) == base
    assert epsilon_lower_bound_from_scores(keep, scores.astype(np.float64)) == base
    assert 0.5 < base < 2.0


def test_no_signal_gives_zero_and_input_errors():
    rng = np.random.default_rng(0)
    is_in = rng.random(4000) < 0.5
    assert epsilon_lower_bound_from_scores(is_in, rng.normal(size=4000)) < 0.2
    assert epsilon_lower_bound_from_scores(is_in, np.zeros(4000)) == 0.0
    with pytest.raises(ValueError, match="finite"):
        epsilon_lower_bound_from_scores(is_in, np.full(4000, np.nan))
    with pytest.raises(ValueError, match="must match"):
        epsilon_lower_bound_from_scores(is_in, np.zeros(10))


def test_groups_check_the_balanced_design():
    keep = coverage.balanced_keep(8, 30, np.random.default_rng(2))
    groups = np.broadcast_to(np.arange(30), keep.shape)
    scores = keep + np.random.default_rng(3).normal(size=keep.shape)
    assert epsilon_lower_bound_from_scores(keep, scores, groups=groups) == epsilon_lower_bound_from_scores(keep, scores)
    keep[0, 7] = ~keep[0, 7]
    with pytest.raises(ValueError, match="group 7"):
        epsilon_lower_bound_from_scores(keep, scores, groups=groups)


def test_count_grid_is_fixed_by_the_count():
    assert list(count_grid(1)) == [0, 1]
    grid = count_grid(16000)
    assert grid[0] == 0 and grid[1] == 1 and grid[-1] == 16000 and 20 <= len(grid) <= 24
    assert np.all(np.diff(grid) > 0)
    assert np.array_equal(grid, count_grid(16000))


def test_steinke_bound_matches_a_root_of_the_binomial_tail():
    """δ = 0: the bound is the ε where P[Binomial(r, e^ε/(1+e^ε)) >= v] = α (Steinke et al., Theorem 3.1)."""
    r, v, alpha = 100, 80, 0.01
    eps = steinke_epsilon(500, np.array([r]), np.array([v]), 0.0, alpha)[0]
    root = optimize.brentq(lambda e: binom.sf(v - 1, r, 1 / (1 + np.exp(-e))) - alpha, 0.0, 10.0)
    assert eps == pytest.approx(root, abs=1e-6)
    assert steinke_epsilon(500, np.array([r]), np.array([v]), 1e-4, alpha)[0] < eps  # δ only weakens it


def test_the_delta_term_search_equals_the_full_maximum():
    """Steinke et al.'s δ term, max over every i, against the ternary search (unimodal window means)."""
    rng = np.random.default_rng(7)
    r, q = rng.integers(1, 2000, 60).astype(float), rng.uniform(0.3, 0.99, 60)
    v = np.floor(rng.uniform(0, 1, 60) * (r + 1))
    tail = binom.sf(v - 1, r, q)
    exact = [max(((binom.sf(vi - i - 1, ri, qi) - ti) / i for i in range(1, int(vi) + 1)), default=0.0)
             for vi, ri, qi, ti in zip(v, r, q, tail, strict=True)]
    assert np.array_equal(max_tail_slope(v, r, q, tail), exact)


def test_gdp_epsilon_inverts_the_gaussian_privacy_curve():
    from scipy.stats import norm
    eps = gdp_epsilon(1.0, 1e-5)
    delta = norm.cdf(-eps + 0.5) - np.exp(eps) * norm.cdf(-eps - 0.5)
    assert delta == pytest.approx(1e-5, rel=1e-6)
    assert gdp_epsilon(0.0, 1e-5) == 0.0


def test_one_run_bounds_cover_a_gaussian_mechanism_and_find_a_laplace_one():
    """μ = 1 GDP (score N(b, 1) per model): the f-DP bound's μ stays at or below 1; ε = 4 Laplace: both positive."""
    rng = np.random.default_rng(5)
    keep = coverage.balanced_keep(16, 500, rng)
    gaussian = one_run_bounds(keep, rng.normal(keep.astype(float), 1.0))
    assert 0.0 < gaussian.gdp_mu_bound <= 1.0
    assert gaussian.eps_gdp_bound <= gdp_epsilon(1.0, 1e-5)
    strong = one_run_bounds(*coverage.simulate("laplace", 4.0, 16, 500, rng))
    assert 1.0 < strong.eps_one_run <= 4.0 and strong.eps_gdp_bound > 1.0


def test_best_attack_bound_pays_for_the_number_of_attacks():
    rng = np.random.default_rng(6)
    keep = coverage.balanced_keep(16, 200, rng)
    scores = {name: rng.laplace(np.where(keep, shift, 0.0), 1.0) for name, shift in (("a", 1.0), ("b", 2.0), ("c", 0.0))}
    bound, attack = bound_over_attacks(keep, scores)
    assert attack == "b"
    assert bound == pair_epsilon_bound(keep, scores["b"], confidence=1 - 0.05 / 3)
    assert 0 < bound < pair_epsilon_bound(keep, scores["b"])


def test_metrics_json_without_the_one_run_keys_still_reads():
    old = {"auc": 0.9, "balanced_acc": 0.8, "tpr@0.1%fpr": 0.1, "tpr@1%fpr": 0.3, "n_in": 10, "n_out": 10,
           "eps_lower_bound": 1.2}
    read = AttackMetrics.from_json(old)
    assert read.eps_one_run is None and read.eps_gdp_bound is None and read.gdp_mu_bound is None
    assert "eps_one_run" not in read.to_json()
    new = AttackMetrics.from_json({**old, "eps_one_run": 0.5, "gdp_mu_bound": 0.3, "eps_gdp_bound": 0.9})
    assert new.eps_one_run == 0.5 and new.to_json()["eps_gdp_bound"] == 0.9
