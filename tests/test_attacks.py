import numpy as np
import pytest
from scipy.stats import norm

from raypriv.attacks import ATTACKS, LiraOptions, RmiaOptions, pooled_probability, run_attacks, score_attacks
from raypriv.attacks.block import group_ids, loo_moments
from raypriv.attacks.reference import (
    _leave_one_out_stats,
    label_probabilities,
    lira_aerni_attack,
    lira_attack,
    lira_scores_from_logits,
    loss_attack,
    rmia_attack,
    sklearn_metrics,
)
from raypriv.attacks.rmia import fit_offline_a
from raypriv.errors import RayprivError
from raypriv.metrics import roc_metrics, tpr_at_fpr
from raypriv.split import balanced_keep

ALL = list(ATTACKS)


def metrics_of(keep, score):
    """sklearn_metrics' numbers (tests/test_scoring.py checks roc_metrics equals it), fast at 10^5+ pairs."""
    return roc_metrics(keep, score)[0]


def logits_with_scores(scores):
    """Two-class logits [s, 0] with label 0, whose LiRA score is exactly s."""
    return np.stack([scores, np.zeros_like(scores)], axis=-1).astype(np.float64)


def gaussian_audit(n_models, n_samples, separation, seed=0, n_queries=1, spread=3.0):
    """Per-sample OUT means spread widely (``spread``); IN = OUT + separation; unit noise."""
    rng = np.random.default_rng(seed)
    keep = balanced_keep(n_models, n_samples, seed)
    centre = rng.normal(0, spread, size=(1, n_samples, 1))
    scores = centre + separation * keep[:, :, None] + rng.normal(size=(n_models, n_samples, n_queries))
    return logits_with_scores(scores), np.zeros(n_samples, dtype=np.int64), keep


def test_every_configurable_attack_is_implemented():
    with pytest.raises(RayprivError, match="unknown attack"):
        run_attacks(np.zeros((2, 3, 1, 2)), np.zeros(3, int), balanced_keep(2, 3, 0), ["lira"])


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


@pytest.mark.parametrize("n_models", [8, 10, 12])
def test_block_statistics_match_a_brute_force_loop_with_ties(n_models):
    # Scores rounded to a coarse grid, so many shadows tie with the removed value.
    rng = np.random.default_rng(n_models)
    scores = np.round(rng.normal(size=(n_models, 9, 2)) * 2) / 2
    keep = balanced_keep(n_models, 9, 4)
    block32 = np.ascontiguousarray(scores.astype(np.float32).transpose(1, 2, 0))  # (B, Q, M)
    for member in (keep, ~keep):
        member_bm = np.ascontiguousarray(member.T)
        median, variance = loo_moments(block32, block32.astype(np.float64), member_bm, group_ids(member_bm), True)
        for m in range(n_models):
            for n in range(9):
                group = [j for j in range(n_models) if member[j, n]]
                shadows = [j for j in group if j != m] if m in group else group[:-1]
                np.testing.assert_array_equal(median[n, :, m], np.median(scores[shadows, n], axis=0))
                np.testing.assert_allclose(variance[n, :, m], np.var(scores[shadows, n], axis=0), atol=1e-12)


def test_engine_matches_the_reference_implementation():
    """Blocks, threads and float32 storage change nothing beyond float32 rounding of the outputs."""
    rng = np.random.default_rng(5)
    n_models, n_samples, n_queries, n_classes = 12, 150, 2, 5
    keep = balanced_keep(n_models, n_samples, 5)
    logits = rng.normal(size=(n_models, n_samples, n_queries, n_classes)) * 3
    labels = rng.integers(0, n_classes, n_samples)
    logits[..., 0] += 2.0 * keep[:, :, None] * (labels[None, :, None] == 0)
    logits = logits.astype(np.float32)
    engine = run_attacks(logits, labels, keep, ALL)
    assert all(score.dtype == np.float32 and score.shape == keep.shape for score in engine.values())
    for block, workers in ((1, 1), (7 * n_models * n_queries, 2)):
        scores = lira_scores_from_logits(logits, labels).astype(np.float32)
        again = score_attacks(scores, loss_attack(logits, labels), keep, ALL, block_elements=block, workers=workers)
        for attack in ALL:
            np.testing.assert_array_equal(again[attack], engine[attack])

    rounded = lira_scores_from_logits(logits, labels).astype(np.float32).astype(np.float64)
    for attack in [a for a in ALL if a.startswith("lira")]:
        reference = lira_attack(rounded, keep, online="online" in attack, fixed_variance=attack.endswith("_fixed"))
        np.testing.assert_allclose(engine[attack], reference, rtol=2e-6, atol=2e-6 * np.abs(reference).max())
        exact = lira_attack(lira_scores_from_logits(logits, labels), keep, "online" in attack, attack.endswith("_fixed"))
        np.testing.assert_allclose(engine[attack], exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max())
    np.testing.assert_allclose(engine["loss"], loss_attack(logits, labels), rtol=1e-6)
    # The default RMIA (plain mean, per-query vote) against the authors' formula on the float64 logits.
    reference = rmia_attack(label_probabilities(logits, labels, pooled=False), keep, gamma=1.0, trim=0.0)
    np.testing.assert_allclose(engine["rmia"], reference, atol=1e-6)


def _rmia_brute_force(probs, keep, gamma):
    """RMIA by its definition: explicit shadow sets and every (x, z) pair."""
    n_models, n_samples = probs.shape
    scores = np.zeros((n_models, n_samples))
    for m in range(n_models):
        ratio = np.empty(n_samples)
        for n in range(n_samples):
            shadows = []
            for member in (keep[:, n], ~keep[:, n]):
                group = [j for j in range(n_models) if member[j]]
                shadows += [j for j in group if j != m] if m in group else group[:-1]
            ratio[n] = probs[m, n] / np.mean(probs[shadows, n])
        for n in range(n_samples):
            others = [z for z in range(n_samples) if z != n]
            scores[m, n] = np.mean([ratio[n] / ratio[z] > gamma for z in others])
    return scores


@pytest.mark.parametrize("gamma", [1.0, 0.8, 1.5])
def test_rmia_matches_its_definition(gamma):
    rng = np.random.default_rng(6)
    n_models, n_samples = 10, 13
    keep = balanced_keep(n_models, n_samples, 6)
    logits = rng.normal(size=(n_models, n_samples, 2, 3)) + 1.5 * keep[:, :, None, None] * np.eye(3)[0]
    labels = np.zeros(n_samples, dtype=np.int64)
    probs = label_probabilities(logits, labels)
    expected = _rmia_brute_force(probs, keep, gamma)
    np.testing.assert_allclose(rmia_attack(probs, keep, gamma), expected, atol=1e-12)
    pooled = RmiaOptions(gamma=gamma, trim=0.0, queries="pool")  # raypriv's RMIA before 2026-12-05
    np.testing.assert_allclose(
        run_attacks(logits.astype(np.float32), labels, keep, ["rmia"], rmia=pooled)["rmia"], expected, atol=1e-6
    )


def test_trimmed_mean_of_the_references_by_hand():
    """6 models, one sample IN for 0-2: target 0 keeps models 1, 2 (IN) and 3, 4 (OUT; 5 is the highest OUT id)."""
    from raypriv.attacks.rmia import reference_prior, trimmed_mean_less

    probs = np.array([[0.9, 0.8, 0.1, 0.3, 0.5, 0.7]])  # (B=1, M=6)
    member = np.array([[True, True, True, False, False, False]])
    prior = reference_prior(probs, member, group_ids(member), group_ids(~member), trim=0.25)
    # Target 0: refs {0.8, 0.1, 0.3, 0.5}, int(0.25 * 4) = 1 cut a side -> mean(0.3, 0.5) = 0.4.
    # Target 3 (OUT): drops itself and the highest IN id (2): refs {0.9, 0.8, 0.5, 0.7} -> mean(0.7, 0.8) = 0.75.
    # Target 5: drops itself and model 2: refs {0.9, 0.8, 0.3, 0.5} -> mean(0.5, 0.8) = 0.65.
    assert prior[0, [0, 3, 5]] == pytest.approx([0.4, 0.75, 0.65])
    assert prior[0, 1] == pytest.approx(0.4)  # refs {0.9, 0.1, 0.3, 0.5}: mean(0.3, 0.5)
    # trim 0 is the plain mean; ties and a removed value inside the kept range.
    values = np.array([[1.0, 2.0, 2.0, 2.0, 9.0, -5.0, 4.0]])
    assert trimmed_mean_less(values, [np.array([[1]])], 0.0)[0, 0] == pytest.approx((15.0 - 2.0) / 6)
    assert trimmed_mean_less(values, [np.array([[1]]), np.array([[6]])], 0.2)[0, 0] == pytest.approx(5.0 / 3)  # (1, 2, 2)


@pytest.mark.parametrize("options,population,offline", [
    (RmiaOptions(), False, False),  # the default: plain mean, vote (two queries here)
    (RmiaOptions(trim=0.2), False, False),  # the authors' trimmed mean
    (RmiaOptions(gamma=2.0, trim=0.2, temperature=2.0, queries="vote"), False, False),  # the authors' CIFAR-10 config
    (RmiaOptions(gamma=1.0, trim=0.2, queries="vote"), True, False),  # z from a population set
    (RmiaOptions(gamma=1.5, trim=0.1, queries="vote"), False, True),  # offline, a fixed
])
def test_rmia_matches_the_authors_formula(options, population, offline):
    """Engine (float32 channels, blocks, log ratios) against the reference (float64 logits, trim_mean, products, votes)."""
    rng = np.random.default_rng(11)
    n_models, n_samples, n_queries, n_classes = 10, 40, 3, 4
    keep = balanced_keep(n_models, n_samples, 11)
    logits = (rng.normal(size=(n_models, n_samples + 30, n_queries, n_classes)) * 2).astype(np.float32)
    labels = rng.integers(0, n_classes, n_samples + 30)
    logits[:, :n_samples, :, :] += (2.0 * keep[:, :, None, None] * np.eye(n_classes)[labels[:n_samples]][None, :, None, :]
                                    ).astype(np.float32)
    probs = label_probabilities(logits, labels, options.temperature, pooled=False)
    attack = "rmia_offline" if offline else "rmia"
    scores = lira_scores_from_logits(logits, labels)
    channels = [scores]
    if options.own_signal:
        channels.append(lira_scores_from_logits(logits / np.float32(options.temperature), labels))
    inputs = np.concatenate(channels, axis=2).astype(np.float32)
    engine = score_attacks(inputs[:, :n_samples], None, keep, [attack], rmia=options,
                           population=inputs[:, n_samples:] if population else None)[attack]
    if offline:  # the engine fits a per target (fit_offline_a, tested in test_queries.py); the reference takes it
        a = fit_offline_a(pooled_probability(inputs[:, :n_samples], n_queries), keep, options.gamma)
        expected = rmia_attack(probs[:, :n_samples], keep, options.gamma, options.trim, offline_a=a)
    else:
        expected = rmia_attack(probs[:, :n_samples], keep, options.gamma, options.trim,
                               population=probs[:, n_samples:] if population else None)
    np.testing.assert_allclose(engine, expected, atol=1e-6)
    if not (offline or population):  # queries: mean is the per-query shares averaged
        mean = score_attacks(inputs[:, :n_samples], None, keep, [attack], rmia=RmiaOptions(
            options.gamma, options.trim, options.temperature, "mean"))[attack]
        per_query = np.mean([rmia_attack(probs[:, :n_samples, q], keep, options.gamma, options.trim)
                             for q in range(n_queries)], axis=0)
        np.testing.assert_allclose(mean, per_query, atol=1e-6)


def test_lira_aerni_preset_matches_its_definition():
    logits, labels, keep = gaussian_audit(8, 30, 1.0, seed=3, n_queries=2)
    aerni = LiraOptions.from_preset("aerni-2024")
    assert (aerni.center, aerni.ddof, aerni.truncate) == ("mean", 1, False)
    engine = run_attacks(logits, labels, keep, ["lira_online", "lira_offline"], lira=aerni)
    scores = lira_scores_from_logits(logits, labels).astype(np.float32).astype(np.float64)
    for attack, online in (("lira_online", True), ("lira_offline", False)):
        reference = lira_aerni_attack(scores, keep, online)
        np.testing.assert_allclose(engine[attack], reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())
    carlini = run_attacks(logits, labels, keep, ["lira_online"])["lira_online"]
    assert not np.allclose(carlini, engine["lira_online"])  # the presets differ
    with pytest.raises(RayprivError, match="ddof 1"):
        run_attacks(logits[:4], labels, balanced_keep(4, 30, 0), ["lira_online"], lira=aerni)


def test_lira_online_reaches_the_neyman_pearson_tpr():
    # Equal-variance Gaussians separated by d: the best test has TPR = Phi(Phi^-1(FPR) + d).
    # With 256 models the shadow estimates are close enough for LiRA to reach it.
    separation = 2.0
    logits, labels, keep = gaussian_audit(256, 2000, separation)
    result = run_attacks(logits, labels, keep, ["lira_online", "lira_online_fixed", "lira_offline", "loss"])
    expected = norm.cdf(norm.ppf(0.01) + separation)  # 0.372
    for attack in ("lira_online", "lira_online_fixed"):
        metrics = metrics_of(keep, result[attack])
        assert metrics["tpr@1%fpr"] == pytest.approx(expected, abs=0.04), attack
        assert metrics["auc"] == pytest.approx(norm.cdf(separation / np.sqrt(2)), abs=0.01)
    # Offline is two-sided (|z| against the OUT Gaussian): TPR = Phi(d - t) + Phi(-d - t), t = Phi^-1(1 - FPR/2).
    threshold = norm.ppf(1 - 0.01 / 2)
    expected_offline = norm.cdf(separation - threshold) + norm.cdf(-separation - threshold)
    assert metrics_of(keep, result["lira_offline"])["tpr@1%fpr"] == pytest.approx(expected_offline, abs=0.04)
    # The loss attack cannot undo the per-sample spread of means, so it is far weaker at low FPR.
    assert metrics_of(keep, result["loss"])["tpr@1%fpr"] < 0.5 * expected


def test_rmia_reaches_the_neyman_pearson_tpr_on_exchangeable_samples():
    # Every sample alike (no spread of means): Pr(x) is the same for all, so each target's
    # RMIA score is a monotone function of its own score and reaches the best test's TPR.
    separation = 2.0
    logits, labels, keep = gaussian_audit(256, 2000, separation, spread=0.0)
    metrics = metrics_of(keep, run_attacks(logits, labels, keep, ["rmia"])["rmia"])
    assert metrics["tpr@1%fpr"] == pytest.approx(norm.cdf(norm.ppf(0.01) + separation), abs=0.04)
    assert metrics["auc"] == pytest.approx(norm.cdf(separation / np.sqrt(2)), abs=0.01)


def test_rmia_calibrates_per_sample_difficulty():
    # Widely spread per-sample means: dividing by Pr(x) removes them, the loss attack cannot.
    logits, labels, keep = gaussian_audit(256, 2000, 2.0)
    result = run_attacks(logits, labels, keep, ["rmia", "loss"])
    rmia, loss = metrics_of(keep, result["rmia"]), metrics_of(keep, result["loss"])
    assert rmia["auc"] > 0.8 and rmia["tpr@1%fpr"] > 0.15  # chance: 0.5 and 0.01
    assert rmia["tpr@1%fpr"] > 3 * loss["tpr@1%fpr"]


def test_queries_are_averaged():
    logits, labels, keep = gaussian_audit(32, 2000, 1.0, seed=4, n_queries=4)
    one = sklearn_metrics(keep, lira_attack(lira_scores_from_logits(logits[:, :, :1], labels), keep, True, False))
    four = sklearn_metrics(keep, lira_attack(lira_scores_from_logits(logits, labels), keep, True, False))
    assert four["auc"] > one["auc"] + 0.05  # four independent looks beat one
    for attack, samples in (("lira_online", 2000), ("rmia", 600)):  # RMIA's vote is O(N^2 Q) per target
        part = (slice(None), slice(0, samples))
        one = metrics_of(keep[part], run_attacks(logits[part][:, :, :1], labels[:samples], keep[part], [attack])[attack])
        four = metrics_of(keep[part], run_attacks(logits[part], labels[:samples], keep[part], [attack])[attack])
        assert four["auc"] > one["auc"] + 0.05, attack


@pytest.mark.parametrize("n_models", [8, 32])
@pytest.mark.parametrize("attack", ALL)
def test_identical_in_and_out_give_chance(attack, n_models):
    logits, labels, keep = gaussian_audit(n_models, 96_000 // n_models, separation=0.0, seed=7)
    metrics = metrics_of(keep, run_attacks(logits, labels, keep, [attack])[attack])
    assert metrics["auc"] == pytest.approx(0.5, abs=0.015)
    assert metrics["tpr@1%fpr"] == pytest.approx(0.01, abs=0.006)


def test_unbalanced_or_too_small_membership_is_refused():
    logits, labels, keep = gaussian_audit(8, 20, 1.0)
    keep = keep.copy()
    keep[0, 0] = ~keep[0, 0]
    with pytest.raises(RayprivError, match="same number of models"):
        run_attacks(logits, labels, keep, ["rmia"])
    assert run_attacks(logits, labels, keep, ["loss"])["loss"].shape == (8, 20)  # the loss attack needs no balance
    two = balanced_keep(2, 20, 0)
    with pytest.raises(RayprivError, match="at least 2 of each"):
        run_attacks(logits[:2], labels, two, ["lira_online"])


def test_loss_attack_is_minus_cross_entropy():
    logits = np.array([[[[2.0, 0.0, -1.0]], [[0.0, 0.0, 0.0]]]])
    labels = np.array([0, 2])
    expected = -np.array([-np.log(np.exp(2) / (np.exp(2) + 1 + np.exp(-1))), np.log(3)])
    np.testing.assert_allclose(loss_attack(logits, labels)[0], expected)
    np.testing.assert_allclose(run_attacks(logits, labels, np.array([[True, False]]), ["loss"])["loss"][0], expected, rtol=1e-6)


def test_tpr_at_fpr_interpolates_between_operating_points():
    fpr = np.array([0.0, 0.0, 0.002, 0.02, 1.0])
    tpr = np.array([0.0, 0.1, 0.3, 0.5, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.001) == pytest.approx(0.2)  # halfway from (0, 0.1) to (0.002, 0.3)
    assert tpr_at_fpr(fpr, tpr, 0.002) == pytest.approx(0.3)
    assert tpr_at_fpr(fpr, tpr, 0.01) == pytest.approx(0.3 + 0.2 * 8 / 18)
    # The other read-outs: the last point at FPR <= t, and the reference code's last point at FPR < t.
    assert [tpr_at_fpr(fpr, tpr, t, "at-or-below") for t in (0.001, 0.002, 0.01)] == [0.1, 0.3, 0.3]
    assert [tpr_at_fpr(fpr, tpr, t, "below") for t in (0.001, 0.002, 0.01)] == [0.1, 0.1, 0.3]
    with pytest.raises(ValueError, match="read-out"):
        tpr_at_fpr(fpr, tpr, 0.01, "nearest")


@pytest.mark.parametrize("readout", ["interpolate", "at-or-below", "below"])
def test_streamed_tpr_readouts_equal_sklearns_curve(readout):
    """roc_metrics (streamed, chunked) reads each way as the full curve does, and records the read-out."""
    rng = np.random.default_rng(2)
    is_in = rng.random(20_000) < 0.5
    score = np.round(rng.normal(size=20_000) + 1.5 * is_in, 2).astype(np.float32)  # ties: operating points on the grid
    streamed = roc_metrics(is_in, score, chunk=777, tpr_readout=readout)[0]
    full = sklearn_metrics(is_in, score, readout)
    assert streamed["tpr_readout"] == readout
    for key in ("tpr@0.1%fpr", "tpr@1%fpr"):
        assert streamed[key] == pytest.approx(full[key], abs=1e-12)
    metrics = sklearn_metrics(np.array([1, 1, 0, 0], bool), np.array([3.0, 2.0, 1.0, 0.0]))
    assert metrics["auc"] == 1.0 and metrics["tpr@0.1%fpr"] == 1.0 and metrics["balanced_acc"] == 1.0


def test_the_best_threshold_epsilon_from_counts():
    from raypriv.attacks.reference import best_threshold_epsilon as epsilon_lower_bound

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

    rng = np.random.default_rng(0)
    is_in = np.repeat([True, False], 20_000)
    score = rng.normal(size=40_000) + is_in * 1.0
    from raypriv.attacks.reference import best_threshold_epsilon, roc

    fpr, tpr = roc(is_in, score)
    assert 0.5 < best_threshold_epsilon(fpr, tpr, 20_000, 20_000, delta=1e-5) < 4.3
