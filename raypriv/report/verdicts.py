"""The verdict: one worded line per paradigm, from the TPRs at low FPR and their intervals.

The thresholds below decide when an audit may say "leaks", when it must say
"too few models to conclude", and when "no leakage detected"; the report's
tables and method notes quote the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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

    A paradigm with an accounted ε gets "DP with ε=…" beside it (and a warning
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
        text += f"; DP with ε={evidence.accounted_epsilon:.2f}{delta} (accounted)"
        if evidence.eps_lower_bound is not None:
            text += f", empirical ε lower bound {evidence.eps_lower_bound:.2f}"
            if evidence.eps_lower_bound > evidence.accounted_epsilon:
                text += " EXCEEDS the accounted ε: the DP training or its accounting is wrong"
    return kind, text


# ------------------------------------------------------------ against the DP-SGD frontier
#
# The reference study's conclusion is drawn against DP-SGD: a paradigm is only worth its cost if no DP-SGD run
# of the same recipe is at least as accurate while leaking no more.  Each DP-SGD variant of a run (``dpsgd``,
# ``dpsgd@...``) is a frontier point; the verdict says "dominated" only when both intervals support it.

DP_SGD = "dpsgd"


@dataclass(frozen=True)
class FrontierPoint:
    """One paradigm's utility and cost, and (for a DP-SGD point) its accounted ε (None: clipping only)."""

    label: str
    acc: float
    acc_std: float
    n_models: int
    seconds: float  # synthesis + training per model
    epsilon: float | None = None


def is_frontier(paradigm: str) -> bool:
    """Whether a paradigm (or ``base@tag`` variant) is a DP-SGD point of the frontier."""
    return paradigm.split("@", 1)[0] == DP_SGD


def accuracy_difference_interval(a: FrontierPoint, b: FrontierPoint) -> tuple[float, float]:
    """95% interval of ``acc_a - acc_b`` over models (Welch, normal approximation: the models are independent)."""
    spread = 1.96 * np.sqrt(a.acc_std**2 / max(a.n_models, 1) + b.acc_std**2 / max(b.n_models, 1))
    return a.acc - b.acc - spread, a.acc - b.acc + spread


def frontier_verdict(
    point: FrontierPoint, tpr: float, frontier: list[tuple[FrontierPoint, float, tuple[float, float]]], fpr_label: str
) -> tuple[str, str]:
    """``(kind, text)``: is ``point`` (its TPR ``tpr``) dominated by a DP-SGD point of ``frontier``?

    ``frontier``: ``(DP-SGD point, its TPR, 95% paired-bootstrap interval of tpr(point) - tpr(DP-SGD))``.
    Dominated by D: the accuracy interval of point - D lies at or below 0 (no more accurate) and the TPR
    interval at or above 0 (leaks at least as much).  Among several, the most private D (smallest ε) is named.
    """
    cost = f"cost {point.seconds:.1f} s/model"
    dominating, ahead = [], []
    for d, d_tpr, (low, _high) in frontier:
        acc_low, acc_high = accuracy_difference_interval(point, d)
        if acc_high <= 0 and np.isfinite(low) and low >= 0:
            dominating.append((d, d_tpr))
        elif point.acc <= d.acc and tpr >= d_tpr:
            ahead.append(d)
    name = lambda d: f"DP-SGD (ε={d.epsilon:.2f})" if d.epsilon is not None else "DP-SGD (clipping only, no noise)"
    if dominating:
        d, d_tpr = min(dominating, key=lambda pair: np.inf if pair[0].epsilon is None else pair[0].epsilon)
        return "dominated", (
            f"dominated by {name(d)}: no more accurate ({point.acc:.3f} vs {d.acc:.3f}), leaks at least as much "
            f"({fpr_label} {percent(tpr)} vs {percent(d_tpr)}"
            + (": neither measurable at this FPR, so this rests on accuracy" if tpr == 0 and d_tpr == 0 else "")
            + f"); {cost} vs {d.seconds:.1f} s/model"
        )
    text = f"not dominated by DP-SGD ({len(frontier)} points); {cost}"
    if ahead:
        text += (
            f"; {', '.join(name(d) for d in ahead)} is ahead on both point estimates, "
            "but the intervals do not support dominance"
        )
    return "not-dominated", text
