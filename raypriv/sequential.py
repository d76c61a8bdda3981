"""Audits that run until they decide (``budget.until: decided``): the looks, the spending rule, the stopping rules.

An until-decided audit trains ``budget.round`` (K) models per paradigm at a
time, up to ``budget.max_models`` (N).  After each round it rescores every
paradigm still open with the headline attack (``lira_online`` when the run
has it, else its first attack) and stops the paradigm once its verdict is
decided.  The keep matrix is drawn in balanced blocks of K models
(:func:`raypriv.split.block_balanced_keep`), so every stopping point is a
balanced audit of its own.

**The looks.**  A look follows every round from the first at which the
headline attack can run (8 models for LiRA, 4 for RMIA, 2 for the loss
attack): ``R`` planned looks in all, fixed before any training
(:class:`Schedule`).

**Spending rule: Bonferroni over the planned looks.**  Each look spends
``α / R`` (α = 0.05).  Within a look that share is split again over the FPR
levels of :data:`DECISION_FPRS` and the two one-sided Clopper–Pearson bounds
of each level: every bound is computed at ``α / (2·R·L)``.  By the union
bound, the chance that *any* look of a sequential audit wrongly says "leaks"
(or wrongly says "bounded") is at most α, whatever the dependence between
looks, which share their models.  It is more conservative than a
Pocock or O'Brien–Fleming boundary (those use the looks' correlation), and
it needs no assumption about it.

**The stopping rules**, at each look and each level ``t`` that the look can
measure (at least :data:`MIN_FALSE_POSITIVES` OUT pairs may pass its
threshold: ``t · n_out >= 5``); the threshold is the one that lets at most
``⌊t · n_out⌋`` OUT pairs pass:

* **leaks**: the TPR's lower bound is above the FPR's upper bound.  For a
  threshold set by the OUT scores, the FPR's upper Clopper–Pearson bound is
  exact (the exceedance probability of an order statistic is Beta
  distributed), and given the threshold the IN count is binomial, so under
  no leakage this fires with probability at most ``2·α/(2·R·L)`` per level
  and look.
* **bounded**: the TPR's upper bound is under ``budget.bounded_multiple``
  times the FPR's lower bound: the attack's TPR/FPR at that operating point
  is bounded below the multiple of chance the user set.
* **frontier**: :data:`DecisionRule` is the hook for the DP-SGD frontier
  verdict (issue 24, item 3; :mod:`raypriv.report.verdicts`): a rule takes a
  paradigm's :class:`Look` and returns a :class:`Decision` or None.  The
  driver passes none yet; a rule that tests something must spend its own
  share of α.

Clopper–Pearson treats the (model, sample) pairs as independent given the
threshold.  One canary's pairs are correlated, but with the keep matrix
balanced per sample, a per-canary offset moves its IN and OUT pairs alike,
which narrows the spread of TPR − FPR rather than widening it;
``tests/test_sequential.py`` checks the false-leak rate by simulation, with
and without such offsets.

Pure NumPy and SciPy: ``raypriv plan`` and the simulations import no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np

from raypriv.metrics import clopper_pearson_lower, clopper_pearson_upper

ALPHA = 0.05  # the whole sequential audit's chance of a false "leaks" (and, separately, of a false "bounded")
DECISION_FPRS = (0.001, 0.01)  # the FPR levels a look tests (the report's headline levels)
MIN_FALSE_POSITIVES = 5.0  # a level counts only where >= 5 OUT pairs may pass its threshold (as the verdicts)
MIN_MODELS = {"loss": 2, "rmia": 4, "rmia_offline": 4}  # leave-one-out minimum per attack; LiRA's: DEFAULT_MIN_MODELS
DEFAULT_MIN_MODELS = 8
HEADLINE_ATTACK = "lira_online"

State = Literal["leaks", "bounded", "open"]


def headline_attack(attacks: Sequence[str]) -> str:
    """The attack the decisions use: ``lira_online`` if the run has it, else its first (as the report chooses)."""
    return HEADLINE_ATTACK if HEADLINE_ATTACK in attacks else attacks[0]


@dataclass(frozen=True)
class Schedule:
    """The planned looks of an until-decided audit: after each round of ``round`` models, from ``first_look`` on."""

    max_models: int
    round: int
    first_look: int  # the fewest models the headline attack runs on, rounded up to a whole round
    alpha: float = ALPHA

    @classmethod
    def of(cls, max_models: int, round_size: int, attack: str, alpha: float = ALPHA) -> Schedule:
        minimum = MIN_MODELS.get(attack, DEFAULT_MIN_MODELS)
        first = -(-minimum // round_size) * round_size
        return cls(max_models, round_size, min(first, max_models), alpha)

    @property
    def looks(self) -> list[int]:
        """The model counts at which the audit looks (every round from ``first_look`` to ``max_models``)."""
        return list(range(self.first_look, self.max_models + 1, self.round))

    @property
    def rounds(self) -> int:
        return self.max_models // self.round

    @property
    def alpha_per_look(self) -> float:
        return self.alpha / len(self.looks)

    def bound_alpha(self, n_levels: int = len(DECISION_FPRS)) -> float:
        """The one-sided error of each Clopper–Pearson bound: ``α / (2 · looks · levels)``."""
        return self.alpha_per_look / (2 * n_levels)


@dataclass(frozen=True)
class LevelCounts:
    """At one FPR level: the threshold's true and false positives out of the IN and OUT pairs."""

    fpr: float
    tp: int
    n_in: int
    fp: int
    n_out: int

    @property
    def measurable(self) -> bool:
        return self.fpr * self.n_out >= MIN_FALSE_POSITIVES


def threshold_counts(is_in: np.ndarray, scores: np.ndarray,
                     fprs: Sequence[float] = DECISION_FPRS) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives at each FPR level, vectorised over leading axes of ``scores``.

    ``is_in``: bool ``(M, N)``; ``scores``: float ``(..., M, N)`` (higher:
    more likely IN).  The threshold at level ``t`` is the ``k+1``-th largest
    OUT score, ``k = ⌊t · n_out⌋``: a pair is guessed IN when its score is
    above it, so at most ``k`` OUT pairs pass.  Returns ``(tp, fp)``, each
    int ``(..., len(fprs))``.
    """
    is_in = np.asarray(is_in, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    inside, outside = scores[..., is_in], scores[..., ~is_in]
    n_out = outside.shape[-1]
    descending = -np.sort(-outside, axis=-1)
    tp, fp = [], []
    for fpr in fprs:
        k = min(int(np.floor(fpr * n_out)), n_out - 1)
        threshold = descending[..., k : k + 1]
        tp.append((inside > threshold).sum(axis=-1))
        fp.append((outside > threshold).sum(axis=-1))
    return np.stack(tp, axis=-1), np.stack(fp, axis=-1)


def decision_states(tp: np.ndarray, n_in: int, fp: np.ndarray, n_out: int, fprs: Sequence[float], bound_alpha: float,
                    bounded_multiple: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The stopping rules, vectorised: ``(leaks, bounded)`` bool arrays ``(..., len(fprs))`` per measurable level.

    ``tp``, ``fp``: counts ``(..., len(fprs))`` (:func:`threshold_counts`);
    every bound at one-sided error ``bound_alpha``; ``bounded_multiple``
    None: no "bounded" rule (leaks only).
    """
    measurable = np.asarray(fprs, dtype=np.float64) * n_out >= MIN_FALSE_POSITIVES
    tpr_low = clopper_pearson_lower(tp, n_in, bound_alpha)
    tpr_high = clopper_pearson_upper(tp, n_in, bound_alpha)
    fpr_low = clopper_pearson_lower(fp, n_out, bound_alpha)
    fpr_high = clopper_pearson_upper(fp, n_out, bound_alpha)
    leaks = measurable & (tpr_low > fpr_high)
    if bounded_multiple is None:
        return leaks, np.zeros_like(leaks)
    bounded = measurable & (tpr_high < bounded_multiple * fpr_low)
    return leaks, bounded


@dataclass(frozen=True)
class Look:
    """One paradigm at one look: its pair counts at every FPR level of :data:`DECISION_FPRS`."""

    paradigm: str
    models: int
    attack: str
    levels: tuple[LevelCounts, ...]


@dataclass(frozen=True)
class Decision:
    """A paradigm's state after a look: ``leaks``, ``bounded`` or ``open``, with the reason in words."""

    state: State
    models: int
    reason: str
    fpr: float | None = None  # the level that decided it

    @property
    def decided(self) -> bool:
        return self.state != "open"

    def to_json(self) -> dict[str, object]:
        return {"state": self.state, "models": self.models, "reason": self.reason, "fpr": self.fpr}


DecisionRule = Callable[[Look], "Decision | None"]  # the frontier verdict's hook (module docstring)


def look_of(paradigm: str, attack: str, is_in: np.ndarray, scores: np.ndarray) -> Look:
    """The :class:`Look` of one paradigm's headline-attack ``scores`` ``(M, N)`` on membership ``is_in``."""
    is_in = np.asarray(is_in, dtype=bool)
    tp, fp = threshold_counts(is_in, scores)
    n_in, n_out = int(is_in.sum()), int((~is_in).sum())
    levels = tuple(LevelCounts(f, int(tp[i]), n_in, int(fp[i]), n_out) for i, f in enumerate(DECISION_FPRS))
    return Look(paradigm, int(is_in.shape[0]), attack, levels)


def _percent(value: float) -> str:
    return f"{value:.2%}" if value < 0.01 else f"{value:.1%}"


def _level_name(fpr: float) -> str:
    return f"TPR@{fpr:.1%}FPR".replace(".0%", "%")


def decide(look: Look, schedule: Schedule, bounded_multiple: float, rules: Sequence[DecisionRule] = ()) -> Decision:
    """Apply the stopping rules (module docstring) to one look; leaks wins over bounded, both over the rules."""
    alpha = schedule.bound_alpha()
    n_in, n_out = look.levels[0].n_in, look.levels[0].n_out
    tp = np.array([level.tp for level in look.levels])
    fp = np.array([level.fp for level in look.levels])
    leaks, bounded = decision_states(tp, n_in, fp, n_out, DECISION_FPRS, alpha, bounded_multiple)
    where = f"{look.models} models, {look.attack}, each bound at one-sided α={alpha:.2g}"
    for kind, hits in (("leaks", leaks), ("bounded", bounded)):
        if hits.any():
            level = look.levels[int(np.flatnonzero(hits)[0])]  # the lowest FPR level that decides
            tpr_low, tpr_high = (float(clopper_pearson_lower(level.tp, n_in, alpha)),
                                 float(clopper_pearson_upper(level.tp, n_in, alpha)))
            fpr_low, fpr_high = (float(clopper_pearson_lower(level.fp, n_out, alpha)),
                                 float(clopper_pearson_upper(level.fp, n_out, alpha)))
            if kind == "leaks":
                reason = (f"{_level_name(level.fpr)}: TPR ≥ {_percent(tpr_low)} > FPR ≤ {_percent(fpr_high)} "
                          f"({level.tp}/{n_in} IN, {level.fp}/{n_out} OUT pairs; {where})")
            else:
                reason = (f"{_level_name(level.fpr)}: TPR ≤ {_percent(tpr_high)} < {bounded_multiple:g}× FPR ≥ "
                          f"{_percent(fpr_low)} ({level.tp}/{n_in} IN, {level.fp}/{n_out} OUT pairs; {where})")
            return Decision(kind, look.models, reason, level.fpr)
    for rule in rules:
        decision = rule(look)
        if decision is not None:
            return decision
    return Decision("open", look.models, open_reason(look, alpha, bounded_multiple))


def open_reason(look: Look, alpha: float, bounded_multiple: float) -> str:
    """Why a paradigm is still open: no measurable level yet, or each level's TPR/FPR bounds in words."""
    measurable = [level for level in look.levels if level.measurable]
    if not measurable:
        lowest = min(DECISION_FPRS)
        needed = int(np.ceil(MIN_FALSE_POSITIVES / max(DECISION_FPRS)))
        return (f"no FPR level measurable yet at {look.models} models ({look.levels[0].n_out} OUT pairs; "
                f"{_level_name(max(DECISION_FPRS))} needs {needed}, {_level_name(lowest)} "
                f"{int(np.ceil(MIN_FALSE_POSITIVES / lowest))})")
    parts = []
    for level in measurable:
        tpr_low = float(clopper_pearson_lower(level.tp, level.n_in, alpha))
        tpr_high = float(clopper_pearson_upper(level.tp, level.n_in, alpha))
        fpr_low = float(clopper_pearson_lower(level.fp, level.n_out, alpha))
        ratio = tpr_high / fpr_low if fpr_low > 0 else float("inf")
        parts.append(f"{_level_name(level.fpr)} in [{_percent(tpr_low)}, {_percent(tpr_high)}], not above chance, "
                     f"bound {ratio:.1f}× chance not under {bounded_multiple:g}×")
    return f"{'; '.join(parts)} ({look.models} models)"


def simulate_sequential(null_scores: Callable[[np.random.Generator, int, int, int], np.ndarray], keep: np.ndarray,
                        schedule: Schedule, bounded_multiple: float | None, n_audits: int, seed: int = 0) -> dict[str, float]:
    """Run ``n_audits`` simulated sequential audits and count how they end (vectorised over audits).

    ``null_scores(rng, n_audits, n_models, n_audit)`` draws float scores
    ``(n_audits, M, N)`` for the whole plan (``keep``'s shape); each audit
    then looks at the prefixes of :attr:`Schedule.looks` and stops at its
    first decision (``bounded_multiple`` None: only "leaks" stops one, the
    most looks a false leak can come from).  Returns the share of audits that end in ``leaks``,
    ``bounded`` and ``open``, and the mean models used.
    """
    rng = np.random.default_rng(seed)
    n_models, n_audit = keep.shape
    scores = null_scores(rng, n_audits, n_models, n_audit)
    state = np.zeros(n_audits, dtype=np.int8)  # 0 open, 1 leaks, 2 bounded
    used = np.full(n_audits, schedule.max_models)
    alpha = schedule.bound_alpha()
    for models in schedule.looks:
        is_in = keep[:models]
        tp, fp = threshold_counts(is_in, scores[:, :models])
        leaks, bounded = decision_states(tp, int(is_in.sum()), fp, int((~is_in).sum()), DECISION_FPRS, alpha,
                                         bounded_multiple)
        fresh = state == 0
        new_leak = fresh & leaks.any(axis=-1)
        new_bound = fresh & ~new_leak & bounded.any(axis=-1)
        state[new_leak], state[new_bound] = 1, 2
        used[new_leak | new_bound] = models
    return {"leaks": float(np.mean(state == 1)), "bounded": float(np.mean(state == 2)),
            "open": float(np.mean(state == 0)), "mean_models": float(used.mean())}
