"""What both scoring backends share: the recipe check, the model rows' part of metrics.json, and the files.

:func:`raypriv.scoring.score_run` (local) and
:func:`raypriv.scoring_ray.score_run_ray` compute the attacks' metrics their
own way; both start each paradigm's metrics.json entry from its model rows
(:func:`paradigm_entry`) and end with :func:`write_metrics_outputs`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from raypriv.config import ExperimentConfig
from raypriv.errors import RayprivError
from raypriv.store import RunStore


def paradigm_entry(rows: pd.DataFrame) -> dict[str, Any]:
    """metrics.json's per-paradigm numbers that come from the model rows (utility, cost, reported info)."""
    entry: dict[str, Any] = {
        "test_acc": float(rows.test_acc.mean()),
        "test_acc_std": float(rows.test_acc.std(ddof=1)) if len(rows) > 1 else 0.0,
        "n_models": int(len(rows)),
        "synth_seconds_mean": float(rows.synth_seconds.mean()),
        "train_seconds_mean": float(rows.train_seconds.mean()),
    }
    reported = pd.DataFrame([json.loads(info) for info in rows["info"]])
    numeric = reported.select_dtypes("number")
    if not numeric.empty:
        entry["info"] = {key: float(value) for key, value in numeric.mean().items()}
    return entry


def check_recipes(config: ExperimentConfig, paradigm: str, rows: pd.DataFrame) -> None:
    """Refuse to attack models of another recipe than the config's."""
    # Here, not at the top: raypriv.experiment imports the paradigm and architecture tables (torch), which
    # the scoring modules' readers (benchmark workers, Ray Data tasks) never need.
    from raypriv.experiment import recipe_hash

    hashes = set(rows.recipe_hash)
    if hashes != {recipe_hash(config, paradigm)}:
        raise RayprivError(
            f"models of {paradigm} come from recipes {sorted(hashes)}, not {recipe_hash(config, paradigm)}; "
            "the attack will not mix recipes. Use a new --out"
        )


def write_metrics_outputs(
    config: ExperimentConfig, store: RunStore, metrics: dict[str, Any],
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], n_models: int, n_audit: int,
) -> None:
    """metrics.json, metrics.csv and roc.png from every paradigm's metrics and ROC curves (both backends)."""
    attacks = list(config.attacks)
    store.write_json("metrics.json", metrics)
    flat = [
        {"paradigm": p, "attack": a, **{k: v for k, v in m.items()}, "test_acc": e["test_acc"]}
        for p, e in metrics.items()
        for a, m in e.items()
        if isinstance(m, dict) and "auc" in m
    ]
    store.write_bytes("metrics.csv", pd.DataFrame(flat).to_csv(index=False).encode())
    from raypriv.report.figures import (  # matplotlib only once the scores are written
        png_bytes,
        roc_figure,
    )

    # One paradigm: a panel with a curve per attack; several: a panel per attack, a curve per paradigm.
    panels = curves if len(curves) == 1 else {a: {p: c[a] for p, c in curves.items() if a in c} for a in attacks}
    title = f"{config.name}: {n_models} models x {n_audit} audit samples (leave-one-out)"
    store.write_bytes("roc.png", png_bytes(roc_figure(panels, title)))

