"""Scoring a whole run: every paradigm through one backend, then the metrics files.

:func:`score_run` is the audit's last step.  For each paradigm of the plan it
checks that the stored models come from the config's recipe, starts the
paradigm's metrics from its model rows, and lets the plan's backend run the
stages (read, attacks, metrics, scores: :mod:`raypriv.scoring.plan`).  Both
backends write the same ``scores.parquet`` and give the same numbers.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pandas as pd

import raypriv.scoring.local as local
import raypriv.scoring.ray_data as ray_data
from raypriv.results import ParadigmMetrics, RunMetrics
from raypriv.run.store import RunStore
from raypriv.scoring.outputs import Curve, check_recipes, paradigm_metrics, write_metrics_files
from raypriv.scoring.plan import ScoringPlan

# A backend is a module with ``open_output(plan, store, **options)`` (a context manager holding what lives
# across paradigms) and ``score_paradigm(plan, store, paradigm, output, *, delta)``.
BACKENDS: dict[str, ModuleType] = {"local": local, "ray": ray_data}

RunCurves = dict[str, dict[str, Curve]]  # paradigm -> attack -> ROC curve


def score_run(plan: ScoringPlan, store: RunStore, models: pd.DataFrame, **backend_options: Any) -> tuple[RunMetrics, RunCurves]:
    """Run the plan's attacks on the stored logits; write ``scores.parquet``, ``metrics.json`` and ``metrics.csv``.

    ``models``: the run's model rows (``models.parquet``).  Returns each
    paradigm's metrics and each attack's ROC curve (for ``roc.png``).
    ``backend_options`` go to the backend's ``open_output`` (the Ray
    backend's ``on_stage`` and ``engine_elements``, for benchmarks and tests).
    """
    backend = BACKENDS[plan.backend]
    metrics: RunMetrics = {}
    curves: RunCurves = {}
    with backend.open_output(plan, store, **backend_options) as output:
        for paradigm in plan.paradigms:
            rows = models[models.paradigm == paradigm]
            check_recipes(plan, paradigm, rows)
            entry: ParadigmMetrics = paradigm_metrics(rows)
            results = backend.score_paradigm(plan.for_paradigm(paradigm), store, paradigm, output, delta=entry.delta)
            metrics[paradigm] = entry.with_attacks({attack: values for attack, (values, _) in results.items()})
            curves[paradigm] = {attack: curve for attack, (_, curve) in results.items()}
    write_metrics_files(store, metrics)
    return metrics, curves
