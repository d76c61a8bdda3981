"""Where the shadow pipelines run: in this process, or on pools of long-lived Ray actors.

:func:`train_pending` trains every pending (paradigm, model id) pair and
reports progress (a bar on a terminal, a log line every 10 s otherwise).

* Without Ray, one :class:`raypriv.pipeline.ShadowTrainer` runs in the driver.
* On Ray, :class:`_ActorPool` is a generic fault-tolerant pool of actors,
  one call in flight each, that requeues the models of an actor whose node
  died.  Two pools run side by side: the synthesis pool makes and stores the
  synthetic sets of separable paradigms, and hands each model to the
  shadow-model pool as soon as its set exists (:func:`_train_on_ray`).
  One call is one group of models of one paradigm, and one actor owns it:
  a pack (``execution.pack``) is synthesized together on that actor.

Workers write results straight to the store; nothing but the models' rows
comes back to the driver.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from raypriv.cluster import PLACEMENT_WARN_SECONDS, actor_count, check_placeable, connect
from raypriv.config import ExperimentConfig
from raypriv.data import Dataset
from raypriv.ensemble import engine_for, group_size
from raypriv.errors import AuditInterrupted, ModelFailed, RayprivError
from raypriv.pipeline import ShadowTrainer, make_checked_paradigm, pack_ceiling, separable_synthesis
from raypriv.progress import Progress
from raypriv.run.format import synthetic_record_path
from raypriv.run.store import RunStore
from raypriv.split import AuditSplit

log = logging.getLogger("raypriv")


class _Progress(Progress):
    """Shadow models done / total (:class:`raypriv.progress.Progress`), and the failure records."""

    def __init__(self, total: int, enabled: bool):
        super().__init__(total, "shadow models", "models", enabled)
        self.failures: list[dict[str, Any]] = []  # failure records (raypriv.pipeline.failure_record)

    def record(self, row: dict[str, Any]) -> None:
        """One model's result row: counted, and kept as a failure record if it failed."""
        if row.get("status") == "failed":
            self.failures.append(row)
            log.warning("%s #%d failed (it is retried on rerun): %s", row["paradigm"], row["model_id"], row["error"])
            self.update(1, f"{row['paradigm']} #{row['model_id']} failed")
            return
        self.update(1, f"{row['paradigm']} #{row['model_id']} acc={row['test_acc']:.3f}")


def _group_size(config: ExperimentConfig, paradigm: str, pending: int, workers: int, on_gpu: bool) -> int:
    """Models per call for ``paradigm``: :func:`raypriv.ensemble.group_size` with its engine, or its pack if larger.

    A pack (``execution.pack``, :func:`raypriv.pipeline.pack_ceiling`) is
    one call to one worker, cut like an ensemble group so that every worker
    gets one.
    """
    try:
        made = make_checked_paradigm(config, paradigm)
        engine = engine_for(config, made, torch.device("cuda" if on_gpu else "cpu"))
    except ModelFailed:  # a plugin that cannot be made: each model's worker reports the failure
        return 1
    size = group_size(engine, config.ray.models_per_group, pending, workers)
    pack = pack_ceiling(config, made, on_gpu)
    return max(size, group_size("ensemble", pack, pending, workers)) if pack > 1 else size


def _ids_by_paradigm(keys: list[tuple[str, int]]) -> dict[str, list[int]]:
    """The model ids of each paradigm in ``keys``, in order (paradigms in order of first appearance)."""
    by_paradigm: dict[str, list[int]] = {}
    for paradigm, model_id in keys:
        by_paradigm.setdefault(paradigm, []).append(model_id)
    return by_paradigm


def _synthesis_packs(config: ExperimentConfig, keys: list[tuple[str, int]], workers: int, on_gpu: bool
                     ) -> list[tuple[str, tuple[int, ...]]]:
    """Cut the (paradigm, model id) pairs to synthesize into (paradigm, model ids) packs, one call each."""
    calls = []
    for paradigm, ids in _ids_by_paradigm(keys).items():
        try:
            pack = pack_ceiling(config, make_checked_paradigm(config, paradigm), on_gpu)
        except ModelFailed:
            pack = 1
        size = group_size("ensemble", pack, len(ids), workers)
        calls += [(paradigm, tuple(ids[i : i + size])) for i in range(0, len(ids), size)]
    return calls


def _make_groups(
    config: ExperimentConfig, keys: list[tuple[str, int]], workers: int, on_gpu: bool
) -> list[tuple[str, tuple[int, ...]]]:
    """Cut pending (paradigm, model id) pairs into (paradigm, model ids) calls, paradigms interleaved."""
    chunks = []
    for paradigm, ids in _ids_by_paradigm(keys).items():
        size = _group_size(config, paradigm, len(ids), workers, on_gpu)
        chunks.append([(paradigm, tuple(ids[i : i + size])) for i in range(0, len(ids), size)])
    # Round-robin over paradigms, so early results cover them all (see run_audit).
    return [chunk[i] for i in range(max(map(len, chunks), default=0)) for chunk in chunks if i < len(chunk)]


_MAX_ATTEMPTS = 3  # lost workers per model before the run gives up (pipeline errors are not retried)


class _ActorPool:
    """Actors of one kind, one call in flight each, surviving the loss of their nodes.

    If an actor's node dies its call fails with ``RayActorError``: the model
    goes back on the queue, the dead actor is replaced by a fresh one (Ray
    places it wherever resources are, or the autoscaler adds a node for it),
    and the run goes on.  Results are keyed by model id and written
    atomically, so a model redone after a failure overwrites nothing but
    itself and the store ends with exactly one result per model.
    """

    def __init__(self, name: str, make_actor, count: int, method: str):
        self.name, self.make_actor, self.method = name, make_actor, method
        self.actors = [make_actor() for _ in range(count)]
        self.idle = list(self.actors)
        self.queue: list[tuple[str, Any]] = []  # (paradigm, model id) or (paradigm, model ids)
        self.in_flight: dict[Any, tuple[Any, tuple[str, Any]]] = {}
        self.lost_workers: dict[tuple[str, Any], int] = {}

    def add(self, key: tuple[str, Any]) -> None:
        self.queue.append(key)
        self._dispatch()

    def _dispatch(self) -> None:
        while self.queue and self.idle:
            actor, key = self.idle.pop(0), self.queue.pop(0)
            self.in_flight[getattr(actor, self.method).remote(*key)] = (actor, key)

    def collect(self, ref) -> tuple[tuple[str, Any], Any] | None:
        """The (key, result) of a finished call, or None if its worker was lost (the key is requeued)."""
        import ray

        actor, key = self.in_flight.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, RayprivError):
                raise exc.cause from None
            raise
        except ray.exceptions.RayActorError as exc:
            self.lost_workers[key] = self.lost_workers.get(key, 0) + 1
            if self.lost_workers[key] >= _MAX_ATTEMPTS:
                raise RayprivError(
                    f"model(s) {key[1]} of {key[0]} lost their {self.name} worker {self.lost_workers[key]} times "
                    f"(last: {exc}); check the cluster's health and rerun to resume"
                ) from None
            log.warning("%s worker lost on %s %s; requeued on a new worker", self.name, key[0], key[1])
            ray.kill(actor)
            replacement = self.make_actor()
            self.actors.append(replacement)
            self.idle.append(replacement)  # its calls run once Ray can place it
            self.queue.insert(0, key)
            self._dispatch()
            return None
        self.idle.append(actor)
        self._dispatch()
        return key, result

    def release_idle(self) -> None:
        """Free the resources of actors with nothing left to do (for replacements still waiting)."""
        import ray

        for actor in self.idle:
            ray.kill(actor)
        self.idle = []

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)


def _train_on_ray(config, store, dataset, split, pending, recipe_hashes, progress) -> None:
    """Run the pending pipelines on Ray: a synthesis pool feeding the shadow-model pool.

    With ``ray.num_synthesis_workers > 0``, pipelines whose synthesis is
    separable (see :attr:`Paradigm.separable_synthesis`) synthesize on the
    synthesis pool, which stores each set and hands the model to the
    shadow-model pool at once: training starts as soon as its set exists.
    The others (``real``, DP-SGD, paradigms that keep state between the
    stages) run whole on the shadow-model pool.
    """
    synthesis, trainers, to_synthesize, unfit = _start_pools(config, store, dataset, split, pending, recipe_hashes)
    on_gpu = config.ray.num_gpus_per_actor > 0
    waiting = set(to_synthesize)
    group_sizes = {
        p: _group_size(config, p, sum(key[0] == p for key in pending), len(trainers.actors), on_gpu)
        for p in config.paradigms
    }
    on_gpu_synthesis = config.ray.synthesis_gpus_per_worker > 0
    for call in _synthesis_packs(config, to_synthesize, max(1, len(synthesis.actors)), on_gpu_synthesis):
        synthesis.add(call)
    for group in _make_groups(config, [k for k in pending if k not in waiting], len(trainers.actors), on_gpu):
        trainers.add(group)
    try:
        _run_pools(synthesis, trainers, waiting, group_sizes, unfit, progress)
    finally:
        synthesis.shutdown()
        trainers.shutdown()


def _start_pools(config, store, dataset, split, pending, recipe_hashes) -> tuple[_ActorPool, _ActorPool, list, list[str]]:
    """Start the synthesis and shadow-model actor pools for the pending pipelines.

    Returns ``(synthesis, trainers, to_synthesize, unfit)``: the two pools,
    the (paradigm, model id) pairs whose separable synthesis runs on the
    synthesis pool (those without a stored set, when
    ``ray.num_synthesis_workers > 0``), and
    :func:`raypriv.cluster.check_placeable`'s reasons why an actor may not fit
    the cluster (empty if all fit).  The dataset and split are put in Ray's
    object store once, for every actor.
    """
    import ray

    data_ref = ray.put(dataset)
    split_ref = ray.put(split)
    r = config.ray

    def actor_factory(role: str, cpus: float, gpus: float):
        remote_cls = ray.remote(ShadowTrainer).options(num_cpus=cpus, num_gpus=gpus)
        return lambda: remote_cls.remote(config.to_dict(), store.uri, data_ref, split_ref, recipe_hashes, role)

    to_synthesize = []
    if r.num_synthesis_workers > 0:
        separable = {p: separable_synthesis(config, p) for p in config.paradigms}
        to_synthesize = [
            key for key in pending if separable[key[0]] and not store.exists(synthetic_record_path(*key))
        ]
    unfit = check_placeable(config, min(r.num_synthesis_workers, len(to_synthesize)))
    synthesis = _ActorPool(
        "synthesis",
        actor_factory("synthesis", r.synthesis_cpus_per_worker, r.synthesis_gpus_per_worker),
        min(r.num_synthesis_workers, len(to_synthesize)),
        "synthesize_group",
    )
    trainers = _ActorPool(
        "shadow-model",
        actor_factory("train", r.num_cpus_per_actor, r.num_gpus_per_actor),
        actor_count(config, len(pending), len(synthesis.actors)),
        "run_group",
    )
    log.info(
        "training %d shadow models on %d Ray actors%s",
        len(pending), len(trainers.actors),
        f", {len(to_synthesize)} synthetic sets made by {len(synthesis.actors)} synthesis workers" if to_synthesize else "",
    )
    return synthesis, trainers, to_synthesize, unfit


def _run_pools(
    synthesis: _ActorPool,
    trainers: _ActorPool,
    waiting: set[tuple[str, int]],
    group_sizes: dict[str, int],
    unfit: list[str],
    progress: _Progress,
) -> None:
    """The main loop: collect each finished call of either pool until neither has one in flight.

    A synthesized set takes its model from ``waiting`` to the shadow-model
    pool, in groups of ``group_sizes[paradigm]`` (the remainder once the
    paradigm has no synthesis outstanding); a failed synthesis and every
    trained model's row go to ``progress``.  Actors with nothing left to do
    are released.  With ``unfit`` reasons, a warning names them if nothing
    has finished after ``PLACEMENT_WARN_SECONDS``.
    """
    import ray

    ready: dict[str, list[int]] = {}  # synthesized models waiting to fill a group

    def dispatch_ready(paradigm: str) -> None:
        """Send the paradigm's synthesized models on as groups; the rest too once its synthesis is done."""
        ids = ready.get(paradigm, [])
        size = group_sizes.get(paradigm, 1)
        outstanding = any(key[0] == paradigm for key in waiting)
        while ids and (len(ids) >= size or not outstanding):
            trainers.add((paradigm, tuple(ids[:size])))
            del ids[:size]

    warn_at = time.monotonic() + PLACEMENT_WARN_SECONDS if unfit else None
    while synthesis.in_flight or trainers.in_flight:
        timeout = None if warn_at is None else max(0.0, warn_at - time.monotonic())
        refs, _ = ray.wait([*synthesis.in_flight, *trainers.in_flight], num_returns=1, timeout=timeout)
        if not refs:  # an autoscaling cluster may still add a node that fits; a fixed-size one never will
            log.warning("nothing has run for %.0fs: %s. Waiting for the autoscaler; on a fixed-size cluster stop "
                        "(Ctrl-C) and lower the request", PLACEMENT_WARN_SECONDS, "; ".join(unfit))
            warn_at = None
            continue
        ref = refs[0]
        if ref in synthesis.in_flight:
            done = synthesis.collect(ref)
            if done is not None:  # a pack: (paradigm, model ids) and one record per model
                paradigm = done[0][0]
                for record in done[1]:
                    waiting.discard((paradigm, record["model_id"]))
                    if record.get("status") == "failed":  # no set to train on; reported at the end
                        progress.record(record)
                    else:
                        ready.setdefault(paradigm, []).append(record["model_id"])
                dispatch_ready(paradigm)
            if not synthesis.queue:
                synthesis.release_idle()
        else:
            done = trainers.collect(ref)
            if done is not None:
                for row in done[1]:
                    progress.record(row)
        if not (synthesis.queue or synthesis.in_flight or trainers.queue):
            trainers.release_idle()


def train_pending(config: ExperimentConfig, store: RunStore, dataset: Dataset, split: AuditSplit,
                  pending: list[tuple[str, int]], recipe_hashes: dict[str, str], *, use_ray: bool = True,
                  show_progress: bool = True) -> list[dict[str, Any]]:
    """Train the (paradigm, model id) pairs in ``pending``: on Ray (starting a local instance if needed) or here.

    ``recipe_hashes``: each paradigm's recipe fingerprint (the driver's), stored in every model row.

    Returns the failure records of models whose pipeline failed on its own
    (:class:`raypriv.errors.ModelFailed`); every other model is stored.
    """
    progress = _Progress(len(pending), show_progress)
    started_ray = use_ray and connect(config.ray.address)
    try:
        if use_ray:
            _train_on_ray(config, store, dataset, split, pending, recipe_hashes, progress)
        else:
            threads = torch.get_num_threads()  # the trainer pins its own; give the caller's back after
            try:
                trainer = ShadowTrainer(config.to_dict(), store.uri, dataset, split, recipe_hashes)
                for paradigm, model_ids in _make_groups(config, pending, 1, trainer.device.type == "cuda"):
                    for row in trainer.run_group(paradigm, list(model_ids)):
                        progress.record(row)
            finally:
                torch.set_num_threads(threads)
    except KeyboardInterrupt:
        raise AuditInterrupted(
            f"interrupted after {progress.done} of {len(pending)} models; every finished model is saved in "
            f"{store.uri}. Rerun the same command to resume"
        ) from None
    finally:
        progress.close()
        if started_ray:
            import ray

            ray.shutdown()
    return progress.failures
