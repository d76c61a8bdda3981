"""dpgen-marginals: the accounting math, the noisy-marginal generator, its options, and paradigm variants."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from raypriv.config import from_dict as config_from_dict
from raypriv.errors import RayprivError
from raypriv.run.fingerprints import recipe_hash
from raypriv.synth import LabeledSet, ShadowContext, make_paradigm, paradigm_class
from raypriv.synth.dpgen.common import Quantizer, calibrate, zcdp_delta, zcdp_epsilon, zcdp_rho
from raypriv.synth.dpgen.marginals import DPGenMarginals, project_to_simplex
from raypriv.training import Normalizer

# ------------------------------------------------------------------ accounting


def _cks_delta_by_grid(rho, epsilon):
    """The CKS 2020 conversion evaluated on a dense grid of alpha (independent of the bisection)."""
    alpha = np.concatenate([np.linspace(1.0001, 3, 200_000), np.geomspace(3, 1e4, 200_000)])
    log_delta = (alpha - 1) * (alpha * rho - epsilon) + alpha * np.log1p(-1 / alpha) - np.log(alpha - 1)
    return float(np.exp(log_delta.min()))


@pytest.mark.parametrize("rho, epsilon", [(0.5, 3.0), (0.02, 1.0), (1.2297, 8.0), (0.1, 2.0)])
def test_zcdp_to_dp_conversion_matches_the_formula_and_sits_between_known_bounds(rho, epsilon):
    delta = zcdp_delta(rho, epsilon)
    assert delta == pytest.approx(_cks_delta_by_grid(rho, epsilon), rel=1e-5)
    # Looser than nothing: at most Bun & Steinke's exp(-(eps - rho)^2 / (4 rho)) ...
    assert delta <= math.exp(-((epsilon - rho) ** 2) / (4 * rho))
    # ... and at least the exact delta of the one Gaussian mechanism with that rho (Balle & Wang 2018, Thm 8).
    sigma = 1 / math.sqrt(2 * rho)
    exact = norm.cdf(1 / (2 * sigma) - epsilon * sigma) - math.exp(epsilon) * norm.cdf(-1 / (2 * sigma) - epsilon * sigma)
    assert exact <= delta


def test_known_conversion_values():
    # rho = 0.5 (a Gaussian with sigma = 1, sensitivity 1) at epsilon = 3: delta = 5.1432e-3 (grid value above);
    # Bun & Steinke's epsilon = rho + 2 sqrt(rho log(1/delta)) for delta = 1e-5 is 5.298, CKS is tighter.
    assert zcdp_delta(0.5, 3.0) == pytest.approx(5.14318e-3, rel=1e-5)
    assert zcdp_epsilon(0.5, 1e-5) < 0.5 + 2 * math.sqrt(0.5 * math.log(1e5))
    assert zcdp_delta(0.5, zcdp_epsilon(0.5, 1e-5)) == pytest.approx(1e-5, rel=1e-6)
    rho = zcdp_rho(1.0, 1e-5)
    assert zcdp_epsilon(rho, 1e-5) == pytest.approx(1.0, rel=1e-9)
    assert zcdp_rho(8.0, 1e-5) > zcdp_rho(1.0, 1e-5) > zcdp_rho(1.0, 1e-8)


def test_noise_scale_is_calibrated_to_the_budget():
    laplace = [calibrate("laplace", eps, 1e-5, 31, 1.0, 1.0) for eps in (0.5, 1.0, 2.0, 8.0)]
    for c, eps in zip(laplace, (0.5, 1.0, 2.0, 8.0), strict=True):
        assert c.scale == pytest.approx(31 / eps) and c.epsilon == eps and c.delta == 0.0  # pure DP
    gaussian = [calibrate("gaussian", eps, 1e-5, 31, 1.0, 1.0) for eps in (0.01, 0.02, 1.0, 8.0)]
    for c, eps in zip(gaussian, (0.01, 0.02, 1.0, 8.0), strict=True):
        assert c.epsilon == pytest.approx(eps, rel=1e-9) and c.delta == 1e-5
        assert c.rho == pytest.approx(31 / (2 * c.scale**2))
    # Gaussian noise falls with epsilon, a little slower than 1/epsilon: delta > 0 buys part of the privacy.
    assert gaussian[0].scale > gaussian[1].scale > gaussian[2].scale > gaussian[3].scale
    assert 1.7 < gaussian[0].scale / gaussian[1].scale < 2.0
    # Twice the sensitivity needs twice the noise; the multiplier is per unit sensitivity.
    double = calibrate("gaussian", 1.0, 1e-5, 31, 2.0, 2.0)
    assert double.scale == pytest.approx(2 * gaussian[2].scale) and double.noise_multiplier == pytest.approx(gaussian[2].scale)
    rng = np.random.default_rng(0)
    assert gaussian[2].sample(rng, (200_000,)).std() == pytest.approx(gaussian[2].scale, rel=0.01)
    assert laplace[1].sample(rng, (200_000,)).std() == pytest.approx(math.sqrt(2) * laplace[1].scale, rel=0.01)


@pytest.mark.parametrize("epsilon", [0.1, 1.0, 8.0])
def test_one_gaussian_mechanism_gets_at_most_10_percent_more_noise_than_the_exact_optimum(epsilon):
    """Against the exact (epsilon, delta) curve of the Gaussian mechanism (Balle & Wang, ICML 2018, Thm 8).

    zCDP accounting is an upper bound, so the calibrated sigma must be at
    least the smallest sigma that is exactly (epsilon, delta)-DP, and the CKS
    conversion keeps it close (about 6-11% above here).
    """
    from scipy.optimize import brentq

    def exact_delta(sigma):
        return norm.cdf(1 / (2 * sigma) - epsilon * sigma) - math.exp(epsilon) * norm.cdf(-1 / (2 * sigma) - epsilon * sigma)

    optimum = brentq(lambda sigma: exact_delta(sigma) - 1e-5, 1e-3, 1e4)
    sigma = calibrate("gaussian", epsilon, 1e-5, 1, 1.0, 1.0).scale
    assert optimum <= sigma <= 1.12 * optimum


# ------------------------------------------------------------------ the generator


def test_projection_onto_the_simplex_is_the_nearest_distribution():
    rng = np.random.default_rng(0)
    v = rng.normal(0, 2, size=(50, 6))
    projected = project_to_simplex(v)
    np.testing.assert_allclose(projected.sum(1), 1.0)
    assert (projected >= 0).all()
    for row, p in zip(v, projected, strict=True):  # reference: bisection on the threshold theta of sum(max(v - theta, 0)) = 1
        low, high = row.min() - 1, row.max()
        for _ in range(200):
            theta = (low + high) / 2
            low, high = (theta, high) if np.maximum(row - theta, 0).sum() > 1 else (low, theta)
        np.testing.assert_allclose(p, np.maximum(row - theta, 0), atol=1e-9)


def _context(options, x, num_classes, model_id=0, name="dpgen-marginals"):
    config = config_from_dict({"paradigms": [name], "paradigm_options": {name: options}, "n_models": 8})
    normalizer = Normalizer.fit(x)
    return ShadowContext(config, name, model_id, num_classes, (x.shape[1],), normalizer, torch.device("cpu"))


def _private(n=4000, seed=0):
    """Three features whose distributions depend on a 2-class label, 30% of one class."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.int64)
    x = np.stack([rng.normal(2.0 * y, 1.0), rng.exponential(1.0 + y), rng.integers(0, 2, n) * (1 - y)], 1)
    return x.astype(np.float32), y


def _conditional_histograms(quantizer, x, y):
    bins = quantizer.bin(x)
    return np.array([[np.bincount(bins[y == c, j], minlength=quantizer.levels) / max(1, (y == c).sum())
                      for c in (0, 1)] for j in range(x.shape[1])])


def _synthesize(options, x, y, model_id=0):
    context = _context(options, x, 2, model_id)
    paradigm = make_paradigm(context.config, "dpgen-marginals")
    out = paradigm.synthesize(LabeledSet(torch.from_numpy(x), torch.from_numpy(y)), context)
    return out.x.numpy(), out.y.numpy(), context


@pytest.mark.parametrize("mechanism", ["gaussian", "laplace"])
def test_the_generator_reproduces_the_marginals_at_large_epsilon_and_not_at_tiny_epsilon(mechanism):
    x, y = _private()
    quantizer = Quantizer.from_normalizer(Normalizer.fit(x), 8, 3.0)
    real = _conditional_histograms(quantizer, x, y)
    distances = {}
    for eps in (1e5, 1e-2):
        xs, ys, context = _synthesize({"epsilon": eps, "mechanism": mechanism}, x, y)
        assert xs.dtype == np.float32 and xs.shape[1] == 3 and ys.dtype == np.int64
        synthetic = _conditional_histograms(quantizer, xs, ys)
        distances[eps] = 0.5 * np.abs(synthetic - real).sum(-1).mean()  # mean total variation distance
        if eps == 1e5:
            assert abs(ys.mean() - y.mean()) < 0.03 and abs(len(ys) - len(y)) < 5  # the noisy count is ~exact
            # Values lie within the data-independent range: mean +- clip standard deviations.
            z = (xs - x.mean(0)) / x.std(0)
            assert np.abs(z).max() <= 3.0 + 1e-4
    assert distances[1e5] < 0.04
    assert distances[1e-2] > 0.3


def test_info_records_the_accounted_budget_and_the_noise():
    x, y = _private(500)
    _, _, context = _synthesize({"epsilon": 2.0, "mechanism": "laplace"}, x, y)
    info = context.info
    assert info["mechanism"] == "laplace" and info["epsilon"] == 2.0 and info["delta"] == 0.0
    assert info["noise_multiplier"] == pytest.approx(4 / 2.0) and info["compositions"] == 4  # D + 1 tables
    _, _, context = _synthesize({"epsilon": 2.0, "delta": 1e-6}, x, y)
    info = context.info
    assert info["mechanism"] == "gaussian" and info["epsilon"] == pytest.approx(2.0) and info["delta"] == 1e-6
    assert info["noise_multiplier"] == pytest.approx(math.sqrt(4 / (2 * zcdp_rho(2.0, 1e-6))))


def test_synthesis_is_reproducible_per_model_and_a_fixed_size_is_honoured():
    x, y = _private(500)
    a, ay, _ = _synthesize({"epsilon": 1.0, "n_synthetic": 123}, x, y)
    b, by, _ = _synthesize({"epsilon": 1.0, "n_synthetic": 123}, x, y)
    c, _, _ = _synthesize({"epsilon": 1.0, "n_synthetic": 123}, x, y, model_id=1)
    assert len(a) == 123
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ay, by)
    assert not np.array_equal(a, c)


def test_bins_come_from_the_public_normaliser_not_from_the_records():
    x, _ = _private(200)
    quantizer = Quantizer.from_normalizer(Normalizer.fit(x), 4, 2.0)
    outlier = x[:1] * 0 + 1e6  # far beyond the range: clipped into the last bin
    assert (quantizer.bin(outlier) == 3).all() and (quantizer.bin(-outlier) == 0).all()
    centre = quantizer.centre(np.array([[0, 3, 1]]))[0]
    expected = x.mean(0) + np.array([-1.5, 1.5, -0.5]) * x.std(0)  # bins of width 1 std over [-2, 2]
    np.testing.assert_allclose(centre, expected, rtol=1e-4)


# ------------------------------------------------------------------ options and variants


@pytest.mark.parametrize(
    "options, message",
    [
        ({"epsilon": 0}, r"dpgen-marginals.epsilon=0.0: the privacy budget must be a positive number"),
        ({"epsilon": -1.0}, r"epsilon=-1.0: the privacy budget must be a positive number"),
        ({"epsilon": float("nan")}, r"epsilon=nan is not a finite number"),
        ({"delta": 0.0}, r"delta=0.0: delta must lie strictly between 0 and 1"),
        ({"mechanism": "exponential"}, r"mechanism='exponential' is not allowed; choose one of \['gaussian', 'laplace'\]"),
        ({"bins": 1}, r"bins=1: at least 2 bins"),
        ({"n_synthetic": 0}, r"n_synthetic=0"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(RayprivError, match=message):
        config_from_dict({"paradigms": ["dpgen-marginals"], "paradigm_options": {"dpgen-marginals": options}})


def test_image_data_is_refused():
    config = config_from_dict({"paradigms": ["dpgen-marginals"]})
    images = np.zeros((4, 1, 8, 8), dtype=np.uint8)
    context = ShadowContext(config, "dpgen-marginals", 0, 10, (1, 8, 8), Normalizer.fit(images), torch.device("cpu"))
    with pytest.raises(RayprivError, match="generates tabular records, but the dataset's inputs have shape"):
        DPGenMarginals().synthesize(LabeledSet(torch.from_numpy(images), torch.zeros(4, dtype=torch.long)), context)


def test_variants_run_one_paradigm_at_several_settings_in_one_run():
    config = config_from_dict({
        "paradigms": ["real", "dpgen-marginals@eps1", "dpgen-marginals@eps8"],
        "paradigm_options": {"dpgen-marginals@eps1": {"epsilon": 1.0}, "dpgen-marginals@eps8": {"epsilon": 8.0}},
    })
    assert paradigm_class("dpgen-marginals@eps1") is DPGenMarginals
    assert make_paradigm(config, "dpgen-marginals@eps8").options.epsilon == 8.0
    assert make_paradigm(config, "dpgen-marginals@eps1").options.epsilon == 1.0
    hashes = {recipe_hash(config, p) for p in config.paradigms}
    assert len(hashes) == 3
    with pytest.raises(RayprivError, match=r"paradigm_options.dpgen-marginals@eps1.epsilon=0.0"):
        config_from_dict({"paradigms": ["dpgen-marginals@eps1"], "paradigm_options": {"dpgen-marginals@eps1": {"epsilon": 0}}})
    with pytest.raises(RayprivError, match=r"paradigm 'magic@x' is not known"):
        config_from_dict({"paradigms": ["magic@x"]})
    with pytest.raises(RayprivError, match=r"paradigm 'dpgen-marginals@a/b' is not known"):
        config_from_dict({"paradigms": ["dpgen-marginals@a/b"]})
    with pytest.raises(RayprivError, match=r"the variant tag 'a/b' must be letters, digits"):
        paradigm_class("dpgen-marginals@a/b")
