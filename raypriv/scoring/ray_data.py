"""Scoring on Ray Data (``scoring.backend: ray``): the local path's functions, run as tasks on the workers.

The local backend (:mod:`raypriv.scoring.local`) reads every model's logits into
the driver.  This one keeps every large array off the driver and moves each
step to Ray Data tasks (or plain Ray tasks for the small cross-block steps),
calling the *same* functions, so the numbers are the same by construction
(``metrics.json`` byte-identical, ``scores.parquet`` an equal table):

1. **Read and reduce** (``READ_TASKS_PER_CPU`` tasks per CPU, each reading
   its model files in turn): :func:`raypriv.scoring.read.reduce_model`, as the
   local path reads a model (:func:`raypriv.run.store.iter_logits`' checks, so a
   corrupt file gives the local path's error, naming the file, and
   :func:`raypriv.attacks.reduce_logits`); each model's reduced rows leave the
   task cut into blocks of audit samples.
2. **Per-sample statistics**: ``groupby("block").map_groups`` puts every
   model's rows of one sample block in one task (a leave-one-out median needs
   all models of a sample).  The blocks are whole multiples of
   :func:`raypriv.attacks.score_attacks`' own sample blocks, and each task
   walks those sub-blocks with :class:`raypriv.attacks.SampleBlock`, so
   every float is computed as locally.  Cross-block steps, each in one worker
   task whose result the driver only passes on as a reference: the
   fixed-variance attacks' pooled variances (partial sums per sub-block,
   added in the local order), RMIA offline's ``a``
   (:func:`raypriv.attacks.rmia.fit_offline_a` on every pair's ``Pr(x|theta)``), the
   population set's RMIA ratios (``audit.n_population``), and RMIA's ranks
   over each target's whole row (``groupby("model_id")``, then the attack's
   ``finish``).
3. **Metrics**, exact, from range partitions of each attack's scores
   (:mod:`raypriv.scoring.partitions`): a sample of scores per block places
   the boundaries, a task per block cuts its packed (score, labels) keys at
   them, and a task per score range walks its part of the ROC and of the
   epsilon bound's threshold search.  The driver holds block references,
   counts and curve points: O(blocks x ranges + curve points).
4. **scores.parquet**: ``write_parquet`` from the workers, into a temporary
   folder renamed to ``scores.parquet`` at the end (the local backend writes
   one file there; readers take either: ``pandas.read_parquet``,
   ``pyarrow.parquet.read_table``).  Same schema, version metadata, zstd and
   byte-stream-split encodings, row groups of whole targets; the files are
   named so that their sorted order is the local file's row order.

Ray Data settings, and why (the ``DataContext`` fields are set while scoring
by :func:`raypriv.cluster.ray_data_settings`, which says why, and put back
as they were afterwards):

* ``from_items(..., override_num_blocks=4 x CPUs)``: Ray Data's guess is one
  block per item here; one task per model file costs Ray's per-task overhead
  (about 0.2 s on 2 cores) 1,024 times, and the driver's executor state grew
  with it (``benchmarks/RESULTS.md``).
* every task requests ``num_cpus = scoring.num_cpus`` and ``num_gpus = 0``:
  scoring runs beside or after training, never on a GPU.
* a RayprivError raised in a task (a corrupt logits file) reaches the
  driver with its message, which :func:`open_output` re-raises without Ray's
  wrapper or traceback (the ``ray.data`` logger is silenced while scoring: it
  would print the traceback first; the stages log their own progress to
  ``raypriv``).
* Ray Data's progress bars follow the audit's ``show_progress``: blocks done,
  rows per second and the remaining blocks per stage.
* block size: rows carry whole sample blocks as binary columns (about
  ``2^22`` scores per attack task, ``scoring.block_samples`` to change), far
  below ``target_max_block_size``, so Ray Data never splits a block's rows.
  Object-store spilling keeps Ray's defaults (spill to local disk).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from raypriv.attacks import (
    ATTACKS,
    LiraOptions,
    RmiaOptions,
    SampleBlock,
    group_sizes,
    pooled_probability,
    staged_queries,
    to_float32,
)
from raypriv.attacks.rmia import fit_offline_a, population_log_ratio
from raypriv.cluster import cluster_cpus, connected, ray_data_settings
from raypriv.errors import RayprivError
from raypriv.results import AttackMetrics
from raypriv.run.format import scores_schema, scores_table, scores_write_options, versioned_schema
from raypriv.run.store import RunStore
from raypriv.scoring.outputs import Curve
from raypriv.scoring.plan import ScoringPlan
from raypriv.scoring.ray_metrics import metrics_on_ray, score_matrix
from raypriv.scoring.read import reduce_model
from raypriv.scoring.release import score_release

log = logging.getLogger("raypriv")

ENGINE_BLOCK_ELEMENTS = 1 << 20  # score_attacks' default block_elements: the sub-blocks the pooled sums follow
TASK_SCORES = 1 << 22  # scores per attack task when scoring.block_samples is null
ROWS_PER_GROUP = 1 << 20  # write_scores' default row group
READ_TASKS_PER_CPU = 4  # enough tasks to balance the nodes and to retry a lost one cheaply
def _user_error(exc: BaseException) -> RayprivError | None:
    """The RayprivError a task raised, out of Ray's wrappers (RayTaskError, UserCodeException, causes)."""
    from ray.exceptions import RayTaskError

    stack, seen = [exc], set()
    while stack:
        error = stack.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, RayprivError) and not isinstance(error, RayTaskError):
            return error
        stack += [getattr(error, "cause", None), error.__cause__, error.__context__]
    return None


def _task_args(plan: ScoringPlan) -> dict[str, Any]:
    return {"num_cpus": plan.num_cpus, "num_gpus": 0}


def _blocks(n_samples: int, n_models: int, n_queries: int, block_samples: int | None, engine_elements: int) -> tuple[int, int]:
    """(engine sub-block, task block) in samples; the task block is a whole number of engine sub-blocks."""
    sub = max(1, engine_elements // (n_models * n_queries))  # as score_attacks cuts its blocks
    wanted = block_samples or max(1, TASK_SCORES // (n_models * n_queries))
    return sub, sub * max(1, -(-wanted // sub))


# ------------------------------------------------------------------ the tasks (module level: Ray pickles them)


def _reduce_models(batch: dict[str, np.ndarray], uri: str, paradigm: str, n_audit: int, n_queries: int,
                   n_population: int, labels: np.ndarray, task_block: int, n_channels: int,
                   temperature: float) -> dict[str, list]:
    """Stage 1: each model's logits -> float32 scores (N, C) (LiRA's, then RMIA's tempered channels) and query-0
    log p_y (N,), cut into sample blocks."""
    store = RunStore(uri)
    out: dict[str, list] = {"model_id": [], "block": [], "scores": [], "log_p": []}
    for model_id in batch["model_id"]:
        scores = np.empty((n_audit, n_channels), dtype=np.float32)
        log_p = np.empty(n_audit, dtype=np.float32)
        reduce_model(store, paradigm, int(model_id), n_audit, n_queries, labels, scores, log_p, n_population=n_population,
                     temperature=temperature)
        for block, start in enumerate(range(0, n_audit, task_block)):
            out["model_id"].append(int(model_id))
            out["block"].append(block)
            out["scores"].append(scores[start : start + task_block].tobytes())
            out["log_p"].append(log_p[start : start + task_block].tobytes())
    return out


def _stack_block(group: dict[str, np.ndarray], n_queries: int) -> dict[str, list]:
    """Stage 2a: one sample block's rows of every model -> one row of (M, B, Q) scores and (M, B) log p."""
    order = np.argsort(group["model_id"], kind="stable")
    scores = np.stack([np.frombuffer(group["scores"][i], dtype=np.float32) for i in order])
    log_p = np.stack([np.frombuffer(group["log_p"][i], dtype=np.float32) for i in order])
    return {"block": [int(group["block"][0])], "n_models": [len(order)], "scores": [scores.tobytes()], "log_p": [log_p.tobytes()]}


def _unpack(row: dict[str, Any], n_queries: int) -> tuple[int, np.ndarray, np.ndarray]:
    n_models = int(row["n_models"])
    scores = np.frombuffer(row["scores"], dtype=np.float32).reshape(n_models, -1, n_queries)
    return int(row["block"]), scores, np.frombuffer(row["log_p"], dtype=np.float32).reshape(n_models, -1)


def _sub_blocks(block: int, width: int, task_block: int, sub: int) -> list[tuple[int, int, int]]:
    """(start in the task block, stop in it, global start) of each engine sub-block."""
    first = block * task_block
    return [(a, min(width, a + sub), first + a) for a in range(0, width, sub)]


def _variance_partials(
    row: dict[str, Any], keep: Any, n_queries: int, task_block: int, sub: int, sides: list[bool], n_channels: int,
    lira: LiraOptions,
) -> dict[str, Any]:
    """Stage 2b (fixed-variance attacks only): per engine sub-block, each side's (Q, M) sum of per-sample variances."""
    import ray

    keep = ray.get(keep)
    block, scores, _ = _unpack(row, n_channels)
    local = keep[:, block * task_block : block * task_block + scores.shape[1]]
    parts = [[SampleBlock(scores, local, a, b, lira=lira, n_queries=n_queries).variance(side).sum(axis=0) for side in sides]
             for a, b, _ in _sub_blocks(block, scores.shape[1], task_block, sub)]
    return {"block": block, "partials": np.asarray(parts, dtype=np.float64).tobytes()}


def _attack_block(batch: dict[str, np.ndarray], keep: Any, attacks: list[str], n_queries: int, task_block: int, sub: int,
                  pooled: Any, lira: LiraOptions, rmia: RmiaOptions, offline_a: Any, n_channels: int) -> dict[str, list]:
    """Stage 2c: every attack on one sample block, per engine sub-block -> one row per (model, block)."""
    import ray

    keep = ray.get(keep)
    pooled = ray.get(pooled) if isinstance(pooled, ray.ObjectRef) else pooled
    offline_a = ray.get(offline_a) if isinstance(offline_a, ray.ObjectRef) else offline_a
    out: dict[str, list] = {"model_id": [], "block": [], **{a: [] for a in attacks}}
    for row in ({k: v[i] for k, v in batch.items()} for i in range(len(batch["block"]))):
        block, scores, log_p = _unpack(row, n_channels)
        local = keep[:, block * task_block : block * task_block + scores.shape[1]]
        values = {a: [] for a in attacks}
        for a, b, _ in _sub_blocks(block, scores.shape[1], task_block, sub):
            sample_block = SampleBlock(scores, local, a, b, pooled=pooled, lira=lira, offline_a=offline_a,
                                       n_queries=n_queries)
            for name in attacks:
                attack = ATTACKS[name]
                if attack.block is None:  # the loss attack: the input itself
                    values[name].append(log_p[:, a:b])
                    continue
                value = np.swapaxes(attack.block(sample_block, rmia), 0, 1)  # (M, B) or (M, B, Q)
                values[name].append(value if attack.finish is not None else to_float32(value))  # finish: float64 until then
        for model_id in range(scores.shape[0]):
            out["model_id"].append(model_id)
            out["block"].append(block)
            for name in attacks:
                out[name].append(np.ascontiguousarray(np.concatenate([v[model_id] for v in values[name]], axis=0)).tobytes())
    return out


def _finish_model(group: dict[str, np.ndarray], attacks: list[str], rmia: RmiaOptions, n_queries: int,
                  versus: Any = None) -> dict[str, list]:
    """Stage 3: one target's blocks in sample order -> its float32 score row per attack (RMIA ranks the whole row,
    against the population set's ratios ``versus`` when the run has one)."""
    import ray

    versus = ray.get(versus) if versus is not None else None
    order = np.argsort(group["block"], kind="stable")
    model_id = int(group["model_id"][0])
    out: dict[str, list] = {"model_id": [model_id]}
    for name in attacks:
        finish = ATTACKS[name].finish
        dtype = np.float64 if finish is not None else np.float32
        row = np.concatenate([np.frombuffer(group[name][i], dtype=dtype) for i in order])
        if finish is not None:
            z = None if versus is None else versus[name][model_id : model_id + 1]
            shape = (1, -1, staged_queries(name, n_queries, rmia)) if rmia.per_query else (1, -1)  # as the engine stages it
            row = np.asarray(finish(row.reshape(shape), rmia, z)[0], dtype=np.float32)  # as the local float32 assignment casts
        out[name] = [row.tobytes()]
    return out


def _gather(refs: list, column: str, shape: tuple[int, ...], dtype: type, task_block: int = 0) -> np.ndarray:
    """One column of per-model (or stacked per-block) rows, from Ray Data's block refs, into a ``shape`` array (on a worker)."""
    import ray

    out = np.empty(shape, dtype=dtype)
    for ref in refs:
        table = ray.get(ref)
        for row in table.select([c for c in ("model_id", "block", "n_models", column) if c in table.column_names]).to_pylist():
            if "model_id" in row:
                out[row["model_id"]] = np.frombuffer(row[column], dtype=dtype).reshape(shape[1:])
            else:  # a stacked sample block: its start is given by the caller's block size
                values = np.frombuffer(row[column], dtype=dtype).reshape(row["n_models"], -1, *shape[2:])
                start = row["block"] * task_block
                out[:, start : start + values.shape[1]] = values
    return out


def _pool_variances(refs: list, sides: list[bool], n_queries: int, n_models: int, n_audit: int) -> dict[bool, np.ndarray]:
    """The fixed-variance attacks' pooled variances from every sub-block's partial sums, added in the local order."""
    import ray

    rows = [row for ref in refs for row in ray.get(ref).to_pylist()]
    partial = [part for row in sorted(rows, key=lambda r: r["block"])
               for part in np.frombuffer(row["partials"], dtype=np.float64).reshape(-1, len(sides), n_queries, n_models)]
    return {side: sum(part[i] for part in partial) / n_audit for i, side in enumerate(sides)}


def _label_probabilities(row: dict[str, Any], n_queries: int, n_channels: int) -> dict[str, Any]:
    """Stage 2b (RMIA offline only): one sample block's Pr(x|theta), as SampleBlock.label_probability computes it."""
    block, scores, _ = _unpack(row, n_channels)
    probs = pooled_probability(scores, n_queries)  # per pair: the mean over its queries, however rows are cut
    return {"block": block, "n_models": scores.shape[0], "probs": probs.tobytes()}


def _fit_offline(refs: list, keep: np.ndarray, task_block: int, gamma: float) -> np.ndarray:
    """RMIA offline's ``a`` per target from every pair's Pr(x|theta) (float64, models x samples), on a worker."""
    return fit_offline_a(_gather(refs, "probs", keep.shape, np.float64, task_block), keep, gamma)


def _population_ratios(
    refs: list, shape: tuple[int, int, int], names: list[str], offline_a: np.ndarray | None, rmia: RmiaOptions,
    n_queries: int,
) -> dict[str, np.ndarray]:
    """Each RMIA variant's population log ratios (:func:`raypriv.attacks.rmia.population_log_ratio`), on a worker."""
    scores = _gather(refs, "scores", shape, np.float32)
    signal = scores[:, :, n_queries:] if shape[2] > n_queries else scores
    return {name: population_log_ratio(signal, rmia, offline_a if name == "rmia_offline" else None) for name in names}


def _reduce_population(batch: dict[str, np.ndarray], uri: str, paradigm: str, n_audit: int, n_queries: int,
                       n_population: int, labels: np.ndarray, n_channels: int, temperature: float) -> dict[str, list]:
    """Each model's population-set logits -> float32 scores (P, C): RMIA's ``z`` (as the local path reads them)."""
    store = RunStore(uri)
    out: dict[str, list] = {"model_id": [], "scores": []}
    for model_id in batch["model_id"]:
        scores = np.empty((n_population, n_channels), dtype=np.float32)
        reduce_model(store, paradigm, int(model_id), n_audit, n_queries, labels, scores, None, n_population=n_population,
                     population=True, temperature=temperature)
        out["model_id"].append(int(model_id))
        out["scores"].append(scores.tobytes())
    return out


def _scores_rows(batch: Any, paradigm: str, keep: Any, attacks: list[str], columns: list[str] | None = None,
                 release: Any = None) -> Any:
    """Per-model rows (sorted by model) -> the rows of ``scores.parquet`` (:func:`raypriv.run.store.scores_table`),
    with the release attacks' ``(M, N)`` scores (a ref, or None) in the columns after the model attacks'."""
    import ray

    keep = ray.get(keep)
    release = ray.get(release) if release is not None else {}
    ids = batch.column("model_id").to_numpy().astype(np.int64)
    if len(ids) and not np.array_equal(ids, np.arange(ids[0], ids[0] + len(ids))):
        raise RuntimeError(f"scores.parquet rows out of model order: {ids[:8]}")  # an internal invariant, never user input
    values = {attack: score_matrix(batch, attack)[1] for attack in attacks}
    values.update({name: scores[ids] for name, scores in release.items()})
    return scores_table(paradigm, int(ids[0]) if len(ids) else 0, keep[ids], values, columns)


class _ScoresFiles:
    """Ray Data file names that sort as the local file's rows: paradigm (in config order), then write task."""

    def __init__(self, paradigm_index: int) -> None:
        self.paradigm_index = paradigm_index

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return f"part-{self.paradigm_index:03d}-{task_index:06d}-{write_uuid}"

    def get_filename_for_block(self, block: Any, *args: Any) -> str:  # Ray versions that name files per block
        return f"part-{self.paradigm_index:03d}-{args[-1]:06d}-{args[0]}.parquet"


# ------------------------------------------------------------------ the driver


def _read_tasks(n_models: int) -> int:
    """Read tasks: READ_TASKS_PER_CPU per CPU of the cluster (each reads its models one after another), at most
    one per model.  One task per model file costs Ray's per-task overhead 1,024 times at the reference size."""
    return max(1, min(n_models, READ_TASKS_PER_CPU * cluster_cpus()))


@dataclass
class RayOutput:
    """What :func:`open_output` holds across paradigms: the shared object refs and the scores folder."""

    keep_ref: Any
    folder: str
    engine_elements: int
    stage: Callable[[str], None]
    paradigms_done: int = 0


@contextlib.contextmanager
def open_output(plan: ScoringPlan, store: RunStore, *, engine_elements: int = ENGINE_BLOCK_ELEMENTS,
                on_stage: Callable[[str], None] | None = None) -> Iterator[RayOutput]:
    """The Ray session, Ray Data's settings and ``scores.parquet``'s folder, for every paradigm in turn.

    Joins the running Ray, or connects as :func:`raypriv.cluster.connect` does
    (and shuts down what it started).  A RayprivError raised in a task (a
    corrupt logits file) leaves as that one-line error, without Ray's
    wrappers.  ``engine_elements``: score_attacks' ``block_elements`` to
    match (tests only); ``on_stage``: called with each finished stage's name.
    """
    import ray
    from ray.exceptions import RayError

    group_sizes(plan.keep, list(plan.attacks), plan.lira)
    # Ray Data logs a failed task's traceback before raising; a RayprivError is re-raised below as one line.
    data_log = logging.getLogger("ray.data")
    level = data_log.level
    try:
        with connected(plan.ray_address), ray_data_settings(plan.show_progress):
            data_log.setLevel(logging.CRITICAL)
            keep_ref = ray.put(plan.keep)
            with store.dataset_writing("scores.parquet") as folder:
                yield RayOutput(keep_ref, folder, engine_elements, on_stage or (lambda name: None))
    except (RayError, Exception) as exc:
        found = _user_error(exc)
        if found is None:
            raise
        raise type(found)(str(found).split("\n", 1)[0]) from None  # one line: Ray Data appends its retry hints
    finally:
        data_log.setLevel(level)


def score_paradigm(plan: ScoringPlan, store: RunStore, paradigm: str, output: RayOutput, *,
                   delta: float = 0.0) -> dict[str, tuple[AttackMetrics, Curve]]:
    """:func:`raypriv.scoring.local.score_paradigm` on Ray Data: the same numbers, the same rows (module docstring)."""
    import ray

    per_model = _attacked_rows(plan, store, paradigm, output)
    start = time.perf_counter()
    args = _task_args(plan)
    results = {
        attack: (AttackMetrics.from_json(values, "scoring"), curve)
        for attack, (values, curve) in metrics_on_ray(
            per_model.to_arrow_refs(), list(plan.attacks), output.keep_ref, plan.n_models * plan.n_audit,
            delta, args, plan.show_progress, f"scoring {paradigm}: metrics", tpr_readout=plan.tpr_readout).items()
    }
    log.info("scoring %s on Ray Data: metrics of %d attacks in %.1fs", paradigm, len(plan.attacks), time.perf_counter() - start)
    # The release threat model: the statistics as one Ray task per stored set, the rest as the local backend does.
    release_results, release_scores = score_release(plan, store, paradigm, delta=delta, ray_args=args)
    results.update(release_results)
    output.stage("metrics")
    group = max(1, ROWS_PER_GROUP // max(plan.n_audit, 1))  # write_scores' row groups of whole targets
    columns = plan.score_columns
    per_model.map_batches(_scores_rows, batch_size=group, batch_format="pyarrow", fn_kwargs={
        "paradigm": paradigm, "keep": output.keep_ref, "attacks": list(plan.attacks), "columns": columns,
        "release": ray.put(release_scores) if release_scores else None}, **args).write_parquet(
        output.folder, filesystem=store.fs, filename_provider=_ScoresFiles(output.paradigms_done),
        schema=versioned_schema(scores_schema(columns)), row_group_size=ROWS_PER_GROUP, ray_remote_args=args,
        **scores_write_options(columns))
    output.paradigms_done += 1
    output.stage("scores")
    return results


def _attacked_rows(plan: ScoringPlan, store: RunStore, paradigm: str, output: RayOutput) -> Any:
    """Stages read and attacks for one paradigm: the materialized dataset of per-model score rows, sorted by model."""
    import ray
    import ray.data

    n_models, n_audit, n_queries, n_channels = plan.n_models, plan.n_audit, plan.n_queries, plan.n_channels
    attacks = list(plan.attacks)
    keep_ref = output.keep_ref
    args = _task_args(plan)
    sub, task_block = _blocks(n_audit, n_models, n_channels, plan.block_samples, output.engine_elements)
    read_args = {"uri": store.uri, "paradigm": paradigm, "n_audit": n_audit, "n_queries": n_queries,
                 "n_population": plan.n_population, "n_channels": n_channels, "temperature": plan.rmia.temperature}
    start = time.perf_counter()
    models = ray.data.from_items([{"model_id": m} for m in range(n_models)], override_num_blocks=_read_tasks(n_models))
    reduced = models.map_batches(_reduce_models, batch_size=1, fn_kwargs={
        **read_args, "labels": plan.audit_labels, "task_block": task_block}, **args)
    blocks = reduced.groupby("block").map_groups(_stack_block, fn_kwargs={"n_queries": n_queries}, batch_format="numpy", **args)
    blocks = blocks.materialize()
    n_blocks = -(-n_audit // task_block)
    log.info("scoring %s on Ray Data: %d models read and reduced into %d sample blocks in %.1fs (%.0f models/s)",
             paradigm, n_models, n_blocks, time.perf_counter() - start, n_models / max(time.perf_counter() - start, 1e-9))
    output.stage("blocks")

    blocked = [a for a in attacks if ATTACKS[a].block is not None]
    sides = sorted({side for a in blocked for side in ATTACKS[a].pooled_variance})
    pooled: Any = {}
    if sides:  # partial sums per sub-block on the workers, added in one worker task: the driver gets a ref
        partials = blocks.map(_variance_partials, fn_kwargs={"keep": keep_ref, "n_queries": n_queries, "task_block": task_block,
                                                               "sub": sub, "sides": sides, "n_channels": n_channels,
                                                               "lira": plan.lira}, **args).materialize()
        pooled = ray.remote(**args)(_pool_variances).remote(partials.to_arrow_refs(), sides, n_queries, n_models, n_audit)
    offline_a = None
    if "rmia_offline" in blocked:  # one float64 per pair gathered on one worker, not the (M, N, Q) scores
        probs = blocks.map(_label_probabilities, fn_kwargs={"n_queries": n_queries, "n_channels": n_channels},
                           **args).materialize()
        offline_a = ray.remote(**args)(_fit_offline).remote(probs.to_arrow_refs(), keep_ref, task_block, plan.rmia.gamma)
    versus = None
    rmia = [a for a in attacks if ATTACKS[a].finish is not None]
    if plan.needs_population:  # RMIA's z from the population set, as the local path reads it
        population = models.map_batches(_reduce_population, batch_size=1, fn_kwargs={
            **read_args, "labels": plan.population_labels}, **args).materialize()
        versus = ray.remote(**args)(_population_ratios).remote(
            population.to_arrow_refs(), (n_models, plan.n_population, n_channels), rmia, offline_a, plan.rmia, n_queries)
    attacked = blocks.map_batches(_attack_block, batch_size=1, fn_kwargs={
        "keep": keep_ref, "attacks": attacks, "n_queries": n_queries, "task_block": task_block, "sub": sub,
        "pooled": pooled, "lira": plan.lira, "rmia": plan.rmia, "offline_a": offline_a, "n_channels": n_channels}, **args)
    per_model = attacked.groupby("model_id").map_groups(
        _finish_model, fn_kwargs={"attacks": attacks, "rmia": plan.rmia, "n_queries": n_queries, "versus": versus},
        batch_format="numpy", **args)
    per_model = per_model.materialize()  # sorted by model_id: the sort-based groupby sorted it, preserve_order keeps it
    log.info(
        "scoring %s on Ray Data: %d attacks on %d blocks in %.1fs", paradigm, len(attacks), n_blocks, time.perf_counter() - start
    )
    output.stage("attacks")
    return per_model
