"""Empirical ε lower bounds: the all-pairs bound metrics.json reports, and two one-run bounds beside it.

Three numbers, each a 95% lower bound on the ε of an (ε, δ)-DP training that could have produced the scores:

* ``eps_lower_bound`` (:func:`pair_epsilon_bound`, every attack): all ``M x N`` (model, canary) pairs of an
  attack, a fixed grid of thresholds, a Bonferroni correction over the grid.
* ``eps_one_run`` (:func:`one_run_bounds`, the ``loss`` attack only): Steinke, Nasr and Jagielski (2023),
  "Privacy auditing with one (1) training run", on each model alone; the median over models.
* ``eps_gdp_bound`` and ``gdp_mu_bound`` (same function): Mahloujifar, Melis and Chaudhuri (2024), "Auditing
  f-differential privacy in one run", for a Gaussian trade-off curve; the median over models of the μ it
  refutes, and that μ's ε at the paradigm's δ (10⁻⁵ when it reports none: μ-GDP with μ > 0 is never (ε, 0)-DP).

**The all-pairs bound.**  DP bounds every test of a pair's membership: ``TPR <= e^ε FPR + δ`` and
``TNR <= e^ε FNR + δ`` (the second is the first for the test "OUT if the score is low").  The thresholds form a
fixed grid, fixed before the scores are seen: for the first inequality, "IN if the score exceeds the
``(k+1)``-th highest OUT score" for each count ``k`` of :func:`count_grid` (``n_out``); for the second, "OUT if
it is below the ``(k+1)``-th lowest IN score" for each ``k`` of ``count_grid(n_in)``.  Each such threshold is a
function of one side's scores only, so (pairs independent, scores continuous) its FPR is exactly the ``(k+1)``-th
smallest of ``n_out`` uniforms, ``Beta(k + 1, n_out - k)``, and its TP count, given the threshold,
``Binomial(n_in, TPR)`` with ``TPR <= e^ε FPR + δ``.  So ``TP`` is stochastically below the mixture
``Binomial(n_in, e^ε U + δ)``, ``U ~ Beta(k + 1, n_out - k)``, and :func:`mixture_epsilon` rejects ε when the
observed ``TP`` is in that mixture's upper ``α / H`` tail (``H``: the grid points of both inequalities,
Bonferroni).  One exact test per threshold of both count sources (FP and TP), where jax_privacy's
``CanaryScoreAuditor.epsilon_clopper_pearson`` bounds FPR and TPR apart (Clopper–Pearson at ``α / 2H`` each) and
takes ``H`` as the vertices of the observed ROC's convex hull; the joint test is 20–40% narrower, which more than
pays for the fixed grid (``benchmarks/epsilon_coverage.py``).  No split and no seed: the value is a function of
the scores.  Under ties the operating point at grid count ``k`` may have ``N < k`` OUT pairs above it and the
test uses ``N``: exact for continuous scores (``N = k``) and for a threshold on a fixed atom (randomized response:
``N`` binomial at a fixed threshold); with many small atoms it is the approximation jax_privacy's hull count
also makes.

**Why pooling pairs is valid, and what it does not cover.**  The pairs are not independent trials: one canary's
``M`` pairs share its difficulty, one model's ``N`` pairs share its training run, and LiRA and RMIA score a target
against the other models.  The argument rests on raypriv's keep matrix (:func:`raypriv.split.make_audit_split`,
whole or in balanced blocks of models): each canary is IN for exactly half the models, which half drawn at random,
independently per canary.

* *Per-canary difficulty* cancels: every canary contributes ``M / 2`` IN and ``M / 2`` OUT pairs, so the pooled
  rates are the averages of the per-canary rates with equal weights, and if every canary's test satisfies
  ``tpr_c <= e^ε fpr_c + δ`` so does the average.  Given the canaries, a count is a sum of independent
  binomials, with no more variance than the binomial the test assumes.  An unbalanced design breaks this (an easy
  canary IN more often than OUT inflates TPR with no leak): pass ``groups`` to
  :func:`raypriv.metrics.epsilon_lower_bound_from_scores` to have the balance checked.
* *Per-model effects* (one model's scores all shifted) and *shared shadows* are not covered by the argument: they
  correlate pairs across canaries, so the counts may vary more than binomially.  The coverage benchmark measures
  the bound on simulated mechanisms with per-canary offsets and sparse vulnerability; that, not a proof, is the
  evidence for those.
* Each row of the keep matrix is i.i.d. Bernoulli(1/2) (columns independent, each a uniform half), which is the
  design the one-run bounds need for each model.  The columns' exact balance means that all *other* models' keep
  bits determine a pair's own; an attack that used that count would break every bound here.  raypriv's default
  LiRA (``carlini-2022``) and RMIA use equal IN and OUT shadow groups and do not; the ``aerni-2024`` LiRA preset
  uses every other model, so its groups differ in size by one with the target's bit, and only the estimation
  noise of its means and variances (not the counts themselves) enters its score.

**The one-run bounds.**  For one model and the ``loss`` attack (its score uses that model's outputs only, as the
theorems require): guess IN for the ``r`` highest-scoring canaries, ``r`` from a fixed grid (:data:`GUESS_SHARES`
of ``N``; Bonferroni over it), and count the correct guesses.  Steinke et al.'s Theorem 3.1 bounds that count by
``Binomial(r, e^ε / (1 + e^ε))`` plus a δ term; Mahloujifar et al.'s recursion bounds it for μ-GDP.  Departures
from the papers: one-sided guesses only (no abstaining OUT guesses, as in jax_privacy's implementation); the f-DP
recursion follows jax_privacy's transcription of the paper's "audit with cap" (``_epsilon_one_run_fdp``),
searched over μ instead of ε; and the *median over models*, each model's bound at ``1 - α/2``: the median exceeds
the truth only if half the models' bounds do, which by Markov's inequality has probability at most ``α`` whatever
the dependence between models (a maximum over models would need ``α / M`` each).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
from scipy.special import log_ndtr, ndtr, ndtri
from scipy.stats import beta, binom

from raypriv.sorting import flat_pairs, run_ends, sorted_keys

GRID_POINTS = 24  # thresholds per inequality, at most (rounding merges a few small counts)
QUADRATURE_BINS = 160  # probability-scale bins of the Beta mixture, dense towards its upper tail
TAIL_MASS = 1e-9  # the Beta's top probability mass, counted as certain rejection (conservative)
EPS_MAX = 40.0  # the bisection's ceiling: above log(n) + a few for any feasible audit
BISECTION_STEPS = 36
GUESS_SHARES = tuple(2.0 ** -j for j in range(1, 8))  # one-run guesses: the top N/2, N/4, ..., N/128 canaries
GDP_DEFAULT_DELTA = 1e-5  # eps_gdp_bound's δ for a paradigm that reports none
ONE_RUN_ATTACK = "loss"  # the one attack whose guesses use only the target model's outputs


def count_grid(n: int) -> np.ndarray:
    """int64 ``(K,)``: the grid's counts for ``n`` reference pairs: 0, then ``GRID_POINTS - 1`` geometric steps 1..n."""
    if n <= 0:
        return np.zeros(1, dtype=np.int64)
    steps = np.round(np.geomspace(1, n, GRID_POINTS - 1)).astype(np.int64)
    return np.unique(np.concatenate([[0], steps]))


# ------------------------------------------------------------------------ grid counts


@dataclass
class GridWalk:
    """The grid's operating points, fed the ROC operating points in descending score order, one slice at a time.

    ``add(tp, fp)`` takes a slice's cumulative ``(tp, fp)`` (global counts, after every pair scoring higher);
    :meth:`merge` appends the walk of a later slice (lower scores).  For each FP grid count ``k`` it keeps the
    last operating point with ``fp <= k``; for each FN grid count ``k`` the first with ``n_in - tp <= k``.  Only
    counts at operating points enter, so any cut of the walk into slices gives the same :meth:`counts`.
    """

    n_in: int
    n_out: int
    fp_grid: np.ndarray = field(init=False)
    fn_grid: np.ndarray = field(init=False)
    low_tp: np.ndarray = field(init=False)  # per FP grid count: tp of the last point with fp <= k
    low_fp: np.ndarray = field(init=False)  # ... and its fp
    high_tp: np.ndarray = field(init=False)  # per FN grid count: tp of the first point with n_in - tp <= k
    high_fp: np.ndarray = field(init=False)
    high_set: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.fp_grid, self.fn_grid = count_grid(self.n_out), count_grid(self.n_in)
        self.low_tp = np.zeros(len(self.fp_grid), dtype=np.int64)  # the start point (0, 0): nothing guessed IN
        self.low_fp = np.zeros(len(self.fp_grid), dtype=np.int64)
        self.high_tp = np.zeros(len(self.fn_grid), dtype=np.int64)
        self.high_fp = np.zeros(len(self.fn_grid), dtype=np.int64)
        self.high_set = self.fn_grid >= self.n_in  # the start point already has n_in - 0 <= k

    def add(self, tp: np.ndarray, fp: np.ndarray) -> GridWalk:
        """One slice of operating points: int ``(P,)`` cumulative counts, descending scores."""
        tp, fp = np.asarray(tp, dtype=np.int64), np.asarray(fp, dtype=np.int64)
        if len(tp) == 0:
            return self
        last = np.searchsorted(fp, self.fp_grid, side="right") - 1
        found, at = last >= 0, np.maximum(last, 0)
        self.low_tp, self.low_fp = np.where(found, tp[at], self.low_tp), np.where(found, fp[at], self.low_fp)
        first = np.searchsorted(tp, self.n_in - self.fn_grid, side="left")
        new, at = ~self.high_set & (first < len(tp)), np.minimum(first, len(tp) - 1)
        self.high_tp, self.high_fp = np.where(new, tp[at], self.high_tp), np.where(new, fp[at], self.high_fp)
        self.high_set = self.high_set | new
        return self

    def merge(self, later: GridWalk) -> GridWalk:
        """This walk followed by ``later``'s (a slice of lower scores, walked with the same totals)."""
        moved = (later.low_tp > 0) | (later.low_fp > 0)  # a later slice's point: the start point is (0, 0)
        self.low_tp, self.low_fp = np.where(moved, later.low_tp, self.low_tp), np.where(moved, later.low_fp, self.low_fp)
        new = ~self.high_set & later.high_set
        self.high_tp = np.where(new, later.high_tp, self.high_tp)
        self.high_fp = np.where(new, later.high_fp, self.high_fp)
        self.high_set = self.high_set | new
        return self  # new arrays, never written in place: a Ray result's arrays are read-only

    def bound(self, delta: float = 0.0, confidence: float = 0.95) -> float:
        """The all-pairs bound from the grid's counts (module docstring)."""
        if self.n_in == 0 or self.n_out == 0:
            return 0.0
        alpha = (1.0 - confidence) / (len(self.fp_grid) + len(self.fn_grid))
        first = mixture_epsilon(self.low_tp, self.n_in, self.low_fp, self.n_out, alpha, delta)
        second = mixture_epsilon(self.n_out - self.high_fp, self.n_out, self.n_in - self.high_tp, self.n_in, alpha, delta)
        return float(max(0.0, first.max(initial=0.0), second.max(initial=0.0)))


def mixture_epsilon(successes: np.ndarray, trials: int, reference: np.ndarray, reference_trials: int, alpha: float,
                    delta: float = 0.0) -> np.ndarray:
    """float64 ``(K,)``: per threshold, the largest ε the observed ``successes`` refute at level ``alpha`` (0 if none).

    ``successes`` of ``trials`` (the TP of ``n_in``, or the TN of ``n_out``) against the mixture
    ``Binomial(trials, min(1, e^ε U + δ))``, ``U ~ Beta(reference + 1, reference_trials - reference)``: the law of
    the reference rate (FPR, or FNR) at a threshold with ``reference`` pairs above it.  The mixture's tail is an
    upper Riemann sum over :data:`QUADRATURE_BINS` probability bins (the integrand grows with ``U``), plus the
    Beta's top :data:`TAIL_MASS`, so the p-value is never under-stated; ε by bisection (the p-value grows with ε).
    The bisection refines only thresholds that may still hold the maximum: the maximum is exact, the other
    entries are refuted values below their own bound (still valid, not their largest).
    """
    successes = np.asarray(successes, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    usable = (successes > 0) & (reference < reference_trials)
    if not usable.any():
        return np.zeros(len(successes))
    k, ref = successes[usable], reference[usable]
    edges = np.concatenate([[0.0], np.sort(1.0 - np.geomspace(TAIL_MASS, 1.0, QUADRATURE_BINS))[1:], [1.0 - TAIL_MASS]])
    weights = np.diff(edges)
    rates = beta.ppf(edges[1:][None, :], ref[:, None] + 1.0, reference_trials - ref[:, None])  # bin right ends

    def p_value(rows: np.ndarray, eps: np.ndarray) -> np.ndarray:
        tpr = np.minimum(1.0, np.exp(eps)[:, None] * rates[rows] + delta)
        return binom.sf(k[rows, None] - 1, trials, tpr) @ weights + TAIL_MASS

    low, high = np.zeros(len(k)), np.full(len(k), EPS_MAX)
    refuted = p_value(np.arange(len(k)), low) <= alpha
    for _ in range(BISECTION_STEPS):
        live = np.flatnonzero(refuted & (high > low.max()))  # only thresholds that may still hold the maximum
        if len(live) == 0:
            break
        middle = (low[live] + high[live]) / 2.0
        reject = p_value(live, middle) <= alpha
        low[live], high[live] = np.where(reject, middle, low[live]), np.where(reject, high[live], middle)
    out = np.zeros(len(successes))
    out[usable] = np.where(refuted, low, 0.0)
    return out


def operating_points(is_in: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int64 ``(P,)`` cumulative ``(tp, fp)`` at each distinct score, descending (ties one point; -0.0 is 0.0).

    float32 scores sort as packed ``(value key, label)`` uint64 keys (:func:`raypriv.sorting.value_keys`), the
    order the Ray backend's partitions use; others by a stable argsort (:func:`raypriv.sorting.sorted_keys`,
    read from the top)."""
    keys, labels = sorted_keys(is_in, scores)
    if labels is None:  # packed keys: the value key above the label bit
        keys = keys[::-1]
        values, labels = keys >> np.uint64(1), (keys & np.uint64(1)).astype(bool)
    else:
        values, labels = keys[::-1] + 0.0, labels[::-1]
    end = run_ends(values)
    tp = np.cumsum(labels)[end]
    return tp, np.flatnonzero(end) + 1 - tp


def pair_epsilon_bound(is_in: np.ndarray, scores: np.ndarray, delta: float = 0.0, confidence: float = 0.95) -> float:
    """The all-pairs bound of bool ``is_in`` and float ``scores`` of any equal shape (one entry per pair)."""
    is_in, scores = flat_pairs(is_in, scores)
    n_in = int(is_in.sum())
    walk = GridWalk(n_in, len(is_in) - n_in)
    if len(is_in):
        walk.add(*operating_points(is_in, scores))
    return walk.bound(delta, confidence)


def check_balanced(is_in: np.ndarray, groups: np.ndarray) -> None:
    """Raise ValueError unless every group (canary) has as many IN as OUT pairs: the pooling argument's design."""
    ids, inverse = np.unique(np.asarray(groups).ravel(), return_inverse=True)
    margin = np.bincount(inverse, weights=np.where(np.asarray(is_in, dtype=bool).ravel(), 1.0, -1.0), minlength=len(ids))
    unbalanced = np.flatnonzero(margin != 0)
    if len(unbalanced):
        first = unbalanced[0]
        raise ValueError(f"group {ids[first].item()!r} has {margin[first]:+.0f} more IN than OUT pairs; the pooled ε bound "
                         "needs each canary IN for exactly half the models (raypriv.epsilon)")


# ------------------------------------------------------------------------ one-run bounds


def guess_counts(n_canaries: int) -> np.ndarray:
    """int64 ``(R,)``: the one-run grid of guess counts for ``n_canaries`` canaries (distinct, at least 1)."""
    return np.unique(np.maximum(1, np.round(n_canaries * np.array(GUESS_SHARES)).astype(np.int64)))


def steinke_epsilon(n_canaries: int, guesses: np.ndarray, correct: np.ndarray, delta: float, alpha: float) -> np.ndarray:
    """float64: the largest ε Steinke et al.'s Theorem 3.1 refutes at level ``alpha`` from ``correct`` of ``guesses``.

    p-value ``f(v) + 2 m δ max_{1<=i<=v} (f(v - i) - f(v)) / i`` with ``f(u) = P[Binomial(r, e^ε/(1+e^ε)) >= u]``,
    ``m = n_canaries``; 0 where even ε = 0 is not refuted.  The maximum is the largest mean of the binomial's
    probabilities at ``v - i .. v - 1``; the pmf being unimodal, that mean is unimodal in ``i``, so an integer
    ternary search finds it in ~50 evaluations instead of ``v`` (:func:`max_tail_slope`)."""
    guesses = np.asarray(guesses, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)

    def p_value(eps: np.ndarray) -> np.ndarray:
        q = 1.0 / (1.0 + np.exp(-eps))
        tail = binom.sf(correct - 1, guesses, q)
        if delta <= 0:
            return tail
        return tail + 2.0 * n_canaries * delta * max_tail_slope(correct, guesses, q, tail)

    return _largest_refuted(p_value, alpha, len(guesses))


def max_tail_slope(correct: np.ndarray, guesses: np.ndarray, q: np.ndarray, tail: np.ndarray) -> np.ndarray:
    """``max_{1<=i<=v} (P[B >= v - i] - P[B >= v]) / i`` for ``B ~ Binomial(r, q)``, per problem (0 where ``v = 0``)."""
    def slope(i: np.ndarray) -> np.ndarray:
        return (binom.sf(correct - i - 1, guesses, q) - tail) / np.maximum(i, 1)

    low, high = np.ones(len(correct)), np.maximum(correct, 1.0)
    while np.any(high - low > 2):
        third = np.floor((high - low) / 3.0)
        left, right = low + third, high - third
        rising = slope(left) < slope(right)
        low, high = np.where(rising, left + 1, low), np.where(rising, high, right)
    best = np.maximum.reduce([slope(np.minimum(low + step, high)) for step in (0, 1, 2)])
    return np.where(correct > 0, best, 0.0)


def fdp_gaussian_mu(n_canaries: int, guesses: np.ndarray, correct: np.ndarray, alpha: float) -> np.ndarray:
    """float64: the largest μ for which Mahloujifar et al.'s one-run audit refutes μ-GDP at level ``alpha`` (0 if none).

    The recursion of their "audit with cap" for the trade-off curve ``f(x) = Φ(Φ⁻¹(1 - x) - μ)``, as
    jax_privacy transcribes it: start from ``r = α c / m``, ``h = α (k - c) / m``; for ``i = c - 1 .. 0`` raise
    ``h`` to ``max(h, Φ(Φ⁻¹(r) - μ))`` and ``r`` by ``i / (k - i)`` times that rise (capped at 1), until ``h`` stops
    moving; μ-GDP is refuted when ``r + h > k / m``.  Vectorised over the problems, bisection over μ."""
    guesses = np.asarray(guesses, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    top = int(correct.max(initial=0))

    def refuted(mu: np.ndarray) -> np.ndarray:
        r, h = alpha * correct / n_canaries, alpha * (guesses - correct) / n_canaries
        live = np.flatnonzero(correct > 0)  # problem p runs i = c_p - 1, c_p - 2, ..., 0: step j is i = c_p - 1 - j
        for j in range(top):
            live = live[correct[live] - 1 - j >= 0]
            if len(live) == 0:
                break
            i = correct[live] - 1 - j
            raised = np.maximum(h[live], ndtr(ndtri(r[live]) - mu[live]))
            moving = raised != h[live]  # h stops: neither h nor r can change again
            r[live] = np.where(moving, np.minimum(1.0, r[live] + i / (guesses[live] - i) * (raised - h[live])), r[live])
            h[live] = raised
            live = live[moving]
        return r + h - guesses / n_canaries > 0

    low, high = np.zeros(len(guesses)), np.full(len(guesses), EPS_MAX)
    base = refuted(np.full(len(guesses), 1e-9))
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2.0
        reject = refuted(middle)
        low, high = np.where(reject, middle, low), np.where(reject, high, middle)
    return np.where(base, low, 0.0)


def gdp_epsilon(mu: float, delta: float) -> float:
    """The ε of μ-GDP at δ: the root of ``Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2) = δ`` (Dong, Roth and Su, Cor. 2.13)."""
    if mu <= 0:
        return 0.0

    def excess(eps: float) -> float:
        first, second = log_ndtr(-eps / mu + mu / 2), eps + log_ndtr(-eps / mu - mu / 2)
        return float(first + np.log1p(-np.exp(min(0.0, second - first)))) - np.log(delta)

    if excess(0.0) <= 0:
        return 0.0
    low, high = 0.0, 1.0
    while excess(high) > 0 and high < 1e4:
        low, high = high, 2 * high
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if excess(middle) > 0 else (low, middle)
    return low


def _largest_refuted(p_value, alpha: float, size: int) -> np.ndarray:
    """The largest ε in [0, EPS_MAX] with ``p_value(ε) <= alpha`` per problem (p-values grow with ε); 0 if none."""
    low, high = np.zeros(size), np.full(size, EPS_MAX)
    refuted = p_value(low) <= alpha
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2.0
        reject = p_value(middle) <= alpha
        low, high = np.where(reject, middle, low), np.where(reject, high, middle)
    return np.where(refuted, low, 0.0)


@dataclass(frozen=True)
class OneRunBounds:
    """The one-run bounds of one attack: per model (``(M,)``, each at ``1 - α/2``) and their medians (at ``1 - α``)."""

    eps_one_run: float
    gdp_mu_bound: float
    eps_gdp_bound: float
    gdp_delta: float
    per_model_eps: np.ndarray
    per_model_mu: np.ndarray

    def to_json(self) -> dict[str, float]:
        return {"eps_one_run": self.eps_one_run, "gdp_mu_bound": self.gdp_mu_bound, "eps_gdp_bound": self.eps_gdp_bound}


def model_one_run(is_in: np.ndarray, scores: np.ndarray, delta: float = 0.0,
                  confidence: float = 0.975) -> tuple[np.ndarray, np.ndarray]:
    """Per-model one-run bounds of ``(M, N)`` bool ``is_in`` and float ``scores``: ``(eps (M,), mu (M,))``.

    Each model guesses IN for its top ``r`` canaries (ties by canary index), ``r`` from :func:`guess_counts`;
    the best over the grid, Bonferroni over it at ``1 - confidence``."""
    is_in = np.atleast_2d(np.asarray(is_in, dtype=bool))
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    n_models, n = scores.shape
    grid = guess_counts(n)
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = np.cumsum(np.take_along_axis(is_in, order, axis=1), axis=1)[:, grid - 1]  # (M, R) correct among top r
    guesses = np.broadcast_to(grid, hits.shape).ravel()
    alpha = (1.0 - confidence) / len(grid)
    eps = steinke_epsilon(n, guesses, hits.ravel(), delta, alpha).reshape(n_models, len(grid)).max(axis=1)
    mu = fdp_gaussian_mu(n, guesses, hits.ravel(), alpha).reshape(n_models, len(grid)).max(axis=1)
    return eps, mu


def upper_median(values: np.ndarray) -> float:
    """``sorted(values)[len // 2]``: above a level only if at least half the values are (the Markov argument)."""
    values = np.sort(np.asarray(values, dtype=np.float64))
    return float(values[len(values) // 2]) if len(values) else float("nan")


def one_run_bounds(is_in: np.ndarray, scores: np.ndarray, delta: float = 0.0, confidence: float = 0.95) -> OneRunBounds:
    """The one-run bounds of ``(M, N)`` scores of an attack that uses only the target model (``loss``)."""
    eps, mu = model_one_run(is_in, scores, delta, per_model_confidence(confidence))
    return combine_models(eps, mu, delta)


def per_model_confidence(confidence: float = 0.95) -> float:
    """Each model's confidence, ``1 - α/2``, for a median over models valid at ``confidence = 1 - α``."""
    return 1.0 - (1.0 - confidence) / 2.0


def combine_models(eps: np.ndarray, mu: np.ndarray, delta: float = 0.0) -> OneRunBounds:
    """:class:`OneRunBounds` from every model's ``(M,)`` bounds (in any order: the Ray backend's blocks)."""
    gdp_delta = delta if delta > 0 else GDP_DEFAULT_DELTA
    median_mu = upper_median(mu)
    return OneRunBounds(upper_median(eps), median_mu, gdp_epsilon(median_mu, gdp_delta), gdp_delta,
                        np.asarray(eps), np.asarray(mu))


# ------------------------------------------------------------------------ several attacks


def bound_over_attacks(is_in: np.ndarray, scores: Mapping[str, np.ndarray], delta: float = 0.0,
                       confidence: float = 0.95) -> tuple[float, str | None]:
    """``(bound, attack)``: the largest all-pairs bound over ``k`` attacks, each at ``1 - (1 - confidence) / k``.

    The maximum of ``k`` bounds each valid at 95% is not valid at 95%; Bonferroni over the attacks makes it so.
    raypriv's tables show the headline attack's bound only; this is the "best attack" figure, if one is wanted."""
    if not scores:
        return 0.0, None
    level = 1.0 - (1.0 - confidence) / len(scores)
    bounds = {attack: pair_epsilon_bound(is_in, score, delta, level) for attack, score in scores.items()}
    best = max(bounds, key=bounds.get)
    return bounds[best], best
