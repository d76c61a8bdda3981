"""Scoring a run in bounded memory: stream the logits, attack, write scores, summarise the ROC.

At 1,024 models x 50,000 audit samples x 2 queries the logits are 10^9
numbers per 10 classes; the whole float64 array would be 8 GB per class.
The audit never holds them:

1. :func:`load_attack_inputs` reads each model's Parquet file in row
   batches and reduces every row at once to the LiRA score ``s`` and the
   label's log-probability (:func:`raypriv.attacks.reduce_model`), kept as
   float32 ``(M, N, Q)`` and ``(M, N)``: 0.6 GB at that size.
2. :func:`raypriv.attacks.score_attacks` computes the attacks in blocks of
   audit samples; each attack is a float32 ``(M, N)`` array (0.2 GB).
3. :func:`write_scores` appends ``scores.parquet`` in row groups of whole
   target models.
4. :func:`raypriv.metrics.roc_metrics` summarises each attack's ROC from one
   sort of packed (score, label) keys and a walk over the ROC in chunks,
   instead of sklearn's full-size float64 curve arrays and a Clopper-Pearson
   quantile at every one of its points.

:func:`score_run` is that sequence for a whole run: it writes
``scores.parquet``, ``metrics.json``, ``metrics.csv`` and ``roc.png``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from raypriv.attacks import ATTACKS, _map, check_attacks, reduce_model, score_attacks
from raypriv.config import ExperimentConfig
from raypriv.metrics import audit_epsilon_lower_bound, roc_metrics
from raypriv.scoring_outputs import check_recipes, paradigm_entry, write_metrics_outputs
from raypriv.split import AuditSplit
from raypriv.store import (
    RunStore,
    scores_schema,
    scores_table,
    scores_write_options,
)

log = logging.getLogger("raypriv")


def score_array_gb(config: ExperimentConfig) -> float:
    """GB of one paradigm's float32 (models x samples x queries) LiRA score array, population rows included."""
    return config.n_models * (config.audit.n_audit + config.audit.n_population) * len(config.queries) * 4 / 2**30


def local_scoring_gb(config: ExperimentConfig) -> float:
    """GB of the arrays the local backend holds at once for one paradigm: the score array, the label
    log-probabilities and every attack's (models x samples) output, float32, plus float64 for the RMIA
    variants until they are ranked.  Its measured peak RSS is this plus 1.3 to 1.9 GB (interpreter, torch,
    per-block copies; benchmarks/RESULTS.md)."""
    attacks = check_attacks(config.attacks)
    staged = sum(ATTACKS[a].finish is not None for a in attacks)
    pair_bytes = 4 + 4 * len(attacks) + 8 * staged
    return score_array_gb(config) + config.n_models * config.audit.n_audit * pair_bytes / 2**30


def choose_backend(config: ExperimentConfig, store: RunStore) -> str:
    """``scoring.backend``, with ``auto`` resolved: ray for a cloud run directory or when the local backend's
    arrays (:func:`local_scoring_gb`) would exceed ``scoring.driver_memory_gb``."""
    backend = config.scoring.backend
    if backend != "auto":
        return backend
    cloud = "://" in store.uri and not store.uri.startswith("file://")
    return "ray" if cloud or local_scoring_gb(config) > config.scoring.driver_memory_gb else "local"


def scoring_workers() -> int:
    """Threads for scoring: the machine's cores, at most 4 (NumPy and Arrow release the GIL)."""
    return max(1, min(4, os.cpu_count() or 1))


def load_attack_inputs(
    store: RunStore,
    paradigm: str,
    n_models: int,
    n_audit: int,
    n_queries: int,
    labels: np.ndarray,
    need_scores: bool = True,
    need_loss: bool = True,
    workers: int = 1,
    timings: dict[str, float] | None = None,
    batch_elements: int = 1 << 22,
    n_population: int = 0,
    population: bool = False,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Pass 1: every model's logits, streamed and reduced as read.

    Returns float32 LiRA scores ``(n_models, n_audit, n_queries)`` (or None
    without ``need_scores``) and the label log-probability on query 0,
    ``(n_models, n_audit)`` (or None).  ``labels`` are the audit labels the
    models trained on.  Models are read on ``workers`` threads; with
    ``timings`` the seconds spent decoding Parquet (``read_seconds``) and
    reducing (``reduce_seconds``) are added up over threads.  Each read
    holds about ``batch_elements`` logits.  ``n_population``: the run's
    population set size; ``population``: read that set's rows instead
    (``labels`` then its labels, and ``n_audit`` rows become ``n_population``).
    """
    labels = np.asarray(labels, dtype=np.int64)
    n_rows = n_population if population else n_audit
    scores = np.empty((n_models, n_rows, n_queries), dtype=np.float32) if need_scores else None
    log_p = np.empty((n_models, n_rows), dtype=np.float32) if need_loss else None
    spent = np.zeros((n_models, 2))

    def load(model_id: int) -> None:
        spent[model_id] = reduce_model(store, paradigm, model_id, n_audit, n_queries, labels,
                                       None if scores is None else scores[model_id], None if log_p is None else log_p[model_id],
                                       batch_elements, n_population, population)

    _map(load, range(n_models), workers)
    if timings is not None:
        timings["read_seconds"] = timings.get("read_seconds", 0.0) + float(spent[:, 0].sum())
        timings["reduce_seconds"] = timings.get("reduce_seconds", 0.0) + float(spent[:, 1].sum())
    return scores, log_p


def write_scores(writer: pq.ParquetWriter, paradigm: str, keep: np.ndarray, scores: dict[str, np.ndarray], rows_per_group: int = 1 << 20) -> None:
    """Append one paradigm's rows to ``scores.parquet``, whole target models per row group."""
    n_models, n_audit = keep.shape
    models_per_group = max(1, rows_per_group // max(n_audit, 1))
    for start in range(0, n_models, models_per_group):
        stop = min(n_models, start + models_per_group)
        writer.write_table(scores_table(paradigm, start, keep[start:stop], {a: s[start:stop] for a, s in scores.items()}))


def scores_summary(path: str) -> dict[str, Any]:
    """Rows, row groups and columns of a ``scores.parquet`` (for logs and benchmarks)."""
    metadata = pq.read_metadata(path)
    return {"rows": metadata.num_rows, "row_groups": metadata.num_row_groups, "columns": metadata.schema.names}


# ------------------------------------------------------------------ a whole run


def score_run(config: ExperimentConfig, store: RunStore, split: AuditSplit, models: pd.DataFrame,
              show_progress: bool = False) -> dict[str, Any]:
    """Run the attacks on the stored logits; write scores, metrics and the ROC plot.

    Streams in bounded memory (see :mod:`raypriv.scoring`): each paradigm's
    logits are reduced model by model as they are read, attacked in blocks of
    audit samples, appended to ``scores.parquet`` in row groups, and
    summarised without materialising full ROC curves.
    """
    from raypriv.scoring_ray import score_run_ray

    if choose_backend(config, store) == "ray":  # the same functions, run as Ray Data tasks on the workers
        return score_run_ray(config, store, split, models, show_progress=show_progress)
    metrics: dict[str, Any] = {}
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    n_models, n_audit = split.keep.shape
    is_in = split.keep
    attacks = list(config.attacks)
    needs_scores = any(a != "loss" for a in attacks)
    workers = scoring_workers()
    with store.table_writer("scores.parquet", scores_schema(attacks), replaces=True, **scores_write_options(attacks)) as writer:
        for paradigm in config.paradigms:
            rows = models[models.paradigm == paradigm]
            check_recipes(config, paradigm, rows)
            start = time.perf_counter()
            lira_scores, label_log_p = load_attack_inputs(
                store, paradigm, n_models, n_audit, len(config.queries), split.audit_labels,
                need_scores=needs_scores, need_loss="loss" in attacks, workers=workers, n_population=config.audit.n_population,
            )
            n_population, population = config.audit.n_population, None
            if n_population and any(ATTACKS[a].family == "rmia" for a in attacks):  # RMIA's z
                population, _ = load_attack_inputs(
                    store, paradigm, n_models, n_audit, len(config.queries), split.population_labels,
                    need_loss=False, workers=workers, n_population=n_population, population=True,
                )
            read = time.perf_counter()
            scores = score_attacks(
                lira_scores, label_log_p, split.keep, attacks, gamma=config.rmia.gamma, workers=workers,
                center=config.lira.center, population=population,
            )
            del population
            del lira_scores, label_log_p
            attacked = time.perf_counter()
            entry = paradigm_entry(rows)
            delta = entry.get("info", {}).get("delta", 0.0)  # DP paradigms report theirs
            for attack, score in scores.items():
                entry[attack], curves.setdefault(paradigm, {})[attack] = attack_metrics(is_in, score, delta)
            metrics[paradigm] = entry
            write_scores(writer, paradigm, is_in, scores)
            del scores
            log.info(
                "scored %s: %d models x %d samples; read %.1fs, attacks %.1fs, metrics and scores.parquet %.1fs",
                paradigm, n_models, n_audit, read - start, attacked - read, time.perf_counter() - attacked,
            )

    write_metrics_outputs(config, store, metrics, curves, n_models, n_audit)
    return metrics


def attack_metrics(is_in: np.ndarray, score: np.ndarray, delta: float) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    """One attack's metrics.json entry and ROC curve from its ``(n_models, n_audit)`` scores (the local backend;
    the Ray backend's partitioned metrics, :mod:`raypriv.metrics_partitioned`, are equal to it)."""
    metrics, curve = roc_metrics(is_in, score)
    metrics["eps_lower_bound"] = audit_epsilon_lower_bound(is_in, score, delta)  # valid, per sample
    return metrics, curve
