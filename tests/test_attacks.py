import numpy as np
import pytest
from scipy.stats import norm

from raypriv.attacks import _leave_one_out_stats, lira_attack, lira_scores_from_logits, loss_attack, run_attacks
from raypriv.data import balanced_keep
from raypriv.metrics import attack_metrics, tpr_at_fpr

ALL = ["loss", "lira_online", "lira_offline", "lira_online_fixed", "lira_offline_fixed"]


def logits_with_scores(scores):
    """Two-class logits [s, 0] with label 0, whose LiRA score is exactly s."""
    return np.stack([scores, np.zeros_like(scores)], axis=-1).astype(np.float64)


def gaussian_audit(n_models, n_samples, separation, seed=0, n_queries=1):
    """Per-sample OUT means spread widely; IN = OUT + separation; unit noise."""
    rng = np.random.default_rng(seed)
    keep = balanced_keep(n_models, n_samples, seed)
    centre = rng.normal(0, 3, size=(1, n_samples, 1))
    scores = centre + separation * keep[:, :, None] + rng.normal(size=(n_models, n_samples, n_queries))
    return logits_with_scores(scores), np.zeros(n_samples, dtype=np.int64), keep


def test_score_is_log_odds_of_the_label():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5, 2, 4)) * 5
    labels = rng.integers(0, 4, 5)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    p_true = np.take_along_axis(p, labels[None, :, None, None], axis=-1)[..., 0]
    np.testing.assert_allclose(lira_scores_from_logits(logits, labels), np.log(p_true / (1 - p_true)), rtol=1e-9)
    assert np.isfinite(lira_scores_from_logits(np.array([[[[1000.0, -1000.0]]]]), np.array([1]))).all()


def test_leave_one_out_statistics_match_a_brute_force_loop():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(10, 7, 2))
    keep = balanced_keep(10, 7, 3)
    for member in (keep, ~keep):
        median, variance = _leave_one_out_stats(scores, member)
        for m in range(10):
            for n in range(7):
                group = [j for j in range(10) if member[j, n]]
                shadows = [j for j in group if j != m] if m in group else group[:-1]
                np.testing.assert_allclose(median[m, n], np.median(scores[shadows, n], axis=0))
                np.testing.assert_allclose(variance[m, n], np.var(scores[shadows, n], axis=0), atol=1e-12)


def test_lira_online_reaches_the_neyman_pearson_tpr():
    # Equal-variance Gaussians separated by d: the best test has TPR = Phi(Phi^-1(FPR) + d).
    # With 256 models the shadow estimates are close enough for LiRA to reach it.
    separation = 2.0
    logits, labels, keep = gaussian_audit(256, 2000, separation)
    result = run_attacks(logits, labels, keep, ["lira_online", "lira_online_fixed", "lira_offline", "loss"])
    expected = norm.cdf(norm.ppf(0.01) + separation)  # 0.372
    for attack in ("lira_online", "lira_online_fixed"):
        metrics = attack_metrics(keep, result[attack])
        assert metrics["tpr@1%fpr"] == pytest.approx(expected, abs=0.04), attack
        assert metrics["auc"] == pytest.approx(norm.cdf(separation / np.sqrt(2)), abs=0.01)
    # Offline is two-sided (|z| against the OUT Gaussian): TPR = Phi(d - t) + Phi(-d - t), t = Phi^-1(1 - FPR/2).
    threshold = norm.ppf(1 - 0.01 / 2)
    expected_offline = norm.cdf(separation - threshold) + norm.cdf(-separation - threshold)
    assert attack_metrics(keep, result["lira_offline"])["tpr@1%fpr"] == pytest.approx(expected_offline, abs=0.04)
    # The loss attack cannot undo the per-sample spread of means, so it is far weaker at low FPR.
    assert attack_metrics(keep, result["loss"])["tpr@1%fpr"] < 0.5 * expected


def test_queries_are_averaged():
    logits, labels, keep = gaussian_audit(32, 2000, 1.0, seed=4, n_queries=4)
    one = attack_metrics(keep, lira_attack(lira_scores_from_logits(logits[:, :, :1], labels), keep, True, False))
    four = attack_metrics(keep, lira_attack(lira_scores_from_logits(logits, labels), keep, True, False))
    assert four["auc"] > one["auc"] + 0.05  # four independent looks beat one


@pytest.mark.parametrize("n_models", [8, 32])
@pytest.mark.parametrize("attack", ALL)
def test_identical_in_and_out_give_chance(attack, n_models):
    logits, labels, keep = gaussian_audit(n_models, 96_000 // n_models, separation=0.0, seed=7)
    metrics = attack_metrics(keep, run_attacks(logits, labels, keep, [attack])[attack])
    assert metrics["auc"] == pytest.approx(0.5, abs=0.015)
    assert metrics["tpr@1%fpr"] == pytest.approx(0.01, abs=0.006)


def test_loss_attack_is_minus_cross_entropy():
    logits = np.array([[[[2.0, 0.0, -1.0]], [[0.0, 0.0, 0.0]]]])
    labels = np.array([0, 2])
    expected = -np.array([-np.log(np.exp(2) / (np.exp(2) + 1 + np.exp(-1))), np.log(3)])
    np.testing.assert_allclose(loss_attack(logits, labels)[0], expected)


def test_tpr_at_fpr_interpolates_between_operating_points():
    fpr = np.array([0.0, 0.0, 0.002, 0.02, 1.0])
    tpr = np.array([0.0, 0.1, 0.3, 0.5, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.001) == pytest.approx(0.2)  # halfway from (0, 0.1) to (0.002, 0.3)
    assert tpr_at_fpr(fpr, tpr, 0.002) == pytest.approx(0.3)
    assert tpr_at_fpr(fpr, tpr, 0.01) == pytest.approx(0.3 + 0.2 * 8 / 18)
    metrics = attack_metrics(np.array([1, 1, 0, 0], bool), np.array([3.0, 2.0, 1.0, 0.0]))
    assert metrics["auc"] == 1.0 and metrics["tpr@0.1%fpr"] == 1.0 and metrics["balanced_acc"] == 1.0


def test_epsilon_lower_bound_from_counts():
    from raypriv.metrics import epsilon_lower_bound

    # Chance-level curve: nothing to bound.
    grid = np.linspace(0, 1, 101)
    assert epsilon_lower_bound(grid, grid, 5000, 5000) == 0.0
    # TPR 50% at FPR 1% with plenty of samples: epsilon is close to log(50) minus sampling slack.
    fpr, tpr = np.array([0.0, 0.01, 1.0]), np.array([0.0, 0.5, 1.0])
    bound = epsilon_lower_bound(fpr, tpr, 100_000, 100_000)
    assert np.log(40) < bound < np.log(50)
    # Fewer samples, wider intervals, a lower bound; delta absorbs TPR.
    assert epsilon_lower_bound(fpr, tpr, 1000, 1000) < bound
    assert epsilon_lower_bound(fpr, tpr, 100_000, 100_000, delta=0.49) < 1.0


def test_dp_style_gaussian_scores_respect_their_epsilon():
    # Scores from N(0,1) vs N(mu,1) are mu-GDP; at delta 1e-5 that is roughly epsilon = 4.3 for mu = 1.
    from raypriv.metrics import attack_metrics

    rng = np.random.default_rng(0)
    is_in = np.repeat([True, False], 20_000)
    score = rng.normal(size=40_000) + is_in * 1.0
    metrics = attack_metrics(is_in, score, delta=1e-5)
    assert 0.5 < metrics["eps_lower_bound"] < 4.3
