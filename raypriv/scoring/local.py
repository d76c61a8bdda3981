"""The local scoring backend (``scoring.backend: local``): one process, bounded memory.

For each paradigm, :func:`score_paradigm` runs the plan's stages in the
driver:

1. **read**: :func:`raypriv.scoring.read.load_attack_inputs` streams every
   model's logits and keeps only float32 ``(M, N, Q)`` LiRA scores and
   ``(M, N)`` label log-probabilities: 0.6 GB at 1,024 models x 50,000
   samples x 2 queries;
2. **attacks**: :func:`raypriv.attacks.score_attacks` in blocks of audit
   samples; each attack is a float32 ``(M, N)`` array (0.2 GB);
3. **metrics**: :func:`raypriv.metrics.roc_metrics` summarises each attack's
   ROC from one sort of packed (score, label) keys and a walk in chunks,
   instead of sklearn's full-size float64 curve arrays;
4. **scores**: :func:`write_scores` appends ``scores.parquet`` in row groups
   of whole target models.

:func:`open_output` holds ``scores.parquet`` open across paradigms.  The Ray
backend (:mod:`raypriv.scoring.ray_data`) has the same two functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq

from raypriv.attacks import score_attacks
from raypriv.epsilon import ONE_RUN_ATTACK
from raypriv.results import AttackMetrics
from raypriv.run.format import scores_schema, scores_table, scores_write_options
from raypriv.run.store import RunStore
from raypriv.scoring.outputs import Curve, attack_metrics  # attack_metrics: defined beside both backends' shared code
from raypriv.scoring.plan import ScoringPlan
from raypriv.scoring.read import load_attack_inputs
from raypriv.scoring.release import score_release

log = logging.getLogger("raypriv")


def scoring_workers() -> int:
    """Threads for scoring: the machine's cores, at most 4 (NumPy and Arrow release the GIL)."""
    return max(1, min(4, os.cpu_count() or 1))


@contextlib.contextmanager
def open_output(plan: ScoringPlan, store: RunStore) -> Iterator[pq.ParquetWriter]:
    """``scores.parquet``, open for every paradigm's rows in turn, replacing the file atomically when the block ends."""
    attacks = plan.score_columns  # the model attacks, then the release attacks
    with store.table_writer("scores.parquet", scores_schema(attacks), replaces=True, **scores_write_options(attacks)) as writer:
        yield writer


def score_paradigm(plan: ScoringPlan, store: RunStore, paradigm: str, output: pq.ParquetWriter, *,
                   delta: float = 0.0) -> dict[str, tuple[AttackMetrics, Curve]]:
    """Every attack of the plan on one paradigm's stored logits: its metrics and ROC curve, by attack.

    Appends the paradigm's rows to ``output`` (:func:`open_output`).
    ``delta``: the δ the paradigm accounted, for the ε lower bound.
    """
    workers = scoring_workers()
    start = time.perf_counter()
    lira_scores, label_log_p = load_attack_inputs(plan, store, paradigm, workers=workers)
    population = None
    if plan.needs_population:  # RMIA's z
        population, _ = load_attack_inputs(plan, store, paradigm, population=True, workers=workers)
    read = time.perf_counter()
    scores = score_attacks(lira_scores, label_log_p, plan.keep, plan.attacks, rmia=plan.rmia, lira=plan.lira,
                           workers=workers, population=population)
    del population, lira_scores, label_log_p
    attacked = time.perf_counter()
    results = {attack: attack_metrics(plan.keep, score, delta, plan.tpr_readout, one_run=attack == ONE_RUN_ATTACK)
               for attack, score in scores.items()}
    release_results, release_scores = score_release(plan, store, paradigm, delta=delta)  # {} without a released set
    results.update(release_results)
    write_scores(output, paradigm, plan.keep, {**scores, **release_scores}, columns=plan.score_columns)
    log.info(
        "scored %s: %d models x %d samples; read %.1fs, attacks %.1fs, metrics and scores.parquet %.1fs",
        paradigm, plan.n_models, plan.n_audit, read - start, attacked - read, time.perf_counter() - attacked,
    )
    return results


def write_scores(writer: pq.ParquetWriter, paradigm: str, keep: np.ndarray, scores: dict[str, np.ndarray],
                 rows_per_group: int = 1 << 20, columns: list[str] | None = None) -> None:
    """Append one paradigm's rows to ``scores.parquet``, whole target models per row group.

    ``columns``: the file's attack columns (default: ``scores``' own); those without scores here are null.
    """
    n_models, n_audit = keep.shape
    models_per_group = max(1, rows_per_group // max(n_audit, 1))
    for start in range(0, n_models, models_per_group):
        stop = min(n_models, start + models_per_group)
        writer.write_table(scores_table(paradigm, start, keep[start:stop], {a: s[start:stop] for a, s in scores.items()},
                                        columns))


def scores_summary(path: str) -> dict:
    """Rows, row groups and columns of a ``scores.parquet`` (for logs and benchmarks)."""
    metadata = pq.read_metadata(path)
    return {"rows": metadata.num_rows, "row_groups": metadata.num_row_groups, "columns": metadata.schema.names}
