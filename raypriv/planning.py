"""``raypriv plan CONFIG``: what a budget can show, before any training.

For each paradigm, model count and FPR level of :data:`raypriv.sequential.DECISION_FPRS`:

* whether the level is **measurable** (at least 5 OUT pairs may pass its
  threshold);
* the **smallest TPR separable from chance**: the fewest true positives
  whose Clopper–Pearson lower bound clears the upper bound of the FPR at
  that level, at the run's pair counts and at the α each bound gets in the
  decision rule (:mod:`raypriv.sequential`; a fixed budget is one look);
* the **best bound at chance**: the TPR/FPR multiple that an audit of a
  paradigm that does not leak at all can bound its attack under (what
  ``budget.bounded_multiple`` can ask for);
* the **largest ε lower bound reachable**: the ε bound
  (:func:`raypriv.metrics.epsilon_lower_bound_from_scores`, the one
  ``metrics.json`` reports) of a perfect attack on a keep matrix of the
  run's shape, at the paradigm's δ (its ``delta`` option where it has one,
  else 0).

An until-decided budget is shown at its first look and at ``max_models``.
Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raypriv.config import ExperimentConfig
from raypriv.metrics import clopper_pearson_lower, clopper_pearson_upper, epsilon_lower_bound_from_scores
from raypriv.sequential import ALPHA, DECISION_FPRS, MIN_FALSE_POSITIVES, Schedule, headline_attack
from raypriv.split import balanced_keep, block_balanced_keep
from raypriv.synth import build_options
from raypriv.synth.options import DEFAULT_DELTA


@dataclass(frozen=True)
class PlanRow:
    """One paradigm at one model count and FPR level (module docstring)."""

    paradigm: str
    models: int
    fpr: float
    n_in: int
    n_out: int
    measurable: bool
    min_tpr: float | None  # None: no TPR up to 100% is separable at these counts
    chance_bound: float  # TPR/FPR multiple a leak-free audit bounds its attack under (inf: none)
    epsilon: float
    delta: float


def smallest_separable_tpr(n_in: int, n_out: int, fpr: float, bound_alpha: float) -> float | None:
    """The smallest TPR whose lower bound clears the FPR's upper bound at level ``fpr`` (None if none does)."""
    fp = min(int(np.floor(fpr * n_out)), n_out)
    fpr_high = float(clopper_pearson_upper(fp, n_out, bound_alpha))
    if float(clopper_pearson_lower(n_in, n_in, bound_alpha)) <= fpr_high:
        return None
    low, high = 0, n_in  # the lower bound grows with the count: bisect for the first count that clears fpr_high
    while low < high:
        middle = (low + high) // 2
        if float(clopper_pearson_lower(middle, n_in, bound_alpha)) > fpr_high:
            high = middle
        else:
            low = middle + 1
    return low / n_in


def chance_bound(n_in: int, n_out: int, fpr: float, bound_alpha: float) -> float:
    """TPR's upper bound over FPR's lower bound when TPR = FPR = ``fpr`` is observed (inf if FPR's bound is 0)."""
    tp, fp = int(np.floor(fpr * n_in)), int(np.floor(fpr * n_out))
    fpr_low = float(clopper_pearson_lower(fp, n_out, bound_alpha))
    return float(clopper_pearson_upper(tp, n_in, bound_alpha)) / fpr_low if fpr_low > 0 else float("inf")


def paradigm_delta(config: ExperimentConfig, paradigm: str) -> float:
    """The paradigm's δ option where it sets one (DP paradigms), else 0 (what the ε bound is computed at)."""
    delta = getattr(build_options(paradigm, config.paradigm_options.get(paradigm)), "delta", None)
    if delta == "auto":  # DP-SGD's default: 1e-5 below 10^5 private samples (smaller above: a larger reachable bound)
        return DEFAULT_DELTA
    return float(delta) if isinstance(delta, (int, float)) and not isinstance(delta, bool) else 0.0


def plan_rows(config: ExperimentConfig) -> tuple[list[PlanRow], float, list[int]]:
    """Every :class:`PlanRow` of ``config``, the α of each bound, and the model counts shown."""
    attacks = list(config.attacks or ["lira_online"])
    decided = config.budget.until == "decided"
    if decided:
        schedule = Schedule.of(config.budget.max_models, config.budget.round, headline_attack(attacks), ALPHA)
        counts = sorted({schedule.first_look, schedule.max_models})
        keep = block_balanced_keep(config.n_models, config.audit.n_audit, config.seed, config.budget.round)
    else:
        schedule = Schedule(config.n_models, config.n_models, config.n_models, ALPHA)  # one look
        counts = [config.n_models]
        keep = balanced_keep(config.n_models, config.audit.n_audit, config.seed)
    bound_alpha = schedule.bound_alpha()
    epsilons: dict[tuple[int, float], float] = {}
    rows = []
    for paradigm in config.paradigms:
        delta = paradigm_delta(config, paradigm)
        for models in counts:
            is_in = keep[:models]
            if (models, delta) not in epsilons:  # a perfect attack: every IN pair above every OUT pair
                epsilons[(models, delta)] = epsilon_lower_bound_from_scores(is_in, is_in.astype(np.float64), delta=delta)
            n_in, n_out = int(is_in.sum()), int((~is_in).sum())
            for fpr in DECISION_FPRS:
                rows.append(PlanRow(
                    paradigm, models, fpr, n_in, n_out, fpr * n_out >= MIN_FALSE_POSITIVES,
                    smallest_separable_tpr(n_in, n_out, fpr, bound_alpha), chance_bound(n_in, n_out, fpr, bound_alpha),
                    epsilons[(models, delta)], delta,
                ))
    return rows, bound_alpha, counts


def _percent(value: float) -> str:
    return f"{value:.2%}" if value < 0.01 else f"{value:.1%}"


def format_plan(config: ExperimentConfig) -> str:
    """The text ``raypriv plan`` prints (module docstring)."""
    rows, bound_alpha, counts = plan_rows(config)
    attack = headline_attack(list(config.attacks or ["lira_online"]))
    if config.budget.until == "decided":
        looks = len(Schedule.of(config.budget.max_models, config.budget.round, attack).looks)
        budget = (f"until decided: rounds of {config.budget.round} up to {config.budget.max_models} models, {looks} "
                  f"looks; stops at 'leaks' or at 'bounded' under {config.budget.bounded_multiple:g}× chance")
    else:
        looks, budget = 1, f"fixed budget: {config.n_models} models"
    lines = [
        f"plan: {config.name}: {budget}; {config.audit.n_audit} audit samples; headline attack {attack}",
        f"each Clopper–Pearson bound at one-sided α={bound_alpha:.2g} (α={ALPHA:g} over {looks} look(s) × "
        f"{len(DECISION_FPRS)} FPR levels × 2 bounds)",
        "",
    ]
    header = ("paradigm", "models", "IN/OUT pairs", "FPR", "measurable", "smallest TPR separable from chance",
              "best bound at chance", "largest ε bound (δ)")
    table = [header]
    for r in rows:
        separable = "none" if r.min_tpr is None else f"{_percent(r.min_tpr)} ({r.min_tpr / r.fpr:.1f}× chance)"
        needed = int(np.ceil(MIN_FALSE_POSITIVES / r.fpr))
        table.append((
            r.paradigm, str(r.models), f"{r.n_in}/{r.n_out}", f"{r.fpr:.1%}".replace(".0%", "%"),
            "yes" if r.measurable else f"no (needs {needed} OUT pairs)",
            separable if r.measurable else "-",
            f"{r.chance_bound:.1f}×" if r.measurable and np.isfinite(r.chance_bound) else "-",
            f"{r.epsilon:.2f} (δ={r.delta:g})",
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in table]
    lines += [
        "",
        "A paradigm whose attack TPR is below the smallest separable TPR at every measurable level cannot be called "
        "'leaks' at this budget; 'best bound at chance' is the smallest bounded_multiple a leak-free paradigm can "
        f"reach; the ε bound is that of a perfect attack on {', '.join(map(str, counts))} models.",
    ]
    return "\n".join(lines) + "\n"
