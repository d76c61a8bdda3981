"""Coverage and tightness of the ε lower bound on simulated audits of known ε (benchmarks/RESULTS.md).

Each repetition simulates one audit: ``M`` models × ``N`` canaries, raypriv's balanced keep matrix (each canary
IN for exactly half the models, which half at random), one attack score per (model, canary) pair from a
mechanism whose ε is known:

* ``laplace``: score ``Laplace(ε·b, 1)`` for membership bit ``b``: exactly ε-DP per pair;
* ``rr``: randomized response, the score is ``b`` kept with probability ``e^ε / (1 + e^ε)``: exactly ε-DP;
* ``heterogeneous``: canary ``c`` has its own effect ``ε_c ~ U(0, ε)`` and an offset ``u_c ~ N(0, 1)`` shared by all
  its pairs (easy and hard canaries; correlated pairs): ``Laplace(u_c + ε_c·b, 1)``, at most ε-DP;
* ``sparse``: 10% of the canaries vulnerable (``Laplace(ε·b, 1)``), the rest ``Laplace(0, 1)``: ε-DP.

For each it reports how often the bound exceeds the true ε (it may in at most 5%), its mean, and, on the same
scores in the same run, an independent implementation of google-deepmind/jax_privacy's all-pairs bound
(``CanaryScoreAuditor.epsilon_clopper_pearson``, its defaults: one-sided, Bonferroni over the thresholds of the
ROC's convex hull, Clopper–Pearson at ``α / 2H`` on FNR and on FPR), written here from its description.  With
``--one-run-reps R`` the first ``R`` repetitions also get the one-run bounds of every model's scores (each
model's guesses use only its own scores, as for the ``loss`` attack).

Run: ``python benchmarks/epsilon_coverage.py [--reps 200] [--models 64] [--canaries 500] [--one-run-reps 20]``;
``--cost 1024x50000`` instead times ``roc_metrics``, the bound and the one-run bounds on random float32 scores of
that size.
tests/test_epsilon_bound.py checks the same on fewer, smaller repetitions.
"""

from __future__ import annotations

import argparse
import datetime
import time

import numpy as np
from scipy.stats import beta

from raypriv.epsilon import one_run_bounds, pair_epsilon_bound
from raypriv.metrics import audit_epsilon_lower_bound, roc_metrics

SETTINGS = {"laplace": 2.0, "rr": 1.0, "heterogeneous": 2.0, "sparse": 2.0}  # setting -> true ε
SPARSE_SHARE = 0.1


def balanced_keep(n_models: int, n_canaries: int, rng: np.random.Generator) -> np.ndarray:
    """bool ``(M, N)``: each column IN for exactly ``M // 2`` models, a uniform random half, columns independent."""
    return np.argsort(rng.random((n_models, n_canaries)), axis=0) < n_models // 2


def simulate(setting: str, epsilon: float, n_models: int, n_canaries: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(is_in (M, N) bool, scores (M, N) float64)`` of one simulated audit (module docstring)."""
    keep = balanced_keep(n_models, n_canaries, rng)
    if setting == "laplace":
        return keep, rng.laplace(np.where(keep, epsilon, 0.0), 1.0)
    if setting == "rr":
        truthful = rng.random(keep.shape) < np.exp(epsilon) / (1.0 + np.exp(epsilon))
        return keep, np.where(truthful, keep, ~keep).astype(np.float64)
    if setting == "heterogeneous":
        effect, offset = rng.uniform(0.0, epsilon, n_canaries), rng.normal(0.0, 1.0, n_canaries)
        return keep, rng.laplace(offset + np.where(keep, effect, 0.0), 1.0)
    if setting == "sparse":
        effect = np.where(rng.random(n_canaries) < SPARSE_SHARE, epsilon, 0.0)
        return keep, rng.laplace(np.where(keep, effect, 0.0), 1.0)
    raise ValueError(f"unknown setting {setting!r}; choose one of {sorted(SETTINGS)}")


def convex_hull_vertices(points: np.ndarray) -> np.ndarray:
    """Indices of the points (sorted by x) left after repeatedly dropping every point on or under the chord of its
    neighbours: the ROC's upper hull in jax_privacy's (FN count, TN count) coordinates."""
    index = np.arange(len(points))
    while len(index) > 2:
        step = np.diff(points[index], axis=0)
        dominated = step[:-1, 1] * step[1:, 0] - step[1:, 1] * step[:-1, 0] <= 0
        if not dominated.any():
            break
        index = index[np.r_[True, ~dominated, True]]
    return index


def jax_privacy_bound(is_in: np.ndarray, scores: np.ndarray, significance: float = 0.05) -> float:
    """jax_privacy's ``epsilon_clopper_pearson(significance, delta=0, one_sided=True)`` with Bonferroni, rewritten.

    Thresholds: every distinct score and +inf; IN when ``score >= threshold``.  The (FN, TN) counts of the
    thresholds on the hull; with ``H`` of them, Clopper–Pearson upper bounds on FNR and FPR at ``significance / 2H``
    each, and the best ``log(TPR_low / FPR_high)`` over the hull, floored at 0."""
    is_in, scores = np.asarray(is_in, bool).ravel(), np.asarray(scores, np.float64).ravel()
    members, others = np.sort(scores[is_in]), np.sort(scores[~is_in])
    thresholds = np.concatenate([np.union1d(members, others), [np.inf]])
    fn = np.searchsorted(members, thresholds, side="left")
    tn = np.searchsorted(others, thresholds, side="left")
    hull = convex_hull_vertices(np.stack([fn, tn], axis=1))
    fn, tn = fn[hull], tn[hull]
    n_pos, n_neg = len(members), len(others)
    level = significance / len(hull) / 2.0

    def upper(k: np.ndarray, n: int) -> np.ndarray:
        return np.where(k < n, beta.ppf(1.0 - level, k + 1, np.maximum(n - k, 1)), 1.0)

    tpr_low, fpr_high = 1.0 - upper(fn, n_pos), upper(n_neg - tn, n_neg)
    usable = tpr_low > 0
    if not usable.any():
        return 0.0
    return max(0.0, float(np.max(np.log(tpr_low[usable]) - np.log(fpr_high[usable]))))


def run_setting(setting: str, reps: int, n_models: int, n_canaries: int, one_run_reps: int = 0,
                seed: int = 0) -> dict[str, float]:
    """Exceedance and mean of raypriv's bound and of jax_privacy's on ``reps`` audits (and the one-run bounds')."""
    epsilon = SETTINGS[setting]
    rng = np.random.default_rng([seed, sorted(SETTINGS).index(setting), n_models, n_canaries])
    ours, theirs, one_run, gdp = [], [], [], []
    for rep in range(reps):
        keep, scores = simulate(setting, epsilon, n_models, n_canaries, rng)
        ours.append(pair_epsilon_bound(keep, scores))
        theirs.append(jax_privacy_bound(keep, scores))
        if rep < one_run_reps:
            bounds = one_run_bounds(keep, scores)
            one_run.append(bounds.eps_one_run)
            gdp.append(bounds.eps_gdp_bound)
    ours, theirs = np.array(ours), np.array(theirs)
    result = {"epsilon": epsilon, "exceed": float(np.mean(ours > epsilon)), "mean": float(ours.mean()),
              "jax_exceed": float(np.mean(theirs > epsilon)), "jax_mean": float(theirs.mean()),
              "paired_min": float(np.min(ours - theirs)), "wins": float(np.mean(ours >= theirs))}
    print(f"  {setting}: the bound minus jax_privacy's, smallest over the repetitions: {result['paired_min']:+.3f}",
          flush=True)
    if one_run:
        result.update(one_run_mean=float(np.mean(one_run)), one_run_exceed=float(np.mean(np.array(one_run) > epsilon)),
                      gdp_mean=float(np.mean(gdp)), one_run_reps=len(one_run))
    return result


def cost(n_models: int, n_canaries: int) -> None:
    """Seconds of roc_metrics, the all-pairs bound and the one-run bounds on ``(M, N)`` random float32 scores."""
    rng = np.random.default_rng(0)
    keep = balanced_keep(n_models, n_canaries, rng)
    scores = (rng.standard_normal(keep.shape, dtype=np.float32) + np.float32(0.5) * keep).astype(np.float32)
    base = None
    for name, run in (("roc_metrics", lambda: roc_metrics(keep, scores)),
                      ("eps_lower_bound (all pairs)", lambda: audit_epsilon_lower_bound(keep, scores)),
                      ("one-run bounds (loss only)", lambda: one_run_bounds(keep, scores))):
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
        base = base or seconds
        print(f"| {name} | {seconds:.1f} | {seconds / base:.2f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--models", type=int, default=64)
    parser.add_argument("--canaries", type=int, default=500)
    parser.add_argument("--one-run-reps", type=int, default=0)
    parser.add_argument("--cost", metavar="MxN", help="time the bounds at this size instead")
    args = parser.parse_args()
    if args.cost:
        cost(*(int(v) for v in args.cost.split("x")))
        return
    start = time.perf_counter()
    print(f"{args.reps} repetitions per setting, {args.models} models × {args.canaries} canaries, "
          f"{datetime.date.today().isoformat()}")
    print("| setting | true ε | bound > ε | mean bound | jax_privacy > ε | jax_privacy mean | ratio | "
          "reps bound ≥ jax_privacy | one-run (median over models) mean, > ε | GDP ε (δ=1e-5) mean |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for setting in SETTINGS:
        r = run_setting(setting, args.reps, args.models, args.canaries, args.one_run_reps)
        one = (f"{r['one_run_mean']:.2f}, {r['one_run_exceed']:.0%} ({r['one_run_reps']} reps) | {r['gdp_mean']:.2f}"
               if "one_run_mean" in r else "– | –")
        print(f"| {setting} | {r['epsilon']:g} | {r['exceed']:.1%} | {r['mean']:.3f} | {r['jax_exceed']:.1%} | "
              f"{r['jax_mean']:.3f} | {r['mean'] / max(r['jax_mean'], 1e-12):.3f} | {r['wins']:.0%} | {one} |", flush=True)
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
