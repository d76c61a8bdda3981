"""The DP-SGD frontier: the dominated / not-dominated verdict, its inputs from a report, and the plot."""

import numpy as np

from raypriv.report.build import ParadigmResult, _judge_against_frontier
from raypriv.report.figures import privacy_utility_figure
from raypriv.report.verdicts import FrontierPoint, frontier_verdict, is_frontier
from raypriv.results import AttackMetrics, ParadigmMetrics


def point(label, acc, std=0.005, n=32, seconds=1.0, epsilon=None):
    return FrontierPoint(label, acc, std, n, seconds, epsilon)


def test_dominated_only_when_both_intervals_support_it():
    candidate = point("distill", 0.90, seconds=6.3)
    strong = [(point("dpsgd@eps4", 0.95, seconds=6.2, epsilon=4.0), 0.002, (0.01, 0.03))]
    kind, text = frontier_verdict(candidate, 0.02, strong, "TPR@0.1%FPR")
    assert kind == "dominated" and "DP-SGD (ε=4.00)" in text and "0.900 vs 0.950" in text and "6.3 s/model vs 6.2" in text
    # the TPR interval reaches below 0: "leaks at least as much" is not supported
    kind, text = frontier_verdict(candidate, 0.02, [(strong[0][0], 0.002, (-0.001, 0.03))], "TPR@0.1%FPR")
    assert kind == "not-dominated" and "intervals do not support dominance" in text
    # equally accurate within noise: not "no more accurate"
    close = [(point("dpsgd", 0.902, std=0.05, epsilon=8.0), 0.0, (0.01, 0.03))]
    assert frontier_verdict(candidate, 0.02, close, "TPR@0.1%FPR")[0] == "not-dominated"
    # more accurate than every DP-SGD point
    assert frontier_verdict(point("real", 0.99), 0.3, strong, "TPR@0.1%FPR") == (
        "not-dominated", "not dominated by DP-SGD (1 points); cost 1.0 s/model")


def test_the_most_private_dominating_point_is_named_and_clip_only_is_worded():
    candidate = point("coreset", 0.80)
    frontier = [(point("dpsgd@eps16", 0.95, epsilon=16.0), 0.0, (0.0, 0.02)),
                (point("dpsgd@eps1", 0.90, epsilon=1.0), 0.0, (0.0, 0.02)),
                (point("dpsgd@clip", 0.97), 0.0, (0.0, 0.02))]
    assert "DP-SGD (ε=1.00)" in frontier_verdict(candidate, 0.01, frontier, "TPR@0.1%FPR")[1]
    assert "clipping only" in frontier_verdict(candidate, 0.01, frontier[2:], "TPR@0.1%FPR")[1]
    assert is_frontier("dpsgd") and is_frontier("dpsgd@eps1") and not is_frontier("dpgen-marginals@eps1")


def test_report_judges_each_paradigm_against_its_runs_dpsgd_points():
    run = object()
    replicates = np.random.default_rng(0).normal(0, 0.001, 200)

    def result(paradigm, acc, tpr, epsilon=None):
        attack = AttackMetrics(auc=0.5, balanced_acc=0.5, tpr={"tpr@0.1%fpr": tpr, "tpr@1%fpr": tpr}, n_in=6400,
                               n_out=6400, eps_lower_bound=0.0)
        entry = ParadigmMetrics(test_acc=acc, test_acc_std=0.004, n_models=32, synth_seconds_mean=1.0,
                                train_seconds_mean=2.0, info={"epsilon": epsilon} if epsilon else {},
                                attacks={"lira_online": attack})
        return ParadigmResult(paradigm, run, paradigm, entry, None, {}, bootstrap={"tpr@0.1%fpr": tpr + replicates})

    results = [result("real", 0.98, 0.3), result("coreset", 0.90, 0.05),
               result("dpsgd@eps1", 0.92, 0.001, 1.0), result("dpsgd@eps8", 0.95, 0.002, 8.0)]
    _judge_against_frontier(results, "lira_online")
    by_name = {r.paradigm: r for r in results}
    assert by_name["coreset"].frontier_kind == "dominated" and "ε=1" in by_name["coreset"].frontier
    assert by_name["real"].frontier_kind == "not-dominated" and "3.0 s/model" in by_name["real"].frontier
    assert by_name["dpsgd@eps1"].frontier == ""  # the frontier is not judged against itself


def test_privacy_utility_plot_draws_the_frontier_line():
    points = [{"label": p, "acc": a, "acc_std": 0.01, "tpr": t, "low": t / 2, "high": t * 2, "frontier": p.startswith("dpsgd")}
              for p, a, t in (("real", 0.98, 0.3), ("dpsgd@eps1", 0.9, 0.002), ("dpsgd@eps8", 0.95, 0.01))]
    figure = privacy_utility_figure(points, "lira_online")
    lines = [line for line in figure.axes[0].get_lines() if line.get_label() == "DP-SGD frontier"]
    assert len(lines) == 1 and list(lines[0].get_xdata()) == [0.9, 0.95]


def test_dpsgd_clip_only_trains_without_noise_and_reports_no_epsilon(tmp_path):
    from tests.test_synth_dpsgd import _train

    model, context, private = _train(tmp_path, model_id=3, epsilon=None, epochs=1, batch_size=30)
    assert context.info["noise_multiplier"] == 0.0 and "epsilon" not in context.info and "delta" not in context.info
    assert context.info["steps"] == 4
