"""Audits that run until they decide: bad budgets, balanced keep blocks, the sequential rule's validity, end to end."""

import json

import numpy as np
import pytest

import raypriv
from raypriv.config import load as load_config
from raypriv.errors import RayprivError
from raypriv.metrics import bootstrap_tpr_at_fpr, two_way_bootstrap_weights
from raypriv.report.verdicts import FRONTIER_ALPHA
from raypriv.run.fingerprints import protocol_hash
from raypriv.sequential import (
    DECISION_FPRS,
    ArmEvidence,
    Schedule,
    SequentialAudit,
    decide,
    decision_states,
    frontier_replicates,
    look_of,
    simulate_sequential,
    threshold_counts,
    tpr_replicates,
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


# ---------------------------------------------------------------- the frontier rule (issue 24, items 3 and 5)
#
# Simulated arms over one block-balanced keep matrix: a score is IN x leak x (the model's leak multiplier) x (the
# canary's susceptibility) + a model offset + a canary offset (shared by every arm: the same canaries) + noise,
# as tests/test_frontier.py draws them; accuracies are per model.  The whole plan is drawn at once and each look
# reads its first rows, as the driver's looks read the first models.


def frontier_scores(rng, keep, leaks, accuracies, model_sd=0.3):
    n_models, n_audit = keep.shape
    susceptibility, canary_offset = rng.exponential(1.0, n_audit), rng.normal(0.0, 0.5, n_audit)
    arms = []
    for leak, accuracy in zip(leaks, accuracies, strict=True):
        multiplier = np.exp(rng.normal(0.0, model_sd, (n_models, 1)))
        scores = (keep * leak * multiplier * susceptibility + rng.normal(0.0, 0.3, (n_models, 1)) + canary_offset
                  + rng.normal(0.0, 1.0, keep.shape))
        arms.append((scores, rng.normal(accuracy, 0.01, n_models)))
    return arms


def run_sequential(keep, schedule, arms, bounded_multiple=2.0, seed=0):
    """A sequential audit of ``arms`` (``{paradigm: (scores, accuracies, epsilon)}``) with SequentialAudit's own
    bookkeeping: each round's look gets the evidence of exactly the paradigms it trains."""
    audit = SequentialAudit(list(arms), schedule, "lira_online", bounded_multiple, seed=seed)
    trained = dict.fromkeys(arms, 0)
    for stop in range(schedule.round, schedule.max_models + 1, schedule.round):
        training = audit.training()
        if not training:
            break
        for paradigm in training:
            trained[paradigm] = stop
        if stop in schedule.looks:
            audit.look(stop, keep, {p: ArmEvidence(arms[p][0][:stop], arms[p][1][:stop], 2.0, epsilon=arms[p][2],
                                                   delta=1e-5, accountant="rdp") for p in training})
        else:
            audit.wait(stop)
    assert trained == audit.models_used()  # what trained is what the decisions say was used
    return audit


def test_frontier_spending_and_replicates():
    schedule = Schedule.of(64, 8, "lira_online")  # 8 looks
    assert schedule.frontier_alpha == pytest.approx(FRONTIER_ALPHA / 8)
    assert frontier_replicates(schedule.frontier_alpha) == 6400  # 20 expected beyond 0.025 / 8
    assert frontier_replicates(0.025) == 1000 and frontier_replicates(0.025 / 64) == 20_000  # floor and cap
    with pytest.raises(ValueError):
        frontier_replicates(0.0)
    # The blocked bootstrap is the unblocked one, replicate for replicate.
    rng = np.random.default_rng(0)
    keep = block_balanced_keep(16, 30, 0, 8)
    scores = rng.normal(size=keep.shape) + keep
    model_weights, sample_weights = two_way_bootstrap_weights(16, 30, 50, rng)
    np.testing.assert_array_equal(tpr_replicates(keep, scores, sample_weights, 0.05, model_weights, block_elements=1000),
                                  bootstrap_tpr_at_fpr(keep, scores, sample_weights, 0.05, model_weights))


def test_a_less_accurate_leakier_paradigm_stops_as_dominated_at_the_first_look():
    # 40 canaries: 160 OUT pairs at 8 models, too few for the leak rule's 1% FPR (500 needed), so only the frontier
    # (which reads up to 10% FPR: 5% here) can decide; the DP-SGD point's own question stays open to the end.
    keep = block_balanced_keep(24, 40, 0, 8)
    schedule = Schedule.of(24, 8, "lira_online")
    (cand, cand_acc), (point, point_acc) = frontier_scores(np.random.default_rng(1), keep, [3.0, 0.5], [0.90, 0.95])
    audit = run_sequential(keep, schedule, {"coreset": (cand, cand_acc, None), "dpsgd": (point, point_acc, 8.0)})
    coreset, dpsgd = audit.decisions["coreset"], audit.decisions["dpsgd"]
    assert coreset.state == "dominated" and coreset.models == 8 and coreset.fpr == 0.05
    assert coreset.reason.startswith("dominated by DP-SGD (ε=8.00, δ=1.0e-05, rdp): no more accurate (")
    assert "TPR@5%FPR" in coreset.reason and "98.3% CI" in coreset.reason  # the intervals at the look's share
    assert "one-sided α=0.025 spent over 3 looks: 0.0083 at this one, 2,400 bootstrap replicates" in coreset.reason
    assert dpsgd.state == "open" and audit.models_used() == {"coreset": 8, "dpsgd": 24}
    record = audit.to_json()
    assert record["paradigms"]["coreset"]["state"] == "dominated" and record["paradigms"]["coreset"]["models"] == 8
    test = record["paradigms"]["coreset"]["looks"][0]["frontier"]
    assert test["kind"] == "dominated" and test["alpha"] == pytest.approx(0.025 / 3) and test["n_boot"] == 2400
    assert test["points"]["dpsgd"]["dominates"] and test["points"]["dpsgd"]["p_dominated"] <= 0.025 / 3
    assert record["frontier"]["points"] == ["dpsgd"] and record["frontier"]["alpha_per_look"] == pytest.approx(0.025 / 3)
    assert "coreset: dominated after 8 of 24 models: dominated by DP-SGD" in audit.summary()
    # The same evidence in a run without DP-SGD points: no frontier, so nothing decides coreset.
    alone = run_sequential(keep, schedule, {"coreset": (cand, cand_acc, None)})
    assert alone.decisions["coreset"].state == "open" and "frontier" not in alone.to_json()


def test_nothing_decidable_stays_open_to_max_models_and_a_decided_point_keeps_training():
    # coreset is the twin of dpsgd@b (same accuracy, no leak): nothing can separate them, so coreset is open at
    # every look.  dpsgd@a leaks plainly and is decided at the first look (125 canaries: 500 OUT pairs, 1% FPR
    # measurable), but it is a frontier point and a candidate is open, so it trains to max_models too.
    keep = block_balanced_keep(24, 125, 0, 8)
    schedule = Schedule.of(24, 8, "lira_online")
    rng = np.random.default_rng(2)
    (cand, cand_acc), (a, a_acc), (b, b_acc) = frontier_scores(rng, keep, [0.0, 4.0, 0.0], [0.90, 0.95, 0.90])
    arms = {"coreset": (cand, cand_acc, None), "dpsgd@a": (a, a_acc, 8.0), "dpsgd@b": (b, b_acc, 1.0)}
    audit = run_sequential(keep, schedule, arms)
    assert audit.models_used() == {"coreset": 24, "dpsgd@a": 24, "dpsgd@b": 24}
    assert audit.decisions["coreset"].state == "open" and audit.decisions["dpsgd@b"].state == "open"
    assert "against the DP-SGD frontier: undecided at one-sided α=0.0083" in audit.decisions["coreset"].reason
    looks = audit.to_json()["paradigms"]
    assert [look["state"] for look in looks["dpsgd@a"]["looks"]] == ["leaks"] * 3  # decided, and kept training
    assert [look["kept_for_frontier"] for look in looks["dpsgd@a"]["looks"]] == [True, True, False]  # 24: the end
    assert [look["frontier"]["kind"] for look in looks["coreset"]["looks"]] == ["undecided"] * 3
    assert audit.decisions["dpsgd@a"].state == "leaks" and audit.decisions["dpsgd@a"].models == 24
    assert audit.progress(["dpsgd@a"]) == {"dpsgd@a": ("leaks", audit.decisions["dpsgd@a"].reason)}  # stopped at 24
    # Without a candidate, the same point stops at its first decided look.
    alone = run_sequential(keep, schedule, {"dpsgd@a": arms["dpsgd@a"], "dpsgd@b": arms["dpsgd@b"]})
    assert alone.models_used() == {"dpsgd@a": 8, "dpsgd@b": 24} and alone.decisions["dpsgd@a"].state == "leaks"


def test_a_decided_point_shows_as_open_in_progress_while_it_trains_for_a_candidate():
    keep = block_balanced_keep(24, 125, 0, 8)
    schedule = Schedule.of(24, 8, "lira_online")
    arms = frontier_scores(np.random.default_rng(2), keep, [0.0, 4.0, 0.0], [0.90, 0.95, 0.90])  # as above
    audit = SequentialAudit(["coreset", "dpsgd@a", "dpsgd@b"], schedule, "lira_online", 2.0)
    audit.look(8, keep, {p: ArmEvidence(scores[:8], accuracies[:8])
                         for p, (scores, accuracies) in zip(["coreset", "dpsgd@a", "dpsgd@b"], arms, strict=True)})
    assert audit.decisions["dpsgd@a"].state == "leaks" and audit.training() == ["coreset", "dpsgd@a", "dpsgd@b"]
    state, reason = audit.progress(["dpsgd@a"])["dpsgd@a"]
    assert state == "open"
    assert reason.startswith("leaks at this look, but kept training: the DP-SGD frontier is still open for coreset")
    # No level measurable (8 models x 5 canaries: 20 OUT pairs): accuracy alone, and strict JSON without NaN.
    tiny = SequentialAudit(["coreset", "dpsgd"], schedule, "lira_online", 2.0)
    tiny.look(8, keep[:, :5], {"coreset": ArmEvidence(arms[0][0][:8, :5], arms[0][1][:8]),
                               "dpsgd": ArmEvidence(arms[2][0][:8, :5], arms[2][1][:8])})
    test = tiny.to_json()["paradigms"]["coreset"]["looks"][0]["frontier"]
    assert test["fpr"] is None and test["points"]["dpsgd"]["p_dominated"] is None and test["kind"] == "undecided"
    json.dumps(tiny.to_json(), allow_nan=False)
    with pytest.raises(ValueError, match="no evidence for"):
        SequentialAudit(["coreset", "dpsgd"], schedule, "lira_online", 2.0).look(8, keep, {"coreset": ArmEvidence(
            arms[0][0][:8], arms[0][1][:8])})


def test_under_the_null_a_sequential_audit_calls_a_less_leaky_paradigm_dominated_at_most_2_5_percent():
    # The least favourable case for a false "dominated" (as tests/test_frontier.py): the candidate is truly less
    # accurate (so the accuracy half always passes) and leaks a little less (0.98x) than the one DP-SGD point
    # (K = 1: no Holm to help), with large per-model leak multipliers, over 3 looks.  Only the frontier can
    # decide here (160 to 480 OUT pairs: the leak rule measures nothing).
    keep = block_balanced_keep(24, 40, 0, 8)
    schedule = Schedule.of(24, 8, "lira_online")
    rng = np.random.default_rng(11)
    n_audits, dominated, p_values, kinds = 60, 0, [], []
    for index in range(n_audits):
        (cand, cand_acc), (point, point_acc) = frontier_scores(rng, keep, [0.98 * 1.5, 1.5], [0.90, 0.95], 1.0)
        audit = run_sequential(keep, schedule, {"coreset": (cand, cand_acc, None), "dpsgd": (point, point_acc, 8.0)},
                               seed=index)
        dominated += audit.decisions["coreset"].state == "dominated"
        for look in audit.to_json()["paradigms"]["coreset"]["looks"]:
            assert look["frontier"]["alpha"] == pytest.approx(FRONTIER_ALPHA / 3)
            p_values.append(look["frontier"]["points"]["dpsgd"]["p_dominated"])
            kinds.append(look["frontier"]["kind"])
    assert dominated <= 0.025 * n_audits
    # Each look's call is the test at the spent share: "dominated" exactly where p <= 0.025 / 3 (K = 1).
    assert [kind == "dominated" for kind in kinds] == [p <= FRONTIER_ALPHA / 3 for p in p_values]
    assert len(p_values) >= 2.5 * n_audits  # most audits took every look: the most chances for a false call


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


@pytest.mark.slow
def test_an_until_decided_audit_decides_a_paradigm_against_the_dpsgd_frontier(tmp_path):
    # 40 canaries: the leak rule cannot measure at 16 or fewer models (under 500 OUT pairs), so "real" can only be
    # decided against the frontier, which reads 5% FPR at 8 models.  DP-SGD at ε = 1 after one epoch (for speed) is
    # far less accurate than real training: real is not dominated at the first look and stops; dpsgd's own question stays
    # open, and it trains on alone to max_models.
    out = tmp_path / "run"
    raw = {
        "name": "until-decided-frontier", "out_dir": str(out), "attacks": ["lira_online"],
        "paradigms": ["real", "dpsgd"], "paradigm_options": {"dpsgd": {"epsilon": 1.0, "epochs": 1, "batch_size": 256}},
        "audit": {"n_audit": 40, "canary": "mislabel"}, "model": {"arch": "mlp", "width": 64},
        "train": {"epochs": 3, "batch_size": 128, "optimizer": "adam", "lr": 0.01},
        "budget": {"until": "decided", "max_models": 16, "round": 8},
    }
    run = raypriv.audit(raw, use_ray=False, show_progress=False)
    sequential = json.loads((out / "sequential.json").read_text())
    real, dpsgd = sequential["paradigms"]["real"], sequential["paradigms"]["dpsgd"]
    assert real["state"] == "not-dominated" and real["models"] == 8, real
    assert real["reason"].startswith("not dominated by DP-SGD (1 point): more accurate than DP-SGD (ε=")
    assert real["looks"][0]["frontier"]["n_boot"] == 1600 and real["looks"][0]["frontier"]["fpr"] == 0.05
    assert dpsgd["models"] == 16 and sequential["frontier"]["points"] == ["dpsgd"]
    assert run.results["real"].n_models == 8 and run.results["dpsgd"].n_models == 16
    assert "real: not-dominated after 8 of 16 models: not dominated by DP-SGD" in run.summary
    # The report judges it again from the models each arm has (8 against 16).
    raypriv.load_run(out).report(str(tmp_path / "report"), n_boot=200)
    assert "not dominated by DP-SGD" in (tmp_path / "report" / "report.md").read_text()
