"""Reading a paradigm's stored logits into attack inputs, model by model, reduced as they are read (both backends).

At 1,024 models x 50,000 audit samples x 2 queries the logits are 10^9
numbers per 10 classes; the whole float64 array would be 8 GB per class.
Scoring never holds them: :func:`reduce_model` reads one model's Parquet file
in row batches (:func:`raypriv.run.store.iter_logits`, which checks the file)
and reduces every row at once to the LiRA score ``s`` and the label's
log-probability (:func:`raypriv.attacks.reduce_logits`), float32, ``C``
times smaller.  RMIA keeps every query's probability (it votes per query):
at ``rmia.temperature: 1`` it is ``sigmoid`` of the LiRA score, otherwise
one more float32 channel per query holds the tempered score
(``ScoringPlan.n_channels``).  :func:`load_attack_inputs` does that for every model of a
paradigm on a few threads (the local backend); the Ray backend calls
:func:`reduce_model` in its read tasks.
"""

from __future__ import annotations

import time

import numpy as np

from raypriv.attacks import map_threads, reduce_logits, tempered_scores, to_float32
from raypriv.errors import RayprivError
from raypriv.run.format import logits_path, model_row_path
from raypriv.run.store import RunStore, iter_logits
from raypriv.scoring.plan import ScoringPlan


def reduce_model(store: RunStore, paradigm: str, model_id: int, n_audit: int, n_queries: int, labels: np.ndarray,
                 scores: np.ndarray | None, log_p: np.ndarray | None, batch_elements: int = 1 << 22,
                 n_population: int = 0, population: bool = False, temperature: float = 1.0) -> tuple[float, float]:
    """One model's stored logits, read in row batches and reduced as they are read (both scoring backends).

    Fills ``scores`` (``(rows, C)`` float32: the ``Q`` per-query LiRA scores,
    then, when ``C = 2 Q``, RMIA's per-query channel at ``temperature``
    (:func:`raypriv.attacks.tempered_scores`): RMIA keeps every query's
    probability, never only their mean) and ``log_p`` (``(rows,)`` float32
    label log-probability on query 0); either may be None.  ``labels``:
    the rows' labels (the audit's, or the population set's with ``population``).
    Returns the seconds spent reading and reducing.
    """
    batches = iter_logits(store, paradigm, model_id, n_audit, n_queries, batch_elements, n_population, population)
    read = reduce = 0.0
    while True:
        start = time.perf_counter()
        batch = next(batches, None)
        middle = time.perf_counter()
        read += middle - start
        if batch is None:
            return read, reduce
        sample, query, logits = batch
        if not np.isfinite(logits).all():  # a model that diverged before raypriv refused to store such models
            raise RayprivError(
                f"{store.path(logits_path(paradigm, model_id))} holds non-finite logits (model {model_id} of "
                f"{paradigm} diverged, stored by a raypriv from before diverged models were refused); delete it and "
                f"{store.path(model_row_path(paradigm, model_id))} and rerun to retrain that model"
            )
        score, label_log_p = reduce_logits(logits, labels[sample])
        if scores is not None:
            scores[sample, query] = to_float32(score)
            if scores.shape[1] > n_queries:
                scores[sample, n_queries + query] = to_float32(tempered_scores(logits, labels[sample], temperature))
        if log_p is not None:
            first = query == 0
            log_p[sample[first]] = to_float32(label_log_p[first])
        reduce += time.perf_counter() - middle


def load_attack_inputs(
    plan: ScoringPlan,
    store: RunStore,
    paradigm: str,
    *,
    population: bool = False,
    workers: int = 1,
    timings: dict[str, float] | None = None,
    batch_elements: int = 1 << 22,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Pass 1 of local scoring: every model's logits of ``paradigm``, streamed and reduced as read.

    Returns float32 scores ``(n_models, rows, plan.n_channels)`` (None when no
    attack of the plan needs them) and the label log-probability on query 0,
    ``(n_models, rows)`` (None when the plan has no loss attack).  ``rows``
    are the audit samples, or with ``population`` the population set's (then
    only the scores are read: RMIA's ``z``).  Models are read on ``workers``
    threads; with ``timings`` the seconds spent decoding Parquet
    (``read_seconds``) and reducing (``reduce_seconds``) are added up over
    threads.  Each read holds about ``batch_elements`` logits.
    """
    labels = plan.population_labels if population else plan.audit_labels
    n_rows = plan.n_population if population else plan.n_audit
    shape = (plan.n_models, n_rows)
    scores = np.empty((*shape, plan.n_channels), dtype=np.float32) if (plan.needs_scores or population) else None
    log_p = np.empty(shape, dtype=np.float32) if (plan.needs_loss and not population) else None
    spent = np.zeros((plan.n_models, 2))

    def load(model_id: int) -> None:
        spent[model_id] = reduce_model(
            store, paradigm, model_id, plan.n_audit, plan.n_queries, labels,
            None if scores is None else scores[model_id], None if log_p is None else log_p[model_id],
            batch_elements, plan.n_population, population, plan.rmia.temperature,
        )

    map_threads(load, range(plan.n_models), workers)
    if timings is not None:
        timings["read_seconds"] = timings.get("read_seconds", 0.0) + float(spent[:, 0].sum())
        timings["reduce_seconds"] = timings.get("reduce_seconds", 0.0) + float(spent[:, 1].sum())
    return scores, log_p


def read_logits(store: RunStore, paradigm: str, n_models: int, n_audit: int, n_queries: int) -> np.ndarray:
    """All logits of one paradigm as ``float32[n_models, n_audit, n_queries, C]``.

    The whole array, for tests, small runs and analysis; scoring streams
    with :func:`reduce_model` instead.
    """
    stacked = None
    for model_id in range(n_models):
        for sample, query, logits in iter_logits(store, paradigm, model_id, n_audit, n_queries):
            if stacked is None:
                stacked = np.empty((n_models, n_audit, n_queries, logits.shape[1]), dtype=np.float32)
            stacked[model_id, sample, query] = logits
    if stacked is None:
        raise ValueError("read_logits needs n_models >= 1")
    return stacked
