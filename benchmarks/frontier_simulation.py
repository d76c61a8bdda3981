"""How often the DP-SGD frontier verdict calls a paradigm "dominated" that no DP-SGD point truly dominates.

The simulation of ``tests/test_frontier.py`` (issue 24, item 3): 8 models x
200 canaries, K = 6 DP-SGD points, a candidate that truly leaks a little less
(0.98x) than every point and is truly less accurate (0.90 against 0.95), with
per-model leakage multipliers and offsets.  Each audit is judged three ways
on the same scores:

* ``two-way``: the report's rule (:func:`raypriv.report.verdicts.frontier_decision`,
  two-way bootstrap at the lowest measurable FPR, Welch t, Holm);
* ``fixed-models``: the same, with a bootstrap that holds the models fixed;
* ``before``: the rule before 2026-12-05, rebuilt here: TPR at 0.1% FPR, a
  bootstrap over audit samples only, a normal interval of the accuracy
  difference from the models' standard deviations, "dominated" when any
  point's accuracy interval lies at or below 0 and the paired TPR
  difference interval at or above 0 (no correction over the points).

Run: ``python benchmarks/frontier_simulation.py [AUDITS] [REPLICATES] [LEAK_RATIO]``
(defaults 1000, 1000, 0.98); it prints one line per rule: the share called
dominated, and without Holm for the new rule.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raypriv.metrics import bootstrap_roc_metrics, paired_bootstrap_difference  # noqa: E402
from raypriv.split import balanced_keep  # noqa: E402
from tests.test_frontier import N_CANARIES, N_MODELS, simulated_arms, simulated_audit  # noqa: E402

POINT_LEAK = 1.5


def dominated_before(rng: np.random.Generator, keep: np.ndarray, candidate_leak: float, n_boot: int) -> bool:
    """The pre-2026-12-05 frontier rule on one simulated audit."""
    scores, accuracies = simulated_arms(rng, keep, candidate_leak, POINT_LEAK)
    key = "tpr@0.1%fpr"
    weights = np.stack([np.bincount(rng.integers(0, N_CANARIES, N_CANARIES), minlength=N_CANARIES)
                        for _ in range(n_boot)])
    ones = np.ones((1, N_CANARIES))
    observed = [bootstrap_roc_metrics(keep, s, ones)[key][0] for s in scores]
    replicates = [bootstrap_roc_metrics(keep, s, weights)[key] for s in scores]
    mean, std = accuracies.mean(axis=1), accuracies.std(axis=1, ddof=1)
    for d in range(1, len(scores)):
        spread = 1.96 * np.sqrt(std[0] ** 2 / N_MODELS + std[d] ** 2 / N_MODELS)
        difference = paired_bootstrap_difference(observed[0], observed[d], replicates[0], replicates[d])
        if mean[0] - mean[d] + spread <= 0 and np.isfinite(difference["low"]) and difference["low"] >= 0:
            return True
    return False


def main(n_audits: int = 1000, n_boot: int = 1000, ratio: float = 0.98) -> None:
    keep = balanced_keep(N_MODELS, N_CANARIES, 0)
    candidate_leak = ratio * POINT_LEAK
    for rule in ("two-way", "fixed-models", "before"):
        rng = np.random.default_rng(99)
        started, dominated, unadjusted = time.time(), 0, 0
        for _ in range(n_audits):
            if rule == "before":
                dominated += dominated_before(rng, keep, candidate_leak, n_boot)
                continue
            decision = simulated_audit(rng, keep, candidate_leak, n_boot, model_variation=rule == "two-way")
            dominated += decision.kind == "dominated"
            unadjusted += min(test.p_dominated for test in decision.tests) <= decision.alpha
        extra = "" if rule == "before" else f", {unadjusted / n_audits:.2%} without Holm"
        print(f"{rule}: dominated in {dominated}/{n_audits} = {dominated / n_audits:.2%}{extra} "
              f"({n_boot} replicates, leak ratio {ratio}; {time.time() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main(int(arguments[0]) if arguments else 1000, int(arguments[1]) if len(arguments) > 1 else 1000,
         float(arguments[2]) if len(arguments) > 2 else 0.98)
