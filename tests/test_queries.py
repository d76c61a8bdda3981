"""Shift queries and presets, attack settings (lira.preset, rmia:, audit.tpr_readout), and RMIA offline."""

import numpy as np
import pytest
import torch

from raypriv.attacks import LiraOptions, RmiaOptions, run_attacks, score_attacks
from raypriv.attacks.reference import lira_scores_from_logits
from raypriv.attacks.rmia import OFFLINE_A_GRID, fit_offline_a, rmia_ranks
from raypriv.config import from_dict as config_from_dict
from raypriv.errors import RayprivError
from raypriv.metrics import roc_metrics
from raypriv.queries import apply_query, expand_queries, image_queries, pad_for_crop
from raypriv.run.fingerprints import protocol_hash, recipe_hash
from raypriv.split import balanced_keep


def test_shift_queries_are_the_training_crop_at_fixed_offsets():
    x = torch.rand(3, 2, 8, 8)
    padded = pad_for_crop(x, 4)
    for dx, dy in [(-4, 4), (4, 0), (0, -3), (1, 2)]:
        crop = padded[:, :, 4 + dy : 4 + dy + 8, 4 + dx : 4 + dx + 8]  # what random_crop takes at that offset
        assert torch.equal(apply_query(x, f"shift({dx},{dy})"), crop)
        flipped_crop = pad_for_crop(x.flip(-1), 4)[:, :, 4 + dy : 12 + dy, 4 + dx : 12 + dx]
        assert torch.equal(apply_query(x, f"hflip+shift({dx},{dy})"), flipped_crop)
    assert torch.equal(apply_query(x, "shift(0,0)"), x)


def test_presets_expand_in_the_config_and_enter_the_protocol():
    reference = config_from_dict({"queries": ["flip-shift-18"], "train": {"crop_padding": 4}})
    assert len(reference.queries) == 18 == len(set(reference.queries)) and reference.queries[0] == "identity"
    assert sum(q.startswith("hflip") for q in reference.queries) == 9
    assert {q for q in reference.queries if "shift" in q and "hflip" not in q} == {
        f"shift({dx},{dy})" for dx in (-4, 0, 4) for dy in (-4, 0, 4) if (dx, dy) != (0, 0)
    }
    assert config_from_dict({"queries": ["flip-2"]}).queries == ["identity", "hflip"]
    assert expand_queries(["shift(0,0)", "hflip+shift(0,0)"], 4) == ["identity", "hflip"]
    assert protocol_hash(reference) != protocol_hash(config_from_dict({"queries": ["flip-2"]}))
    assert image_queries(reference.queries) == reference.queries[1:]


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"queries": ["rotate"]}, "query 'rotate' is not known"),
        ({"queries": ["shift(5,0)"], "train": {"crop_padding": 4}}, "shifts further than train.crop_padding=4"),
        ({"queries": ["flip-shift-18"], "train": {"crop_padding": 0}}, "train.crop_padding is 0"),
        ({"queries": ["identity", "flip-2"]}, "more than once (after expanding presets)"),
        ({"rmia": {"gamma": 0}}, "rmia.gamma=0.0 must be a positive number"),
        ({"rmia": {"gamma": -1.5}}, "rmia.gamma=-1.5 must be a positive number"),
        ({"lira": {"center": "mode"}}, "lira.center='mode' is not allowed"),
        ({"lira": {"preset": "carlini"}}, "lira.preset='carlini' is not allowed; choose one of ['carlini-2022', 'aerni-2024']"),
        ({"lira": {"preset": "aerni-2024", "center": "median"}}, "contradicts lira.preset: aerni-2024"),
        ({"rmia": {"trim": 0.5}}, "rmia.trim=0.5 must lie in [0, 0.5)"),
        ({"rmia": {"trim": -0.1}}, "rmia.trim=-0.1 must lie in [0, 0.5)"),
        ({"rmia": {"temperature": 0}}, "rmia.temperature=0.0 must be a positive number"),
        ({"rmia": {"queries": "majority"}}, "rmia.queries='majority' is not allowed; choose one of ['vote', 'mean', 'pool']"),
        ({"audit": {"tpr_readout": "nearest"}}, "audit.tpr_readout='nearest' is not allowed"),
    ],
)
def test_bad_queries_and_attack_settings_are_named(raw, expected):
    with pytest.raises(RayprivError) as error:
        config_from_dict(raw)
    assert expected in str(error.value)


def test_image_queries_refuse_tabular_batches():
    with pytest.raises(RayprivError, match="images only"):
        apply_query(torch.zeros(4, 30), "shift(1,0)")


def test_attack_settings_keep_every_fingerprint():
    base = config_from_dict({})
    tuned = config_from_dict({"lira": {"preset": "aerni-2024"}, "rmia": {"gamma": 2.0, "trim": 0.0, "temperature": 2.0},
                              "audit": {"tpr_readout": "below"}})
    assert protocol_hash(base) == protocol_hash(tuned) and recipe_hash(base, "real") == recipe_hash(tuned, "real")


def _signal_logits(rng, n_models=12, n_samples=60, n_queries=2, strength=2.0):
    keep = balanced_keep(n_models, n_samples, 3)
    logits = rng.normal(size=(n_models, n_samples, n_queries, 3)) * 2
    labels = rng.integers(0, 3, n_samples)
    logits[np.arange(n_models)[:, None], np.arange(n_samples)[None, :], :, labels[None, :]] += strength * keep[:, :, None]
    return logits.astype(np.float32), labels, keep


def test_lira_mean_center_is_the_leave_one_out_mean():
    rng = np.random.default_rng(1)
    logits, labels, keep = _signal_logits(rng, n_samples=15)
    mean_centre = LiraOptions.from_preset("carlini-2022", "mean")  # an older config's lira.center: mean
    engine = run_attacks(logits, labels, keep, ["lira_online", "lira_offline"], lira=mean_centre)
    scores = lira_scores_from_logits(logits, labels).astype(np.float32).astype(np.float64)
    n_models, n_samples, _ = scores.shape
    expected = np.zeros((n_models, n_samples))
    for m in range(n_models):
        for n in range(n_samples):
            log_pdf = {}
            for side, member in ((True, keep[:, n]), (False, ~keep[:, n])):
                group = [j for j in range(n_models) if member[j]]
                shadows = [j for j in group if j != (m if member[m] else group[-1])]
                values = scores[shadows, n]
                mean, std = values.mean(axis=0), values.std(axis=0) + 1e-30
                log_pdf[side] = -0.5 * ((scores[m, n] - mean) / std) ** 2 - np.log(std)
            expected[m, n] = (log_pdf[True] - log_pdf[False]).mean()
    np.testing.assert_allclose(engine["lira_online"], expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    median = run_attacks(logits, labels, keep, ["lira_online"])["lira_online"]
    assert not np.allclose(median, engine["lira_online"])  # the setting reaches the engine


def test_rmia_offline_finds_members_and_fits_a_on_the_other_fold():
    rng = np.random.default_rng(2)
    logits, labels, keep = _signal_logits(rng, n_models=16, n_samples=200)
    result = run_attacks(logits, labels, keep, ["rmia_offline", "rmia"], rmia=RmiaOptions(gamma=2.0))
    assert roc_metrics(keep, result["rmia_offline"])[0]["auc"] > 0.7
    probs = np.random.default_rng(3).random(keep.shape)
    a = fit_offline_a(probs, keep)
    assert set(a) <= set(OFFLINE_A_GRID) and len(set(a[::2])) == 1 and len(set(a[1::2])) == 1
    changed = probs.copy()
    changed[0] = 1.0 - changed[0]  # model 0 (fold 0) cannot change the a of fold-0 targets
    assert (fit_offline_a(changed, keep)[::2] == a[::2]).all()
    blank = run_attacks(np.zeros_like(logits), labels, keep, ["rmia_offline"])["rmia_offline"]
    assert np.isfinite(blank).all()


def test_rmia_with_a_population_set_counts_population_samples():
    rng = np.random.default_rng(4)
    logits, labels, keep = _signal_logits(rng, n_models=8, n_samples=120)
    scores = lira_scores_from_logits(logits, labels).astype(np.float32)
    population = rng.normal(size=(8, 50, 2)).astype(np.float32)  # LiRA scores of 50 samples no model trained on
    pooled = RmiaOptions(gamma=2.0, queries="pool")  # one share per pair; the vote is checked in test_attacks.py
    with_z = score_attacks(scores, None, keep, ["rmia", "rmia_offline"], population=population, rmia=pooled)
    without = score_attacks(scores, None, keep, ["rmia"], rmia=pooled)["rmia"]
    assert not np.allclose(with_z["rmia"], without)
    # every score is a share of the 50 population samples
    assert np.allclose(with_z["rmia"] * 50, np.round(with_z["rmia"] * 50), atol=1e-4)
    for attack in with_z:
        assert roc_metrics(keep, with_z[attack])[0]["auc"] > 0.7, attack
    # by definition: x beats z when ratio_x / ratio_z > gamma
    x, z = np.array([[0.0, 1.0, 2.0]]), np.array([[-1.0, 0.5, 0.0, 1.5]])
    np.testing.assert_array_equal(rmia_ranks(x, 1.0, z), [[0.25, 0.75, 1.0]])
    np.testing.assert_array_equal(rmia_ranks(x, np.e, z), [[0.0, 0.25, 0.75]])


def test_attack_settings_reach_the_scoring_plan_and_metrics_json():
    from types import SimpleNamespace

    from raypriv.results import AttackMetrics
    from raypriv.scoring import ScoringPlan

    config = config_from_dict({"n_models": 8, "queries": ["flip-2"], "lira": {"preset": "aerni-2024"},
                               "rmia": {"gamma": 2.0, "trim": 0.2, "temperature": 2.0, "queries": "mean"},
                               "audit": {"tpr_readout": "below"}})
    keep = balanced_keep(8, 10, 0)
    split = SimpleNamespace(keep=keep, audit_labels=np.zeros(10, np.int64), population_labels=np.zeros(0, np.int64))
    plan = ScoringPlan.from_config(config, split, recipe_hashes={})
    assert plan.rmia == RmiaOptions(gamma=2.0, trim=0.2, temperature=2.0, queries="mean")
    assert plan.lira == LiraOptions("mean", 1, False) and plan.tpr_readout == "below"
    assert plan.n_channels == 4  # two queries' LiRA scores, then their tempered RMIA channels
    assert ScoringPlan.from_config(config_from_dict({"queries": ["flip-2"]}), split, recipe_hashes={}).n_channels == 2
    # metrics.json records the read-out; an older entry without one reads as interpolated.
    old = {"auc": 0.9, "balanced_acc": 0.8, "tpr@0.1%fpr": 0.1, "tpr@1%fpr": 0.2, "n_in": 5, "n_out": 5,
           "eps_lower_bound": 0.0}
    assert AttackMetrics.from_json(old).readout == "interpolate" and AttackMetrics.from_json(old).to_json() == old
    new = AttackMetrics.from_json({**old, "tpr_readout": "below"})
    assert new.tpr_readout == "below" and new.to_json()["tpr_readout"] == "below" and not new.extra


def test_rmia_alone_runs_with_four_models_lira_does_not():
    assert config_from_dict({"n_models": 4, "attacks": ["loss", "rmia", "rmia_offline"]}).n_models == 4
    with pytest.raises(RayprivError, match="too few for RMIA"):
        config_from_dict({"n_models": 2, "attacks": ["rmia"]})
    with pytest.raises(RayprivError, match="too few for LiRA"):
        config_from_dict({"n_models": 4, "attacks": ["rmia", "lira_online"]})


def test_a_vote_too_large_to_finish_is_refused_before_training(capsys, tmp_path):
    """18 queries x 20,000 audit samples x 256 models: 1.8e12 (x, z, query) comparisons; the mean is accepted."""
    from raypriv.config import load
    from raypriv.errors import RayprivError
    from tests.conftest import cli_error

    big = {"queries": ["flip-shift-18"], "audit.n_audit": 20000, "n_models": 256}
    with pytest.raises(RayprivError, match=r"rmia.queries: vote .* 1.8e\+12 comparisons.*set rmia.queries: mean"):
        load(None, big)
    assert load(None, {**big, "rmia.queries": "mean"}).rmia.queries == "mean"
    assert load(None, {**big, "attacks": ["loss", "lira_online"]}).rmia.queries == "vote"  # no RMIA: no vote
    config = tmp_path / "big.yaml"
    config.write_text("n_models: 256\nqueries: [flip-shift-18]\naudit: {n_audit: 20000}\n")
    line = cli_error(capsys, ["audit", "--config", str(config), "--out", str(tmp_path / "run")])
    assert "rmia.queries: vote" in line and not (tmp_path / "run").exists()
