"""Coverage of the epsilon lower bound on mechanisms of known epsilon (the table in the README).

Each mechanism is exactly epsilon-DP for one pair: ``laplace``: member scores
Laplace(eps, 1), non-member Laplace(0, 1); ``rr``: randomized response, the
score is the membership bit kept with probability e^eps / (1 + e^eps);
``laplace+sample``: Laplace plus a per-sample offset N(0, 0.5^2) shared by the
sample's pairs (correlated pairs, as on a real audit), bounded with the
sample as the unit.  Run: ``python benchmarks/epsilon_coverage.py [REPS]``.
tests/test_epsilon_bound.py asserts the same coverage at 200 repetitions.
"""

from __future__ import annotations

import sys

import numpy as np

from raypriv.attacks.reference import best_threshold_epsilon, roc
from raypriv.metrics import epsilon_lower_bound_from_scores


def simulate(mechanism: str, epsilon: float, n_models: int, n_samples: int, rng: np.random.Generator):
    """``(is_in, scores, groups)`` of one audit of a mechanism of known ``epsilon``; half the pairs IN."""
    is_in = np.zeros((n_models, n_samples), dtype=bool)
    for column in range(n_samples):  # every sample IN for exactly half the models, as in raypriv's keep matrix
        is_in[rng.permutation(n_models)[: n_models // 2], column] = True
    groups = np.broadcast_to(np.arange(n_samples), is_in.shape)
    if mechanism == "rr":
        keep = rng.random(is_in.shape) < np.exp(epsilon) / (1.0 + np.exp(epsilon))
        return is_in, np.where(keep, is_in, ~is_in).astype(np.float64), groups
    scores = rng.laplace(np.where(is_in, epsilon, 0.0), 1.0)
    if mechanism == "laplace+sample":
        scores += rng.normal(0.0, 0.5, size=n_samples)[None, :]
    return is_in, scores, groups


def coverage(mechanism: str, epsilon: float, n_models: int, n_samples: int, reps: int, seed: int = 0, old: bool = False):
    """Share of repetitions whose bound exceeds ``epsilon``, and the mean bound (and the old best-threshold bound's)."""
    rng = np.random.default_rng([seed, int(epsilon * 100), n_models, n_samples, len(mechanism)])
    per_sample = mechanism == "laplace+sample"
    bounds, old_bounds = [], []
    for rep in range(reps):
        is_in, scores, groups = simulate(mechanism, epsilon, n_models, n_samples, rng)
        bounds.append(epsilon_lower_bound_from_scores(is_in, scores, groups=groups if per_sample else None, seed=rep))
        if old:
            fpr, tpr = roc(is_in, scores)
            old_bounds.append(best_threshold_epsilon(fpr, tpr, int(is_in.sum()), int((~is_in).sum())))
    bounds = np.array(bounds)
    result = {"exceed": float(np.mean(bounds > epsilon)), "mean": float(bounds.mean())}
    if old:
        result["old_exceed"] = float(np.mean(np.array(old_bounds) > epsilon))
        result["old_mean"] = float(np.mean(old_bounds))
    return result


CASES = [
    (mechanism, epsilon, n_models, n_samples)
    for mechanism in ("laplace", "rr", "laplace+sample")
    for epsilon in (1.0, 2.0, 4.0)
    for n_models, n_samples in ((16, 100), (64, 200))
]


def main(reps: int = 200) -> None:
    print("| mechanism | true ε | models × samples | bound > ε | mean bound | old bound > ε | old mean |")
    print("|---|---|---|---|---|---|---|")
    for mechanism, epsilon, n_models, n_samples in CASES:
        r = coverage(mechanism, epsilon, n_models, n_samples, reps, old=True)
        print(f"| {mechanism} | {epsilon:g} | {n_models} × {n_samples} | {r['exceed']:.1%} | {r['mean']:.2f} | "
              f"{r['old_exceed']:.1%} | {r['old_mean']:.2f} |", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
