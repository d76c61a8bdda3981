"""What both scoring backends share: the recipe check, the model rows' part of the metrics, and the files.

Each backend computes the attacks' metrics its own way; both start a
paradigm's :class:`raypriv.results.ParadigmMetrics` from its model rows
(:func:`paradigm_metrics`), and :func:`raypriv.scoring.score.score_run` ends
with :func:`write_metrics_files` (``metrics.json`` and ``metrics.csv``).
``roc.png`` is drawn by the driver from the curves scoring returns
(:func:`raypriv.report.figures.write_roc_png`), so scoring never imports
matplotlib.
"""

from __future__ import annotations

import json
from typing import Mapping

import numpy as np
import pandas as pd

from raypriv.epsilon import one_run_bounds
from raypriv.errors import RayprivError
from raypriv.metrics import audit_epsilon_lower_bound, roc_metrics
from raypriv.results import AttackMetrics, ParadigmMetrics, metrics_to_json
from raypriv.run.store import RunStore
from raypriv.scoring.plan import ScoringPlan

Curve = tuple[np.ndarray, np.ndarray]  # an attack's ROC curve: (fpr, tpr), from the highest threshold down


def paradigm_metrics(rows: pd.DataFrame) -> ParadigmMetrics:
    """A paradigm's utility, cost and reported info from its model rows (no attacks yet).

    ``info``: the mean over models of each number the paradigm reported, and
    each string every model reported alike (the ``accountant`` of an accounted
    ε); other strings are left out.
    """
    reported = pd.DataFrame([json.loads(info) for info in rows["info"]])
    numeric = reported.select_dtypes("number")
    info: dict[str, float | str] = {key: float(value) for key, value in numeric.mean().items()} if not numeric.empty else {}
    for key in reported.columns.difference(numeric.columns, sort=False):  # a string every model reports alike
        values = reported[key].dropna()
        if len(values) == len(reported) and values.map(lambda v: isinstance(v, str)).all() and values.nunique() == 1:
            info[key] = str(values.iloc[0])  # e.g. the accountant beside an accounted epsilon
    return ParadigmMetrics(
        test_acc=float(rows.test_acc.mean()),
        test_acc_std=float(rows.test_acc.std(ddof=1)) if len(rows) > 1 else 0.0,
        n_models=int(len(rows)),
        synth_seconds_mean=float(rows.synth_seconds.mean()),
        train_seconds_mean=float(rows.train_seconds.mean()),
        info=info,
    )


def attack_metrics(is_in: np.ndarray, score: np.ndarray, delta: float,
                   tpr_readout: str = "interpolate", one_run: bool = False) -> tuple[AttackMetrics, Curve]:
    """One attack's metrics and ROC curve from its ``(n_models, n_audit)`` scores; TPR read as ``tpr_readout``.

    ``one_run``: add the one-run ε bounds (:func:`raypriv.epsilon.one_run_bounds`; the ``loss`` attack's).
    The Ray backend's partitioned metrics (:mod:`raypriv.scoring.partitions`)
    are equal to these, exactly.
    """
    values, curve = roc_metrics(is_in, score, tpr_readout=tpr_readout)
    values["eps_lower_bound"] = audit_epsilon_lower_bound(is_in, score, delta)  # all pairs, a fixed grid
    if one_run:
        values.update(one_run_bounds(is_in, score, delta).to_json())
    return AttackMetrics.from_json(values, "scoring"), curve


def check_recipes(plan: ScoringPlan, paradigm: str, rows: pd.DataFrame) -> None:
    """Refuse to attack models of another recipe than the plan's (the driver's fingerprint of the config)."""
    hashes = set(rows.recipe_hash)
    expected = plan.recipe_hashes[paradigm]
    if hashes != {expected}:
        raise RayprivError(
            f"models of {paradigm} come from recipes {sorted(hashes)}, not {expected}; "
            "the attack will not mix recipes. Use a new --out"
        )


def write_metrics_files(store: RunStore, metrics: Mapping[str, ParadigmMetrics]) -> None:
    """``metrics.json`` (:func:`raypriv.results.metrics_to_json`) and ``metrics.csv`` (one row per paradigm and attack)."""
    store.write_json("metrics.json", metrics_to_json(metrics))
    flat = [
        {"paradigm": paradigm, "attack": attack, **values.to_json(), "test_acc": entry.test_acc}
        for paradigm, entry in metrics.items()
        for attack, values in entry.attacks.items()
    ]
    store.write_bytes("metrics.csv", pd.DataFrame(flat).to_csv(index=False).encode())


