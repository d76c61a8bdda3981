"""Scoring the release threat model: a paradigm's stored synthetic sets to attack scores and metrics (both backends).

:func:`score_release` is called by each backend's ``score_paradigm`` after
the model attacks, for a paradigm of :attr:`ScoringPlan.release_paradigms`:

1. **statistics**: :func:`raypriv.release.paradigm_statistics` streams the
   paradigm's stored sets one model at a time, in this process (local
   backend) or as one Ray task per model (Ray backend); the driver keeps
   float32 ``(n_models, n_audit)`` per statistic;
2. **attacks**: :func:`raypriv.release.release_attack_scores`, the model
   attacks' LiRA and RMIA engines on those statistics, leave-one-out;
3. **metrics**: :func:`raypriv.scoring.outputs.attack_metrics`, the model
   attacks' ROC summary and ε bound, marked ``threat_model: release``.

Steps 2 and 3 run in the driver on both backends, on the same statistics
(step 1 calls the same function per model), so both backends give
identical numbers by construction.  Departure from the Ray backend's rule
for model attacks (no large array on the driver): the release scores are
``n_models x n_audit`` float32 per release attack on the driver, the size of
one model attack's output.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from raypriv.release import paradigm_release_attacks, paradigm_statistics, release_attack_scores, statistics_needed
from raypriv.results import AttackMetrics
from raypriv.run.store import RunStore
from raypriv.scoring.outputs import Curve, attack_metrics
from raypriv.scoring.plan import ScoringPlan

log = logging.getLogger("raypriv")


def score_release(plan: ScoringPlan, store: RunStore, paradigm: str, *, delta: float = 0.0,
                  ray_args: dict[str, Any] | None = None,
                  ) -> tuple[dict[str, tuple[AttackMetrics, Curve]], dict[str, np.ndarray]]:
    """The release attacks on ``paradigm``'s stored sets: ``({attack: (metrics, curve)}, {attack: float32 (M, N)})``.

    Both empty when the paradigm releases no set (or the plan has no release
    attacks).  ``ray_args``: compute the statistics as Ray tasks with these
    options (the Ray backend, Ray connected); None: in this process.
    """
    if not plan.releases(paradigm) or plan.release_inputs is None:
        return {}, {}
    start = time.perf_counter()
    names = paradigm_release_attacks(plan.release_attacks, paradigm in plan.release_inputs.texts)
    statistics = paradigm_statistics(store, paradigm, plan.n_models, plan.release_inputs, statistics_needed(names),
                                     ray_args=ray_args)
    read = time.perf_counter()
    scores = release_attack_scores(statistics, plan.keep, names, rmia=plan.rmia, lira=plan.lira)
    results = {}
    for name, score in scores.items():
        metrics, curve = attack_metrics(plan.keep, score, delta, plan.tpr_readout)
        results[name] = (metrics.with_threat_model("release"), curve)
    log.info("scored the release of %s: %d synthetic sets read in %.1fs, %d attacks in %.1fs", paradigm, plan.n_models,
             read - start, len(names), time.perf_counter() - read)
    return results, scores
