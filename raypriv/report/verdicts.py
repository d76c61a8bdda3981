"""The verdict: one worded line per paradigm, from the TPRs at low FPR and their intervals.

The thresholds below decide when an audit may say "leaks", when it must say
"too few models to conclude", and when "no leakage detected"; the report's
tables and method notes quote the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from raypriv.metrics import mean_difference_test, one_sided_bootstrap_p, percentile_interval

MIN_MODELS = 16  # below this, LiRA has at most 7 shadows a side: too weak to call "no leakage"
MIN_FALSE_POSITIVES = 5.0  # an FPR level counts only where >= 5 OUT pairs may pass the threshold
MAX_UNDETECTED_MULTIPLE = 10.0  # a null result that cannot exclude a 10x-chance leak is not a result


@dataclass(frozen=True)
class LevelEvidence:
    """TPR measured at one FPR level, with its 95% interval."""

    fpr: float
    tpr: float
    low: float
    high: float


@dataclass(frozen=True)
class VerdictInput:
    """The numbers a verdict is worded from (see :func:`verdict`)."""

    n_models: int
    n_audit: int
    n_out: int  # OUT (model, sample) pairs the FPR is measured on
    attack: str
    levels: tuple[LevelEvidence, ...]
    accounted_epsilon: float | None = None
    accounted_delta: float | None = None
    eps_lower_bound: float | None = None
    accountant: str | None = None  # how ε was accounted ("rdp", "prv", "zcdp", ...), None if not reported


def percent(value: float) -> str:
    """A rate as a percentage: two decimals below 1%, ``n/a`` if not finite."""
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.1%}" if value >= 0.01 or value == 0 else f"{value:.2%}"


def multiple(value: float) -> str:
    """A multiple of chance (``3.2×``, ``41×``)."""
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.1f}×" if value < 10 else f"{value:.0f}×"


def fpr_name(fpr: float) -> str:
    """``TPR@1%FPR``, ``TPR@0.1%FPR``."""
    return f"TPR@{fpr:.1%}FPR".replace(".0%", "%")


def verdict(evidence: VerdictInput) -> tuple[str, str]:
    """One line per paradigm, worded from the numbers; returns ``(kind, text)``.

    ``kind`` is ``"leaks"``, ``"no-leak-detected"`` or ``"too-few"``.

    * **leaks** when, at an FPR level the audit can measure (at least one
      OUT pairs may pass its threshold), the lower end of the TPR's 95% interval lies above
      chance (TPR = FPR).  The lowest such level is quoted, as a multiple of
      chance.  A leak found with few models stands: a weak attack that still
      succeeds is evidence.
    * **too few models to conclude** when nothing is detected but the audit
      could not have detected much: fewer than :data:`MIN_MODELS` models, no
      measurable level, or an interval whose upper end still allows a
      :data:`MAX_UNDETECTED_MULTIPLE`-fold leak.
    * otherwise **no leakage detected above chance at this audit's power**,
      with the interval's upper end: what the audit rules out, no more.

    A paradigm with an accounted ε gets "DP with ε=…, δ=… (accounted, <accountant>)" beside it (and a warning
    if the empirical lower bound exceeds it).  The word "private" is never
    used: an audit can show leakage, not its absence.
    """
    power = f"{evidence.n_models} models × {evidence.n_audit} audit samples, {evidence.attack}"
    levels = sorted(evidence.levels, key=lambda level: level.fpr)
    measurable = [level for level in levels if level.fpr * evidence.n_out >= MIN_FALSE_POSITIVES]
    leaking = [level for level in measurable if np.isfinite(level.low) and level.low > level.fpr]
    if leaking:
        level = leaking[0]
        kind = "leaks"
        text = (
            f"leaks: {fpr_name(level.fpr)} {percent(level.tpr)} = {multiple(level.tpr / level.fpr)} chance "
            f"(95% CI {multiple(level.low / level.fpr)}–{multiple(level.high / level.fpr)}; {power})"
        )
        if evidence.n_models < MIN_MODELS:
            text += f"; with under {MIN_MODELS} models the attack is weak, so the leak may be larger"
    else:
        widest = measurable[-1] if measurable else None
        if widest is None:
            kind = "too-few"
            text = (
                f"too few models to conclude: no leakage detected, but {evidence.n_out} OUT pairs cannot "
                f"measure {fpr_name(levels[-1].fpr)} or below ({power})"
                if levels
                else f"too few models to conclude ({power})"
            )
        elif evidence.n_models < MIN_MODELS or widest.high / widest.fpr > MAX_UNDETECTED_MULTIPLE:
            kind = "too-few"
            text = (
                f"too few models to conclude: no leakage detected, but this audit cannot rule out "
                f"{fpr_name(widest.fpr)} up to {percent(widest.high)} = {multiple(widest.high / widest.fpr)} "
                f"chance (95% CI upper bound; {power}); audit with ≥ {MIN_MODELS} models and more samples"
            )
        else:
            kind = "no-leak-detected"
            text = (
                f"no leakage detected above chance at this audit's power: {fpr_name(widest.fpr)} "
                f"{percent(widest.tpr)}, 95% CI upper bound {percent(widest.high)} = "
                f"{multiple(widest.high / widest.fpr)} chance ({power}); an empirical audit with these "
                "canaries, not a guarantee"
            )
    if evidence.accounted_epsilon is not None:
        delta = f", δ={evidence.accounted_delta:.1e}" if evidence.accounted_delta else ""
        accountant = f", {evidence.accountant}" if evidence.accountant else ""
        text += f"; DP with ε={evidence.accounted_epsilon:.2f}{delta} (accounted{accountant})"
        if evidence.eps_lower_bound is not None:
            text += f", empirical ε lower bound {evidence.eps_lower_bound:.2f}"
            if evidence.eps_lower_bound > evidence.accounted_epsilon:
                text += " EXCEEDS the accounted ε: the DP training or its accounting is wrong"
    return kind, text


# ------------------------------------------------------------ against the DP-SGD frontier
#
# The reference study's conclusion is drawn against DP-SGD: a paradigm is only worth its cost if no DP-SGD run
# of the same recipe is at least as accurate while leaking no more.  Each DP-SGD variant of a run (``dpsgd``,
# ``dpsgd@...``) is a frontier point.  The decision is a test, worded by :func:`frontier_verdict`:
#
# * the leakage is TPR at the lowest FPR level of :data:`FRONTIER_FPRS` the run can measure (at least
#   :data:`MIN_FALSE_POSITIVES` expected false positives among its OUT pairs: :func:`lowest_measurable_fpr`),
#   with a two-way bootstrap over target models and audit samples (paired: the same resample for every arm);
# * the utility is the mean per-model test accuracy, with Welch's t over the models;
# * "D dominates P" (P no more accurate than D, and P leaks at least as much) is claimed when both one-sided
#   tests reject at :data:`FRONTIER_ALPHA` (an intersection-union test: its p-value is the larger of the two),
#   Holm-corrected over the K DP-SGD points, so that a paradigm no point truly dominates is called dominated
#   in at most 2.5% of audits, whatever K (tests/test_frontier.py simulates it);
# * "not dominated" is claimed when, against every point, P is shown more accurate or leaking less (each
#   point at FRONTIER_ALPHA, Bonferroni over the two axes; no correction over points is needed, since every
#   one of them must be shown);
# * otherwise "undecided", naming what is open; "undecided: leakage not measurable at this power" when no
#   level is measurable and accuracy alone does not settle it.  Two TPRs of 0 never count as "leaks at least
#   as much": bootstrap ties at zero count half (:func:`raypriv.metrics.one_sided_bootstrap_p`).

DP_SGD = "dpsgd"
FRONTIER_FPRS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)  # the levels the frontier may read
FRONTIER_ALPHA = 0.025  # one-sided: the lower side of a two-sided 95% interval; family-wise over the DP-SGD points


def is_frontier(paradigm: str) -> bool:
    """Whether a paradigm (or ``base@tag`` variant) is a DP-SGD point of the frontier."""
    return paradigm.split("@", 1)[0] == DP_SGD


def lowest_measurable_fpr(n_out: int, levels: Sequence[float] = FRONTIER_FPRS) -> float | None:
    """The lowest of ``levels`` at which ``n_out`` OUT pairs give at least :data:`MIN_FALSE_POSITIVES` expected
    false positives (``fpr * n_out >= 5``); None when no level is measurable.

    It depends on the audit's size alone, never on the scores, so choosing it costs the tests nothing.
    """
    measurable = [level for level in sorted(levels) if level * n_out >= MIN_FALSE_POSITIVES]
    return measurable[0] if measurable else None


@dataclass(frozen=True)
class FrontierArm:
    """One paradigm's evidence for the frontier decision.

    ``accuracies``: float ``(n_models,)``, each target model's test accuracy.
    ``tpr``: the TPR observed at the decision's FPR level (NaN when none is
    measurable); ``tpr_replicates``: float ``(n_boot,)``, its bootstrap
    replicates (empty when none is measurable).  Replicate ``r`` of every arm
    of one decision must come from the same resample (the same
    :func:`raypriv.metrics.two_way_bootstrap_weights` row), so that the
    differences are paired.  ``seconds``: synthesis + training per model.
    ``epsilon``, ``delta``, ``accountant``: a DP-SGD point's accounted
    guarantee (``epsilon`` None: clipping only, no noise).
    """

    label: str
    accuracies: np.ndarray
    tpr: float
    tpr_replicates: np.ndarray
    seconds: float
    epsilon: float | None = None
    delta: float | None = None
    accountant: str | None = None

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.accuracies)) if len(self.accuracies) else float("nan")


@dataclass(frozen=True)
class PointTest:
    """The candidate against one DP-SGD point: accuracy and leakage differences (candidate − point) and tests.

    ``accuracy``: :func:`raypriv.metrics.mean_difference_test` of the
    per-model accuracies.  ``tpr_low``/``tpr_high``: the 95% percentile
    interval of the bootstrap TPR differences (NaN if unmeasurable).
    ``p_dominated``: p-value of "the point dominates" (the larger of "no more
    accurate" and "leaks at least as much"), before Holm; ``dominates``: Holm
    rejected it.  ``p_beaten``: p-value of "the candidate is more accurate or
    leaks less" (Bonferroni over the axes tested); ``beaten``: it is at most
    the decision's alpha.
    """

    point: FrontierArm
    accuracy: dict[str, float]
    tpr_difference: float
    tpr_low: float
    tpr_high: float
    p_dominated: float
    p_beaten: float
    dominates: bool
    beaten: bool


@dataclass(frozen=True)
class FrontierDecision:
    """The frontier decision for one candidate: ``kind`` is ``dominated``, ``not-dominated`` or ``undecided``.

    ``fpr``: the level the leakage was compared at (None: none measurable
    with ``n_out`` OUT pairs); ``tests``: one per DP-SGD point, in the order
    given; ``alpha``: the one-sided, family-wise level.
    """

    kind: str
    candidate: FrontierArm
    fpr: float | None
    n_out: int
    tests: tuple[PointTest, ...]
    alpha: float

    @property
    def dominating(self) -> tuple[PointTest, ...]:
        """The points shown to dominate, the most private first (smallest ε; clipping only last)."""
        shown = [test for test in self.tests if test.dominates]
        return tuple(sorted(shown, key=lambda t: np.inf if t.point.epsilon is None else t.point.epsilon))


def holm_rejections(p_values: Sequence[float], alpha: float) -> np.ndarray:
    """bool ``(K,)``: which of K hypotheses Holm's step-down procedure rejects at family-wise level ``alpha``.

    The smallest p-value is compared with ``alpha / K``, the next with
    ``alpha / (K - 1)``, ..., stopping at the first that fails.  NaN never rejects.
    """
    p = np.asarray(p_values, dtype=np.float64)
    p = np.where(np.isfinite(p), p, np.inf)
    rejected = np.zeros(len(p), dtype=bool)
    for step, index in enumerate(np.argsort(p, kind="stable")):
        if p[index] > alpha / (len(p) - step):
            break
        rejected[index] = True
    return rejected


def frontier_decision(
    candidate: FrontierArm, points: Sequence[FrontierArm], fpr: float | None, n_out: int,
    alpha: float = FRONTIER_ALPHA,
) -> FrontierDecision:
    """Decide whether ``candidate`` is dominated by one of the DP-SGD ``points`` (see the comment above).

    ``fpr``: the level the arms' TPRs were measured at (from
    :func:`lowest_measurable_fpr`; None if none is measurable, then only
    accuracy is compared); ``n_out``: the OUT pairs it was measured on.
    ``alpha`` is one-sided: 0.025 matches the report's two-sided 95%
    intervals.  Every number the verdict quotes comes from here.
    """
    if not points:
        raise ValueError("the frontier decision needs at least one DP-SGD point")
    measured = fpr is not None
    p_dominated, partial = [], []
    for point in points:
        accuracy = mean_difference_test(candidate.accuracies, point.accuracies, 1.0 - 2.0 * alpha)
        if measured:
            difference = np.asarray(candidate.tpr_replicates, np.float64) - np.asarray(point.tpr_replicates, np.float64)
            if difference.shape != (len(candidate.tpr_replicates),) or len(difference) == 0:
                raise ValueError(f"{candidate.label} and {point.label} need paired bootstrap replicates of one length")
            low, high = percentile_interval(difference, 1.0 - 2.0 * alpha)
            p_leaks_as_much = one_sided_bootstrap_p(difference, "below")  # against "the candidate leaks less"
            p_leaks_less = one_sided_bootstrap_p(difference, "above")  # against "the candidate leaks at least as much"
            tpr_difference = candidate.tpr - point.tpr
            axes = [accuracy["p_below"], p_leaks_less]
        else:
            low = high = tpr_difference = p_leaks_as_much = float("nan")
            axes = [accuracy["p_below"]]
        # "dominated" needs both axes shown (an intersection-union test): the larger p-value (NaN: not shown).
        both = (accuracy["p_above"], p_leaks_as_much)
        p_dominated.append(max(both) if measured and all(np.isfinite(both)) else float("nan"))
        finite = [p if np.isfinite(p) else 1.0 for p in axes]
        p_beaten = min(1.0, len(finite) * min(finite))
        partial.append((point, accuracy, tpr_difference, low, high, p_beaten))
    dominates = holm_rejections(p_dominated, alpha)
    tests = tuple(
        PointTest(point, accuracy, tpr_difference, low, high, p_dom, p_beaten, bool(rejected), p_beaten <= alpha)
        for (point, accuracy, tpr_difference, low, high, p_beaten), p_dom, rejected
        in zip(partial, p_dominated, dominates, strict=True)
    )
    if dominates.any():
        kind = "dominated"
    elif all(test.beaten for test in tests):
        kind = "not-dominated"
    else:
        kind = "undecided"
    return FrontierDecision(kind, candidate, fpr, n_out, tests, alpha)


def point_name(point: FrontierArm) -> str:
    """``DP-SGD (ε=1.00, δ=1.0e-05, rdp)``, or ``DP-SGD (clipping only, no noise)``."""
    if point.epsilon is None:
        return "DP-SGD (clipping only, no noise)"
    delta = f", δ={point.delta:.1e}" if point.delta else ""
    accountant = f", {point.accountant}" if point.accountant else ""
    return f"DP-SGD (ε={point.epsilon:.2f}{delta}{accountant})"


def _signed_percent(value: float) -> str:
    if not np.isfinite(value):
        return "n/a"
    return f"{value:+.1%}" if abs(value) >= 0.001 or value == 0 else f"{value:+.2%}"


def interval_name(confidence: float) -> str:
    """An interval's confidence in words: ``95%`` at 0.95, ``99.4%`` at a spent share (a sequential look's)."""
    return f"{confidence:.1%}".replace(".0%", "%")


def _accuracy_text(test: PointTest, confidence: float = 0.95) -> str:
    """``0.900 vs 0.950, difference 95% CI -0.058 to -0.042``: the candidate's accuracy, the point's, the interval."""
    a = test.accuracy
    interval = (f"difference {interval_name(confidence)} CI {a['low']:+.3f} to {a['high']:+.3f}" if np.isfinite(a["low"])
                else "no interval with under 2 models")
    return f"{a['difference'] + test.point.accuracy:.3f} vs {test.point.accuracy:.3f}, {interval}"


def _tpr_text(test: PointTest, fpr: float, confidence: float = 0.95) -> str:
    """``TPR@1%FPR 10.0% vs 3.0%, difference 95% CI +5.1% to +9.0%``."""
    return (f"{fpr_name(fpr)} {percent(test.point.tpr + test.tpr_difference)} vs {percent(test.point.tpr)}, "
            f"difference {interval_name(confidence)} CI {_signed_percent(test.tpr_low)} to "
            f"{_signed_percent(test.tpr_high)}")


def frontier_verdict(decision: FrontierDecision) -> tuple[str, str]:
    """``(kind, text)``: the decision of :func:`frontier_decision` in words, with the numbers it rests on.

    ``kind`` is the decision's.  The text names the level, the method of each
    interval and the correction, so a reader can check it: "dominated by X"
    names the most private point shown to dominate; "not dominated" says, per
    point, why; "undecided" names each point still open and its intervals.
    """
    candidate, fpr, k = decision.candidate, decision.fpr, len(decision.tests)
    level = 1.0 - 2.0 * decision.alpha  # the intervals' confidence: 95% at the report's one-sided 2.5%
    points = f"{k} DP-SGD point{'s' if k != 1 else ''}"
    cost = f"cost {candidate.seconds:.1f} s/model"
    side = f"one-sided {decision.alpha:.1%}"
    accuracy_method = f"accuracy: Welch t over {len(candidate.accuracies)} models"
    tpr_method = (f"{fpr_name(fpr)}: two-way bootstrap over models and audit samples, paired"
                  if fpr is not None else "")
    if decision.kind == "dominated":
        best = decision.dominating[0]
        text = (
            f"dominated by {point_name(best.point)}: no more accurate ({_accuracy_text(best, level)}) and leaks at least "
            f"as much ({_tpr_text(best, fpr, level)}); {accuracy_method}, {tpr_method}, both at {side}, Holm over {points}; "
            f"{cost} vs {best.point.seconds:.1f} s/model"
        )
        others = [point_name(test.point) for test in decision.dominating[1:]]
        if others:
            text += f"; also dominated by {', '.join(others)}"
        return "dominated", text
    methods = "; ".join(filter(None, (accuracy_method, tpr_method)))
    if decision.kind == "not-dominated":
        reasons = []
        for test in decision.tests:
            shown_accurate = min(1.0, (1 if fpr is None else 2) * test.accuracy["p_below"]) <= decision.alpha
            reasons.append(f"more accurate than {point_name(test.point)} ({_accuracy_text(test, level)})" if shown_accurate
                           else f"leaks less than {point_name(test.point)} ({_tpr_text(test, fpr, level)})")
        text = (f"not dominated by DP-SGD ({k} point{'s' if k != 1 else ''}): {'; '.join(reasons)}; {methods}, each at {side} "
                f"(Bonferroni over the two axes); {cost}")
        if fpr is None:
            text += (f"; leakage not compared: {decision.n_out} OUT pairs cannot measure any FPR up to "
                     f"{FRONTIER_FPRS[-1]:.0%}")
        return "not-dominated", text
    open_points = [test for test in decision.tests if not test.beaten]
    if fpr is None:
        return "undecided", (
            f"undecided: leakage not measurable at this power ({decision.n_out} OUT pairs give under "
            f"{MIN_FALSE_POSITIVES:.0f} expected false positives at every FPR up to {FRONTIER_FPRS[-1]:.0%}), and "
            f"accuracy alone does not show it ahead of "
            + "; ".join(f"{point_name(t.point)} ({_accuracy_text(t, level)})" for t in open_points)
            + f"; {methods}; audit with more models or samples; {cost}"
        )
    details = "; ".join(f"{point_name(t.point)}: accuracy {_accuracy_text(t, level)}, {_tpr_text(t, fpr, level)}"
                        for t in open_points)
    return "undecided", (
        f"undecided against DP-SGD: neither dominated (Holm over {points}) nor shown more accurate or less leaky "
        f"than {len(open_points)} of them ({details}); {methods}, at {side}; {cost}"
    )
