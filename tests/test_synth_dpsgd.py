import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from raypriv.config import from_dict as config_from_dict
from raypriv.driver import run_audit
from raypriv.errors import RayprivError
from raypriv.synth import LabeledSet, ShadowContext, build_options, make_paradigm
from raypriv.synth.options import default_delta, resolve_delta
from raypriv.synth.validation import check_info
from raypriv.training import Normalizer, predict_logits
from tests.conftest import tiny_config_dict


def _private_set(n: int = 120, seed: int = 0) -> LabeledSet:
    """Random 8x8 images whose brightness pattern depends on the class (learnable, tiny)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    x = rng.integers(0, 128, (n, 1, 8, 8))
    x[np.arange(n), 0, y % 8, :] += 120  # a bright row per class
    return LabeledSet(torch.tensor(x, dtype=torch.uint8), torch.tensor(y, dtype=torch.int64))


def _context(tmp_path, model_id: int = 0, **options) -> tuple[ShadowContext, object]:
    overrides = {f"paradigm_options.dpsgd.{k}": v for k, v in options.items()}
    config = config_from_dict(tiny_config_dict(tmp_path / "run", paradigms=["dpsgd"], **overrides))
    private = _private_set()
    normalizer = Normalizer.fit(private.x.numpy())
    context = ShadowContext(config, "dpsgd", model_id, 10, (1, 8, 8), normalizer, torch.device("cpu"))
    return context, make_paradigm(config, "dpsgd")


def _train(tmp_path, model_id: int = 0, **options):
    context, paradigm = _context(tmp_path, model_id, **options)
    private = _private_set()
    training_set = paradigm.synthesize(private, context)
    assert training_set is private  # DP-SGD trains on the private set itself
    model = paradigm.train(training_set, context)
    return model, context, private


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One DP-SGD model at the default target epsilon 8 (accounting dominates the cost, so it is shared)."""
    return _train(tmp_path_factory.mktemp("dpsgd"), model_id=3, epochs=2, batch_size=30)


def test_accounted_epsilon_meets_the_target_and_the_model_is_plain(trained):
    model, context, private = trained
    info = context.info
    assert 0 < info["epsilon"] <= 8.0 + 1e-3
    assert info["epsilon"] > 7.0  # the noise is calibrated to spend (about) the budget, not far less
    assert info["target_epsilon"] == 8.0 and info["accountant"] == "rdp"
    assert info["delta"] == 1e-5  # delta: auto, 120 samples (not 1/n = 8.3e-3)
    check_info(info)
    assert info["sample_rate"] == pytest.approx(1 / 4)  # 1 / ceil(120 / 30)
    assert info["steps"] == 2 * 4 and info["noise_multiplier"] > 0
    json.dumps(info)  # storable
    # GroupNorm instead of BatchNorm; a plain module, with no per-sample-gradient leftovers.
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert type(model).__name__ == "SmallCNN"
    assert not any(hasattr(p, "grad_sample") or hasattr(p, "_forward_counter") for p in model.parameters())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    logits = predict_logits(model, private.x, context.normalizer, ["identity"])
    assert logits.shape == (len(private), 1, 10) and np.isfinite(logits).all()


def test_smaller_epsilon_means_more_noise(tmp_path, trained):
    _, loose, _ = trained
    _, tight, _ = _train(tmp_path, model_id=3, epsilon=1.0, epochs=2, batch_size=30)
    assert tight.info["noise_multiplier"] > loose.info["noise_multiplier"]
    assert 0 < tight.info["epsilon"] <= 1.0 + 1e-3


def test_the_cached_calibration_is_opacus_make_private_with_epsilon(trained):
    """The noise multiplier the trainer uses is the one opacus' own calibrating entry point picks."""
    import warnings

    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from raypriv.synth.dpsgd import calibrated_noise_multiplier

    _, context, _ = trained
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    loader = DataLoader(TensorDataset(torch.arange(120)), batch_size=30)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        _, optimizer, _ = PrivacyEngine(accountant="rdp").make_private_with_epsilon(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=loader,
            target_epsilon=8.0, target_delta=1e-5, epochs=2, max_grad_norm=1.0, poisson_sampling=True,
        )
    assert context.info["noise_multiplier"] == optimizer.noise_multiplier  # the same bisection, to the bit
    hits = calibrated_noise_multiplier.cache_info().hits
    again = calibrated_noise_multiplier(epsilon=8.0, delta=1e-5, sample_rate=1 / 4, epochs=2, accountant="rdp")
    assert again == optimizer.noise_multiplier and calibrated_noise_multiplier.cache_info().hits == hits + 1


def test_same_seed_and_model_give_identical_models(tmp_path, trained):
    first, context, private = trained
    second, _, _ = _train(tmp_path, model_id=3, epochs=2, batch_size=30)
    a, b = (predict_logits(m, private.x, context.normalizer, ["identity"]) for m in (first, second))
    np.testing.assert_array_equal(a, b)


def test_default_delta_is_1e_5_and_always_below_1_over_n():
    assert default_delta(120) == 1e-5 and default_delta(1347) == 1e-5 and default_delta(99_999) == 1e-5
    assert default_delta(100_000) == pytest.approx(1e-6) and default_delta(2_000_000) == pytest.approx(5e-8)
    for n in (1, 10, 1000, 99_999, 100_000, 10**7):
        assert default_delta(n) < 1 / n
    assert resolve_delta("auto", 500) == 1e-5 and resolve_delta(None, 500) == 1 / 500 and resolve_delta(3e-6, 500) == 3e-6
    assert build_options("dpsgd", None).delta == "auto"
    assert build_options("dpsgd", {"delta": 1e-6}).delta == 1e-6 and build_options("dpsgd", {"delta": None}).delta is None
    with pytest.raises(RayprivError, match=r"paradigm_options.dpsgd.delta='1/n' is not allowed.*'auto'"):
        build_options("dpsgd", {"delta": "1/n"})


def test_the_new_default_delta_changes_the_recipe_hash_of_dpsgd_only(tmp_path):
    """Runs trained under the old default (delta: null, 1/n) are not resumed as if they were the new one."""
    from raypriv.run.fingerprints import recipe_hash

    def config(**options):
        overrides = {f"paradigm_options.dpsgd.{k}": v for k, v in options.items()}
        return config_from_dict(tiny_config_dict(tmp_path / "run", paradigms=["real", "dpsgd"], **overrides))

    default, old_default, explicit = config(), config(delta=None), config(delta=1e-5)
    assert len({recipe_hash(c, "dpsgd") for c in (default, old_default, explicit)}) == 3
    assert recipe_hash(default, "real") == recipe_hash(old_default, "real")


def test_the_accountant_is_checked_and_carried_into_metrics_json_and_the_summary():
    from raypriv.results import ParadigmMetrics
    from raypriv.scoring.outputs import paradigm_metrics
    from raypriv.summary import tidy_metrics

    check_info({"epsilon": 1.0, "delta": 1e-5, "accountant": "prv"})
    for bad in ({"epsilon": 1.0, "delta": 1e-5, "accountant": 3}, {"epsilon": 1.0, "delta": 1e-5, "accountant": " "},
                {"accountant": "rdp"}):
        with pytest.raises(ValueError, match="accountant"):
            check_info(bad)
    rows = pd.DataFrame({
        "test_acc": [0.9, 0.8], "synth_seconds": [0.0, 0.0], "train_seconds": [1.0, 3.0],
        "info": [json.dumps({"epsilon": 7.9, "delta": 1e-5, "accountant": "rdp", "note": "a"}),
                 json.dumps({"epsilon": 8.1, "delta": 1e-5, "accountant": "rdp", "note": "b"})],
    })
    entry = paradigm_metrics(rows)
    assert entry.info == {"epsilon": pytest.approx(8.0), "delta": 1e-5, "accountant": "rdp"}  # "note" differs: dropped
    assert ParadigmMetrics.from_json(entry.to_json()).info["accountant"] == "rdp"
    tidy = tidy_metrics({"dpsgd": entry})
    assert set(tidy.metric) == {"test_acc", "test_acc_std", "n_models", "epsilon", "delta"}


def test_prv_accountant(tmp_path):
    _, context, _ = _train(tmp_path, epsilon=3.0, accountant="prv", epochs=1, batch_size=40)
    assert context.info["accountant"] == "prv"
    assert 0 < context.info["epsilon"] <= 3.0 + 0.05  # PRV reports an upper bound within its eps_error


@pytest.mark.parametrize(
    "field, value",
    [("epsilon", 0.0), ("epsilon", -1.0), ("delta", 0.0), ("delta", 1.0), ("max_grad_norm", 0.0), ("epochs", 0)],
)
def test_bad_options_name_the_field(field, value):
    with pytest.raises(RayprivError, match=f"paradigm_options.dpsgd.{field}"):
        build_options("dpsgd", {field: value})


def test_batch_larger_than_private_set_is_refused(tmp_path):
    with pytest.raises(RayprivError, match="batch_size"):
        _train(tmp_path, batch_size=1000, epochs=1)


@pytest.mark.slow
def test_tiny_audit_end_to_end(tmp_path):
    options = {"paradigm_options.dpsgd.epochs": 2, "paradigm_options.dpsgd.batch_size": 64}
    raw = tiny_config_dict(tmp_path / "run", paradigms=["dpsgd"], **options)
    result = run_audit(config_from_dict(raw), use_ray=False, show_progress=False)
    models = result.models
    assert len(models) == 8 and (models.status == "ok").all()
    info = pd.DataFrame([json.loads(i) for i in models["info"]])
    assert (info.epsilon > 0).all() and (info.epsilon <= 8.0 + 1e-3).all()
    assert (models.synthetic_size == models.private_size).all()
    assert not (tmp_path / "run" / "synthetic" / "dpsgd").exists()  # nothing new to store
    assert "lira_online" in result.metrics_json["dpsgd"]
    # It learns something in two noisy epochs (chance: 0.1).  One epoch sufficed at the old default delta = 1/n;
    # at delta = 1e-5 the same epsilon takes more noise, and one epoch averaged 0.19.
    assert models.test_acc.mean() > 0.2
