"""Audits that run until they decide: bad budgets, balanced keep blocks, the sequential rule's validity, end to end."""

import json

import numpy as np
import pytest

import raypriv
from raypriv.config import load as load_config
from raypriv.errors import RayprivError
from raypriv.run.fingerprints import protocol_hash
from raypriv.sequential import (
    DECISION_FPRS,
    Schedule,
    decide,
    decision_states,
    look_of,
    simulate_sequential,
    threshold_counts,
)
from raypriv.split import balanced_keep, block_balanced_keep
from tests.conftest import cli_error

# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("argv, expected", [
    (["--until-decided"], "budget.until is 'decided' but budget.max_models is not set; pass --max-models N"),
    (["--until-decided", "--max-models", "60", "--round", "8"], "budget.round=8 does not divide budget.max_models=60"),
    (["--until-decided", "--max-models", "64", "--bounded-multiple", "-2"], "budget.bounded_multiple=-2 must be above 1"),
    (["--until-decided", "--max-models", "56", "--round", "7"], "budget.round=7 must be even and at least 2"),
    (["--max-models", "64"], "budget.max_models=64 is set but budget.until is 'fixed'; add --until-decided"),
    (["--until-decided", "--max-models", "64", "--models", "32"], "--models 32 and --max-models 64 both set"),
])
def test_bad_budgets_are_one_error_line_and_write_nothing(capsys, tmp_path, argv, expected):
    out = tmp_path / "run"
    assert expected in cli_error(capsys, ["audit", "--out", str(out), "--no-ray", *argv])
    assert not out.exists()


def test_bad_budgets_in_the_config_and_the_python_api(tmp_path):
    with pytest.raises(RayprivError, match="n_models=16 and budget.until: decided both set the model count"):
        load_config({"n_models": 16, "budget": {"until": "decided", "max_models": 32}})
    with pytest.raises(RayprivError, match="budget.round=6 does not divide"):
        raypriv.audit({"budget": {"until": "decided", "max_models": 32, "round": 6}}, out_dir=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()
    config = load_config({"budget": {"until": "decided", "max_models": 32, "round": 8}})
    assert config.n_models == 32  # the plan's size


def test_fixed_budgets_keep_their_keep_matrix_and_hashes():
    fixed = load_config({})
    assert "keep_blocks" not in json.dumps(fixed.to_dict()) and "budget" in fixed.to_dict()
    # The protocol hash of a fixed run does not see the budget section (stored runs keep resuming) ...
    assert protocol_hash(fixed) == protocol_hash(load_config({"budget": {"bounded_multiple": 3}}))
    decided = load_config({"budget": {"until": "decided", "max_models": 64, "round": 8}})
    assert protocol_hash(decided) != protocol_hash(fixed)  # ... an until-decided one has other keep rows
    assert protocol_hash(decided) == protocol_hash(
        load_config({"budget": {"until": "decided", "max_models": 64, "round": 8, "bounded_multiple": 5}}))
    # balanced_keep (fixed budgets) is as it was: the reference LiRA draw from the "keep" stream.
    from raypriv.seeding import numpy_rng
    assert np.array_equal(balanced_keep(16, 30, 3), numpy_rng(3, "keep").uniform(size=(16, 30)).argsort(axis=0) < 8)


# ---------------------------------------------------------------- keep blocks


@pytest.mark.parametrize("block", [2, 4, 8, 16])
def test_keep_blocks_are_balanced_at_every_stopping_point(block):
    keep = block_balanced_keep(64, 150, seed=4, block=block)
    assert keep.shape == (64, 150)
    for stop in range(block, 65, block):
        assert (keep[:stop].sum(axis=0) == stop // 2).all(), stop  # every audit sample IN for half the models
    assert (keep.reshape(64 // block, block, 150).sum(axis=1) == block // 2).all()
    # The first blocks do not depend on the maximum, and the draw is random across samples and blocks.
    assert np.array_equal(block_balanced_keep(32, 150, 4, block), keep[:32])
    assert not np.array_equal(keep[:block], keep[block:2 * block])
    assert not np.array_equal(block_balanced_keep(64, 150, 5, block), keep)
    with pytest.raises(RayprivError, match="cannot be balanced"):
        block_balanced_keep(21, 10, 0, 7)


# ---------------------------------------------------------------- the rule


def test_threshold_counts_and_the_leak_rule_on_known_scores():
    keep = block_balanced_keep(16, 100, 0, 8)  # 800 IN and 800 OUT pairs: the 1% level is measurable
    scores = np.where(keep, 10.0, 0.0) + np.arange(keep.size).reshape(keep.shape) * 1e-6  # a perfect attack
    tp, fp = threshold_counts(keep, scores)
    assert tp.tolist() == [800, 800] and fp.tolist() == [0, 8]
    decision = decide(look_of("p", "lira_online", keep, scores), Schedule.of(64, 8, "lira_online"), 2.0)
    assert decision.state == "leaks" and decision.fpr == 0.01 and decision.models == 16
    assert "TPR@1%FPR: TPR ≥" in decision.reason
    few = decide(look_of("p", "lira_online", keep[:8, :20], scores[:8, :20]), Schedule.of(64, 8, "lira_online"), 2.0)
    assert few.state == "open" and "no FPR level measurable yet" in few.reason


def gaussian_null(rng, n_audits, n_models, n_audit):
    return rng.standard_normal((n_audits, n_models, n_audit), dtype=np.float32)


def correlated_null(rng, n_audits, n_models, n_audit):
    """No leakage, but easy and hard canaries (offsets shared by all their models) and per-model offsets."""
    return (rng.standard_normal((n_audits, n_models, n_audit), dtype=np.float32)
            + 1.5 * rng.standard_normal((n_audits, 1, n_audit), dtype=np.float32)
            + 0.5 * rng.standard_normal((n_audits, n_models, 1), dtype=np.float32))


@pytest.mark.parametrize("null", [gaussian_null, correlated_null])
def test_under_no_leakage_at_most_5_percent_of_sequential_audits_end_with_leaks(null):
    keep = block_balanced_keep(64, 200, 0, 8)
    schedule = Schedule.of(64, 8, "lira_online")  # 8 looks, after every round
    # Only "leaks" stops an audit here, so every audit takes all 8 looks: the most chances for a false leak.
    ended = simulate_sequential(null, keep, schedule, None, n_audits=400, seed=1)
    assert ended["leaks"] <= 0.05 and ended["open"] + ended["leaks"] == 1.0, ended
    with_bounded = simulate_sequential(null, keep, schedule, 2.0, n_audits=200, seed=2)
    assert with_bounded["leaks"] <= 0.05 and with_bounded["bounded"] > 0.1, with_bounded


def test_a_real_leak_stops_early_and_a_strong_one_is_never_bounded():
    keep = block_balanced_keep(64, 200, 0, 8)
    schedule = Schedule.of(64, 8, "lira_online")

    def leaking(rng, n_audits, n_models, n_audit):
        return gaussian_null(rng, n_audits, n_models, n_audit) + 2.0 * keep

    ended = simulate_sequential(leaking, keep, schedule, 2.0, n_audits=200, seed=2)
    assert ended["leaks"] == 1.0 and ended["mean_models"] == 8.0
    # A leak of TPR/FPR about 3 at 1% FPR must not be called "bounded" under 2× (at most α of the time).
    tp = np.full((1000, 2), [30, 192])  # TPR 0.47% and 3% at 0.1% and 1% FPR, 6,400 pairs a side
    fp = np.full((1000, 2), [6, 64])
    _, bounded = decision_states(tp, 6400, fp, 6400, DECISION_FPRS, schedule.bound_alpha(), 2.0)
    assert not bounded.any()
    rng = np.random.default_rng(3)
    tp = rng.binomial(6400, [0.003, 0.02], size=(2000, 2))  # true TPR/FPR = 2 at each level: "bounded" is false
    fp = rng.binomial(6400, [0.001, 0.01], size=(2000, 2))
    _, bounded = decision_states(tp, 6400, fp, 6400, DECISION_FPRS, schedule.bound_alpha(), 2.0)
    assert bounded.any(axis=-1).mean() <= 0.05


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_an_until_decided_audit_stops_a_leaking_paradigm_early(tmp_path, capsys):
    out = tmp_path / "run"
    raw = {
        "name": "until-decided", "out_dir": str(out), "attacks": ["lira_online"],
        # An MLP that memorises its mislabeled canaries in seconds: LiRA finds most of them at 8 models.
        "audit": {"n_audit": 200, "canary": "mislabel"}, "model": {"arch": "mlp", "width": 128},
        "train": {"epochs": 15, "batch_size": 128, "optimizer": "adam", "lr": 0.01},
        "budget": {"until": "decided", "max_models": 32, "round": 8},
    }
    run = raypriv.audit(raw, use_ray=False, show_progress=False)
    assert run.keep.shape == (32, 200)  # the whole plan, in balanced blocks
    assert (run.keep[:8].sum(axis=0) == 4).all()
    assert len(run.models) == 8 and run.trained_now == 8  # stopped after the first round: 24 models never trained
    assert run.results["real"].n_models == 8
    sequential = json.loads((out / "sequential.json").read_text())
    assert sequential["paradigms"]["real"]["state"] == "leaks" and sequential["paradigms"]["real"]["models"] == 8
    assert sequential["spending"] == "bonferroni" and sequential["looks"] == [8, 16, 24, 32]
    assert "real: leaks after 8 of 32 models" in run.summary
    assert run.scores().shape[0] == 8 * 200
    # Rerunning resumes: the same decision from the stored models, nothing trained.
    again = raypriv.audit(raw, use_ray=False, show_progress=False)
    assert again.trained_now == 0 and again.summary.split("until decided")[1] == run.summary.split("until decided")[1]
    report = raypriv.load_run(out).report(str(tmp_path / "report"), n_boot=100)
    assert "leaks" in (tmp_path / "report" / "report.md").read_text() and report["html"]
    # status tells the stopped paradigm from an unfinished one: 8/32 stored, nothing missing.
    from raypriv.cli import main

    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "8/32 complete; stopped after 8 models: leaks" in shown and "missing" not in shown
