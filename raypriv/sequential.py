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
* **dominated** / **not-dominated**: the DP-SGD frontier verdict (issue 24,
  item 3; :func:`raypriv.report.verdicts.frontier_decision`), in a run with
  DP-SGD points (``dpsgd``, ``dpsgd@…``: :func:`~raypriv.report.verdicts.is_frontier`),
  for every other paradigm still open after the two rules above.  At each
  look :class:`FrontierLook` builds one :class:`~raypriv.report.verdicts.FrontierArm`
  per paradigm from the look's own evidence: the per-model test accuracies
  of its model rows, and the headline attack's in-memory scores, read at the
  lowest FPR of :data:`~raypriv.report.verdicts.FRONTIER_FPRS` the look can
  measure (:func:`~raypriv.report.verdicts.lowest_measurable_fpr`, from the
  look's OUT pairs), with one two-way bootstrap of models × audit samples
  shared by every arm (paired).  A decided candidate stops with the verdict's
  kind and :func:`~raypriv.report.verdicts.frontier_verdict`'s text; an
  "undecided" one stays open.  :data:`DecisionRule` is the hook it plugs into.

**The frontier's own spending.**  The frontier test is separate from the
leak test, with its own α: :data:`~raypriv.report.verdicts.FRONTIER_ALPHA`
(0.025, one-sided, as the report uses), spent by Bonferroni over the same R
planned looks: each look runs ``frontier_decision`` at ``0.025 / R``
(:attr:`Schedule.frontier_alpha`; Holm over the DP-SGD points and the
Bonferroni over the two axes stay inside that share).  By the union bound a
paradigm that no DP-SGD point truly dominates is called "dominated" at some
look with probability at most 0.025, and one that some point dominates is
called "not dominated" at most 0.025, whatever the looks' correlation.  The
bootstrap p-values must resolve that share: each look draws
:func:`frontier_replicates` ``= ⌈20 / (0.025 / R)⌉`` replicates (about 20
expected beyond the per-look level; at least 1,000, at most
:data:`MAX_FRONTIER_REPLICATES` = 20,000, reached at R = 25 looks: beyond it
fewer than 20).  Holm's first step over K points compares the smallest
p-value with ``0.025 / (R·K)``, where about ``20/K`` replicates remain: a
p-value that small is almost always 0 or far above it.

**Who keeps training.**  A DP-SGD point is what the candidates are judged
against, so it never stops while a candidate is open: a point stops at the
first look at which its own rules (leaks, bounded) decide *and* no
candidate remains open, or at ``max_models``; its decision is that of its
last look (any look's decision is covered by the union bound).  Points
therefore always have at least the models of every open candidate, and at a
look all arms share the keep matrix's first rows.  A candidate stops at its
first decided look, whichever rule decides (leaks, then bounded, then the
frontier): a candidate that leaks stops as "leaks", and the report judges it
against the frontier from the models it has.  The leak rule reads 0.1% and
1% FPR only, the frontier up to 10%, so on a small audit (under 500 OUT pairs
at a look) only the frontier can decide.

Clopper–Pearson treats the (model, sample) pairs as independent given the
threshold.  One canary's pairs are correlated, but with the keep matrix
balanced per sample, a per-canary offset moves its IN and OUT pairs alike,
which narrows the spread of TPR − FPR rather than widening it;
``tests/test_sequential.py`` checks the false-leak rate by simulation, with
and without such offsets.

Pure NumPy and SciPy: ``raypriv plan`` and the simulations import no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np

from raypriv.metrics import (
    bootstrap_tpr_at_fpr,
    clopper_pearson_lower,
    clopper_pearson_upper,
    two_way_bootstrap_weights,
)
from raypriv.report.verdicts import (
    FRONTIER_ALPHA,
    FrontierArm,
    FrontierDecision,
    frontier_decision,
    frontier_verdict,
    is_frontier,
    lowest_measurable_fpr,
)
from raypriv.seeding import numpy_rng

ALPHA = 0.05  # the whole sequential audit's chance of a false "leaks" (and, separately, of a false "bounded")
DECISION_FPRS = (0.001, 0.01)  # the FPR levels a look tests (the report's headline levels)
MIN_FALSE_POSITIVES = 5.0  # a level counts only where >= 5 OUT pairs may pass its threshold (as the verdicts)
MIN_MODELS = {"loss": 2, "rmia": 4, "rmia_offline": 4}  # leave-one-out minimum per attack; LiRA's: DEFAULT_MIN_MODELS
DEFAULT_MIN_MODELS = 8
HEADLINE_ATTACK = "lira_online"
REPLICATES_PER_ALPHA = 20  # the frontier bootstrap draws about this many replicates beyond its per-look level
MIN_FRONTIER_REPLICATES = 1_000
MAX_FRONTIER_REPLICATES = 20_000  # reached at 25 looks; the cost is O(replicates x pairs) per arm and look

State = Literal["leaks", "bounded", "dominated", "not-dominated", "open"]
FRONTIER_STATES = ("dominated", "not-dominated")  # the frontier verdicts that stop a candidate


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

    @property
    def frontier_alpha(self) -> float:
        """The frontier decision's one-sided level at each look: ``FRONTIER_ALPHA / looks`` (0.025 / R)."""
        return FRONTIER_ALPHA / len(self.looks)


def frontier_replicates(alpha: float) -> int:
    """Bootstrap replicates for a frontier decision at one-sided level ``alpha``: ``⌈20 / alpha⌉``, in [1,000, 20,000]."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha} must lie in (0, 1)")
    return int(min(MAX_FRONTIER_REPLICATES, max(MIN_FRONTIER_REPLICATES, math.ceil(REPLICATES_PER_ALPHA / alpha))))


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
    """A paradigm's state after a look (``leaks``, ``bounded``, ``dominated``, ``not-dominated`` or ``open``), with
    the reason in words; ``models``: the look's."""

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


def tpr_replicates(is_in: np.ndarray, scores: np.ndarray, sample_weights: np.ndarray, fpr: float,
                   model_weights: np.ndarray, block_elements: int = 8_000_000) -> np.ndarray:
    """:func:`raypriv.metrics.bootstrap_tpr_at_fpr`, a block of replicates at a time (the same values).

    Its working memory is ``O(replicates × pairs)``: 20,000 replicates of 64
    models × 500 samples would need gigabytes at once; blocks of about
    ``block_elements`` replicate-pairs keep it to tens of megabytes.
    """
    pairs = int(np.asarray(scores).size)
    step = max(1, block_elements // max(pairs, 1))
    return np.concatenate([
        bootstrap_tpr_at_fpr(is_in, scores, sample_weights[start:start + step], fpr, model_weights[start:start + step])
        for start in range(0, len(sample_weights), step)
    ])


@dataclass(frozen=True)
class ArmEvidence:
    """One paradigm's evidence at one look, for the frontier: what :class:`FrontierLook` builds its arm from.

    ``scores``: the headline attack's float ``(models, n_audit)`` scores of
    the look (in memory); ``accuracies``: float ``(models,)``, each model's
    test accuracy from its model row, in model order; ``seconds``: synthesis
    + training per model; ``epsilon``, ``delta``, ``accountant``: a DP-SGD
    point's accounted guarantee (None: none reported).
    """

    scores: np.ndarray
    accuracies: np.ndarray
    seconds: float = 0.0
    epsilon: float | None = None
    delta: float | None = None
    accountant: str | None = None


@dataclass(frozen=True)
class FrontierLook:
    """The frontier decision of every open candidate at one look (module docstring: the frontier's spending).

    ``fpr``: the level the TPRs are read at (None: no level measurable with
    ``n_out`` OUT pairs; then only accuracy is compared); ``alpha``: the
    look's one-sided share (:attr:`Schedule.frontier_alpha`); ``n_boot``:
    the replicates of the look's one two-way bootstrap, shared by every arm.
    """

    models: int
    fpr: float | None
    n_out: int
    alpha: float
    n_boot: int
    points: tuple[str, ...]
    decisions: Mapping[str, FrontierDecision]

    @classmethod
    def of(cls, is_in: np.ndarray, evidence: Mapping[str, ArmEvidence], candidates: Sequence[str], alpha: float,
           rng: np.random.Generator, n_boot: int | None = None) -> FrontierLook:
        """Decide every paradigm of ``candidates`` against the DP-SGD points of ``evidence`` (keys that
        :func:`~raypriv.report.verdicts.is_frontier`), all on keep rows ``is_in`` ``(models, n_audit)``.

        ``n_boot`` None: :func:`frontier_replicates` of ``alpha``.  The
        bootstrap resamples models and audit samples together
        (:func:`raypriv.metrics.two_way_bootstrap_weights`), one draw from
        ``rng`` for every arm, so the differences are paired.
        """
        is_in = np.asarray(is_in, dtype=bool)
        points = tuple(p for p in evidence if is_frontier(p))
        if not points:
            raise ValueError("the frontier rule needs at least one DP-SGD point among the look's paradigms")
        n_models, n_audit = is_in.shape
        n_out = int((~is_in).sum())
        fpr = lowest_measurable_fpr(n_out)
        n_boot = frontier_replicates(alpha) if n_boot is None else n_boot
        model_weights = sample_weights = None
        if fpr is not None:
            model_weights, sample_weights = two_way_bootstrap_weights(n_models, n_audit, n_boot, rng)
        ones = np.ones((1, n_audit), dtype=np.int32)

        def arm(paradigm: str) -> FrontierArm:
            e = evidence[paradigm]
            scores = np.asarray(e.scores, dtype=np.float64)
            if scores.shape != is_in.shape or len(e.accuracies) != n_models:
                raise ValueError(f"{paradigm}: scores {scores.shape} and {len(e.accuracies)} accuracies do not match "
                                 f"the look's {is_in.shape} keep rows")
            if fpr is None or sample_weights is None or model_weights is None:
                tpr, replicates = float("nan"), np.empty(0)
            else:
                tpr = float(bootstrap_tpr_at_fpr(is_in, scores, ones, fpr)[0])
                replicates = tpr_replicates(is_in, scores, sample_weights, fpr, model_weights)
            return FrontierArm(paradigm, np.asarray(e.accuracies, dtype=np.float64), tpr, replicates, e.seconds,
                               epsilon=e.epsilon, delta=e.delta, accountant=e.accountant)

        point_arms = [arm(p) for p in points]
        decisions = {c: frontier_decision(arm(c), point_arms, fpr, n_out, alpha) for c in candidates}
        return cls(n_models, fpr, n_out, alpha, n_boot, points, decisions)

    def where(self, looks: int) -> str:
        """The spending, in words, for a reason text."""
        return (f"{self.models} models; the frontier's one-sided α={FRONTIER_ALPHA:g} spent over {looks} looks: "
                f"{self.alpha:.2g} at this one, {self.n_boot:,} bootstrap replicates")

    def rule(self, look: Look) -> Decision | None:
        """The :data:`DecisionRule` of this look: the candidate's frontier verdict if decided, else None."""
        decision = self.decisions.get(look.paradigm)
        if decision is None or decision.kind not in FRONTIER_STATES:
            return None
        state: State = "dominated" if decision.kind == "dominated" else "not-dominated"
        return Decision(state, look.models, frontier_verdict(decision)[1], decision.fpr)

    def to_json(self, paradigm: str) -> dict[str, Any]:
        """One candidate's frontier test at this look, for ``sequential.json``."""
        decision = self.decisions[paradigm]
        return {
            "kind": decision.kind, "fpr": self.fpr, "n_out": self.n_out, "alpha": self.alpha, "n_boot": self.n_boot,
            "verdict": frontier_verdict(decision)[1],
            "points": {t.point.label: {"p_dominated": finite(t.p_dominated), "p_beaten": finite(t.p_beaten),
                                       "dominates": t.dominates, "beaten": t.beaten,
                                       "accuracy_difference": finite(t.accuracy["difference"]),
                                       "tpr_difference": finite(t.tpr_difference)}
                       for t in decision.tests},
        }


def finite(value: float) -> float | None:
    """``value`` as a float for JSON, None where it is NaN or infinite (nothing measured): strict JSON has no NaN."""
    return float(value) if np.isfinite(value) else None


@dataclass
class SequentialAudit:
    """An until-decided audit's bookkeeping, without training or scoring: who trains next, and every decision.

    The driver trains :meth:`training` for a round, then calls :meth:`look`
    with each of those paradigms' evidence (or :meth:`wait` before the first
    look).  In a run with DP-SGD points, every other paradigm is a
    candidate against the frontier, and the points keep training while any
    candidate is open (module docstring).  ``seed``: the frontier
    bootstrap's draws (stream ``sequential/frontier/<models>``), so a rerun
    from the stored models reaches the same decisions.
    """

    paradigms: Sequence[str]
    schedule: Schedule
    attack: str
    bounded_multiple: float | None
    seed: int = 0
    n_boot: int | None = None  # None: frontier_replicates(schedule.frontier_alpha)
    decisions: dict[str, Decision] = field(default_factory=dict)
    looks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)
    points: list[str] = field(init=False)  # the DP-SGD points (is_frontier), in config order
    candidates: list[str] = field(init=False)  # the others, in a run with points; none without

    def __post_init__(self) -> None:
        self.points = [p for p in self.paradigms if is_frontier(p)]
        self.candidates = [p for p in self.paradigms if not is_frontier(p)] if self.points else []
        for paradigm in self.paradigms:
            self.looks.setdefault(paradigm, [])

    def training(self) -> list[str]:
        """The paradigms that train the next round: those not stopped, in config order."""
        return [p for p in self.paradigms if p not in self.stopped]

    def open_candidates(self) -> list[str]:
        return [c for c in self.candidates if c not in self.stopped]

    def wait(self, models: int) -> None:
        """After a round before the first look: every paradigm still training is open."""
        for paradigm in self.training():
            self.decisions[paradigm] = Decision(
                "open", models, f"no look before {self.schedule.first_look} models ({self.attack}'s minimum)")

    def look(self, models: int, keep: np.ndarray, evidence: Mapping[str, ArmEvidence]) -> None:
        """Decide every paradigm still training from its first ``models`` models, and stop the decided ones.

        ``keep``: the whole plan's keep matrix (its first ``models`` rows are
        the look's); ``evidence``: one :class:`ArmEvidence` per paradigm of
        :meth:`training`.  Candidates are decided first (leaks, bounded,
        then the frontier); a point stops once its own rules decide and no
        candidate is left open.
        """
        training = self.training()
        missing = [p for p in training if p not in evidence]
        if missing:
            raise ValueError(f"no evidence for {missing} at the look at {models} models")
        is_in = np.asarray(keep, dtype=bool)[:models]
        open_candidates = self.open_candidates()
        frontier = None
        if open_candidates:
            frontier = FrontierLook.of(is_in, {p: evidence[p] for p in training}, open_candidates,
                                       self.schedule.frontier_alpha, numpy_rng(self.seed, f"sequential/frontier/{models}"),
                                       self.n_boot)
        for paradigm in training:
            look = look_of(paradigm, self.attack, is_in, evidence[paradigm].scores)
            candidate = frontier is not None and paradigm in frontier.decisions
            rules = (frontier.rule,) if frontier is not None and candidate else ()
            decision = decide(look, self.schedule, self.bounded_multiple, rules)
            if frontier is not None and candidate:
                if decision.state in FRONTIER_STATES:
                    decision = replace(decision, reason=f"{decision.reason} ({frontier.where(len(self.schedule.looks))})")
                elif decision.state == "open":
                    kind = frontier.decisions[paradigm].kind
                    decision = replace(decision, reason=f"{decision.reason}; against the DP-SGD frontier: {kind} "
                                                        f"at one-sided α={frontier.alpha:.2g}")
            self.decisions[paradigm] = decision
            entry: dict[str, Any] = {
                "models": models, "state": decision.state,
                "levels": [{"fpr": c.fpr, "tp": c.tp, "n_in": c.n_in, "fp": c.fp, "n_out": c.n_out}
                           for c in look.levels],
            }
            if frontier is not None and candidate:
                entry["frontier"] = frontier.to_json(paradigm)
            self.looks[paradigm].append(entry)
        for paradigm in training:
            if paradigm not in self.points and self.decisions[paradigm].decided:
                self.stopped.add(paradigm)
        last = models >= self.schedule.max_models
        still_needed = bool(self.open_candidates()) and not last
        for paradigm in training:
            if paradigm in self.points:
                self.looks[paradigm][-1]["kept_for_frontier"] = still_needed and self.decisions[paradigm].decided
                if self.decisions[paradigm].decided and not still_needed:
                    self.stopped.add(paradigm)
        if last:  # the plan's end: whatever is open stays open
            self.stopped.update(training)

    def progress(self, paradigms: Sequence[str]) -> dict[str, tuple[str, str]]:
        """``paradigm -> (state, reason)`` for the progress log: a decided point still training shows as open."""
        states = {}
        waiting = self.open_candidates()
        for paradigm in paradigms:
            d = self.decisions[paradigm]
            if d.decided and paradigm not in self.stopped:
                states[paradigm] = ("open", f"{d.state} at this look, but kept training: the DP-SGD frontier is still "
                                            f"open for {', '.join(waiting)} ({d.reason})")
            else:
                states[paradigm] = (d.state, d.reason)
        return states

    def models_used(self) -> dict[str, int]:
        """Each paradigm's models: its last look (where it stopped, else ``max_models``)."""
        return {p: self.decisions[p].models for p in self.paradigms}

    def to_json(self) -> dict[str, Any]:
        """``sequential.json``: the schedule, both spending rules, and each paradigm's decision and looks."""
        schedule = self.schedule
        out: dict[str, Any] = {
            "attack": self.attack, "max_models": schedule.max_models, "round": schedule.round, "looks": schedule.looks,
            "alpha": schedule.alpha, "alpha_per_look": schedule.alpha_per_look, "bound_alpha": schedule.bound_alpha(),
            "spending": "bonferroni", "bounded_multiple": self.bounded_multiple,
        }
        if self.points:
            out["frontier"] = {
                "points": self.points, "candidates": self.candidates, "alpha": FRONTIER_ALPHA,
                "alpha_per_look": schedule.frontier_alpha, "spending": "bonferroni",
                "n_boot": self.n_boot or frontier_replicates(schedule.frontier_alpha),
                "bootstrap": "two-way (models x audit samples), paired across arms",
            }
        out["paradigms"] = {p: {**self.decisions[p].to_json(), "looks": self.looks[p]} for p in self.paradigms}
        return out

    def summary(self) -> str:
        """One line per paradigm: its decision, the models it used, and why."""
        schedule = self.schedule
        lines = [f"until decided ({self.attack}; looks at {schedule.looks} models, Bonferroni α="
                 f"{schedule.alpha:g} over {len(schedule.looks)} looks"
                 + (f"; DP-SGD frontier at α={FRONTIER_ALPHA:g} over {len(schedule.looks)} looks, points "
                    f"{', '.join(self.points)} training while a candidate is open" if self.points else "") + "):"]
        for paradigm in self.paradigms:
            d = self.decisions[paradigm]
            lines.append(f"  {paradigm}: {d.state} after {d.models} of {schedule.max_models} models: {d.reason}")
        return "\n".join(lines) + "\n"


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
