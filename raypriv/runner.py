"""The audit driver: prepare the run, train shadow pipelines on Ray actors, attack.

:func:`run_audit` is the whole audit.  It

1. checks the run directory (a rerun of the same config resumes; a different
   config is refused),
2. loads the dataset, draws the audit split and stores it,
3. trains every missing (paradigm, model id) pipeline on a pool of
   long-lived :class:`ShadowTrainer` actors, each of which writes its model's
   logits straight to the store (they never pass through the driver),
4. runs the attacks leave-one-out and writes scores, metrics and the ROC plot.

Without Ray (``use_ray=False``) the same :class:`ShadowTrainer` runs in the
driver process; the benchmarks use this to measure Ray's overhead.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from raypriv import __version__
from raypriv.attacks import score_attacks
from raypriv.config import (
    ExperimentConfig,
    config_from_dict,
    config_hash,
    dump_config,
    protocol_definition,
    protocol_hash,
    recipe_hash,
)
from raypriv.ensemble import models_fitting_in_memory, resolve_engine, train_ensemble, train_group_splitting_on_oom
from raypriv.data import AuditSplit, Dataset, load_dataset, make_audit_split
from raypriv.errors import RayprivError
from raypriv.metrics import plot_roc
from raypriv.report import format_summary
from raypriv.scoring import load_attack_inputs, roc_metrics, scoring_workers, write_scores
from raypriv.seeding import torch_seed
from raypriv.store import (
    MODEL_SCHEMA,
    READABLE_SCHEMA_VERSIONS,
    SCHEMA_VERSION,
    RunStore,
    audit_table,
    scan_completed,
    scores_schema,
    scores_write_options,
    synthetic_path,
    synthetic_record_path,
    write_model_result,
)
from raypriv.synth import LabeledSet, ShadowContext, make_paradigm
from raypriv.training import Normalizer, accuracy, predict_logits

log = logging.getLogger("raypriv")


class AuditInterrupted(RayprivError):
    """The user stopped the run; what finished is stored and a rerun resumes."""


# ------------------------------------------------------------------ the worker


class ShadowTrainer:
    """Runs shadow pipelines one after another; one instance per Ray actor.

    It holds the dataset on its device for its whole life, so each model costs
    only its own synthesis and training.  The same class serves both pools:
    a synthesis worker calls :meth:`synthesize` (``role="synthesis"``), a
    shadow-model actor calls :meth:`run`.
    """

    def __init__(self, config: dict[str, Any], run_uri: str, dataset: Dataset, split: AuditSplit, role: str = "train"):
        self.config = config_from_dict(config)
        self.recipe_hashes = {p: recipe_hash(self.config, p) for p in self.config.paradigms}
        self.store = RunStore(run_uri)
        self.split = split
        # CPU results depend on the thread count (reduction order), so it is pinned to
        # the actor's CPUs whether or not Ray runs this worker.
        cpus = self.config.ray.synthesis_cpus_per_worker if role == "synthesis" else self.config.ray.num_cpus_per_actor
        torch.set_num_threads(max(1, int(cpus)))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.normalizer = Normalizer.fit(dataset.x_train).to(self.device)
        self.num_classes = dataset.num_classes
        self.input_shape = dataset.input_shape
        # torch.tensor copies: arrays from Ray's object store are read-only.
        self.x_pool = torch.tensor(dataset.x_train, device=self.device)
        self.y_pool = torch.tensor(split.labels, device=self.device)
        self.x_audit = self.x_pool[torch.tensor(split.audit_index, device=self.device)]
        self.x_test = torch.tensor(dataset.x_test, device=self.device)
        self.y_test = torch.tensor(dataset.y_test, device=self.device)
        self.models_that_fit: dict[str, int] = {}  # ensemble group size per paradigm (GPU memory probe)

    @contextlib.contextmanager
    def _seeded_global_rng(self, stream: str, model_id: int):
        """Seed torch's global generator for one stage of one pipeline.

        Libraries that draw from it (weight init in diffusers, dropout) then
        give the same result in any process; each stage gets its own seed so
        synthesis and training need not run in the same process.
        """
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(torch_seed(self.config.seed, stream, model_id))
            yield

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _context(self, paradigm_name: str, model_id: int) -> ShadowContext:
        return ShadowContext(
            self.config, paradigm_name, model_id, self.num_classes, self.input_shape, self.normalizer, self.device
        )

    def _synthesize(self, paradigm, context: ShadowContext) -> tuple[LabeledSet, dict[str, Any]]:
        """Run the synthesis stage on the model's private set; store the set if the paradigm makes one."""
        name, model_id = context.paradigm, context.model_id
        index = torch.from_numpy(self.split.private_indices(model_id)).to(self.device)
        private = LabeledSet(self.x_pool[index], self.y_pool[index])
        start = time.perf_counter()
        with self._seeded_global_rng(f"{name}/synthesize", model_id):
            training_set = paradigm.synthesize(private, context)
        self._sync()
        # Plain strides: a set trained on straight away must match one reloaded from storage.
        training_set = LabeledSet(
            training_set.x.detach().clone(memory_format=torch.contiguous_format),
            training_set.y.detach().clone(memory_format=torch.contiguous_format),
        )
        record = {
            "recipe_hash": self.recipe_hashes[name],
            "synth_seconds": time.perf_counter() - start,
            "private_size": len(private),
            "info": dict(context.info),
        }
        if paradigm.stores_training_set:
            self.store.write_npz(
                synthetic_path(name, model_id), x=training_set.x.cpu().numpy(), y=training_set.y.cpu().numpy()
            )
            self.store.write_json(synthetic_record_path(name, model_id), record)
        return training_set, record

    def _stored_synthesis(self, paradigm, context: ShadowContext) -> tuple[LabeledSet, dict[str, Any]] | None:
        """The synthetic set a synthesis worker stored for this recipe, if any."""
        name, model_id = context.paradigm, context.model_id
        if not (paradigm.separable_synthesis and self.store.exists(synthetic_record_path(name, model_id))):
            return None
        record = self.store.read_json(synthetic_record_path(name, model_id))
        if record.get("recipe_hash") != self.recipe_hashes[name]:
            return None
        arrays = self.store.read_npz(synthetic_path(name, model_id))
        training_set = LabeledSet(torch.tensor(arrays["x"], device=self.device), torch.tensor(arrays["y"], device=self.device))
        context.info.update(record["info"])
        return training_set, record

    def synthesize(self, paradigm_name: str, model_id: int) -> dict[str, Any]:
        """Synthesis stage only (for the synthesis pool); returns the stored record."""
        paradigm = make_paradigm(self.config, paradigm_name)
        context = self._context(paradigm_name, model_id)
        stored = self._stored_synthesis(paradigm, context)
        return (stored or self._synthesize(paradigm, context))[1]

    def run(self, paradigm_name: str, model_id: int) -> dict[str, Any]:
        """Train, query and store one model; returns its row (see :meth:`run_group`)."""
        return self.run_group(paradigm_name, [model_id])[0]

    def run_group(self, paradigm_name: str, model_ids: list[int]) -> list[dict[str, Any]]:
        """Train, query and store the models ``model_ids`` of one paradigm; returns their rows.

        Each model synthesizes first unless a stored set exists.  The engine
        (:func:`raypriv.ensemble.resolve_engine`) trains them one by one, each
        stored as soon as it is done, or all at once with the ensemble engine.
        """
        paradigm = make_paradigm(self.config, paradigm_name)
        recipe = paradigm.training_recipe(self.config)
        engine = resolve_engine(self.config.train.engine, self.config.model.arch, self.device, recipe is not None)
        rows, prepared = [], []
        for model_id in model_ids:
            context = self._context(paradigm_name, model_id)
            training_set, record = self._stored_synthesis(paradigm, context) or self._synthesize(paradigm, context)
            if engine == "ensemble":
                prepared.append((context, training_set, record))
                continue
            start = time.perf_counter()
            with self._seeded_global_rng(f"{paradigm_name}/train", model_id):
                model = paradigm.train(training_set, context)
            self._sync()
            rows.append(self._finish(context, model, training_set, record, time.perf_counter() - start))
        if engine == "loop":
            return rows

        start = time.perf_counter()
        models = self._train_ensemble(prepared, recipe)
        self._sync()
        seconds = (time.perf_counter() - start) / len(prepared)  # the group's wall time, shared evenly
        return [self._finish(c, m, t, r, seconds) for (c, t, r), m in zip(prepared, models)]

    def _train_ensemble(self, prepared: list, recipe) -> list:
        """Train the prepared models together, in groups that fit the device's memory."""
        by_id = {context.model_id: (context, training_set) for context, training_set, _ in prepared}

        def train_group(ids):
            return train_ensemble(
                [by_id[m][0].build_model() for m in ids],
                [(by_id[m][1].x, by_id[m][1].y) for m in ids],
                recipe, self.normalizer, self.config.seed, list(ids),
            )

        def on_split(size: int, half: int) -> None:
            log.warning("a group of %d models ran out of memory on %s; training it as groups of %d", size, self.device, half)

        ids = [context.model_id for context, _, _ in prepared]
        first_context, first_set = by_id[ids[0]]
        paradigm = first_context.paradigm
        if paradigm not in self.models_that_fit:  # one memory probe per paradigm and worker
            self.models_that_fit[paradigm] = models_fitting_in_memory(
                first_context.build_model, (first_set.x, first_set.y), recipe, self.normalizer,
                self.config.ray.models_per_group,
            )
        fits = self.models_that_fit[paradigm]
        models = []
        for start in range(0, len(ids), fits):
            models += train_group_splitting_on_oom(ids[start : start + fits], train_group, on_split)
        return models

    def _finish(self, context: ShadowContext, model, training_set: LabeledSet, record: dict[str, Any], train_seconds: float) -> dict[str, Any]:
        """Query a trained model on the audit samples and store its logits and row."""
        config, paradigm_name, model_id = self.config, context.paradigm, context.model_id
        batch = config.train.eval_batch_size
        logits = predict_logits(model, self.x_audit, self.normalizer, config.queries, batch)
        row = {
            "paradigm": paradigm_name,
            "model_id": model_id,
            "seed": config.seed,
            "recipe_hash": self.recipe_hashes[paradigm_name],
            "in_count": int(self.split.keep[model_id].sum()),
            "private_size": record["private_size"],
            "synthetic_size": len(training_set),
            "test_acc": accuracy(model, self.x_test, self.y_test, self.normalizer, batch),
            "synth_seconds": record["synth_seconds"],
            "train_seconds": train_seconds,
            "device": str(self.device),
            "info": json.dumps(context.info, sort_keys=True),
            "status": "ok",
            "finished_at": datetime.now(timezone.utc),
        }
        write_model_result(self.store, row, logits, self.split.audit_labels)
        return row


# ------------------------------------------------------------- preparing a run


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _diff(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def prepare_run(config: ExperimentConfig) -> tuple[RunStore, Dataset, AuditSplit]:
    """Open (or create) the run directory, load the data and fix the audit split."""
    store = RunStore(config.out_dir)
    digest = protocol_hash(config)
    if store.exists("run.json"):
        manifest = store.read_json("run.json")
        if manifest.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
            raise RayprivError(
                f"{store.uri} was written with store schema {manifest.get('schema_version')}, this raypriv "
                f"writes schema {SCHEMA_VERSION}; use a new --out"
            )
        if manifest.get("protocol_hash") != digest:
            import yaml

            stored = yaml.safe_load(store.read_bytes("config.yaml")) if store.exists("config.yaml") else {}
            differences = _diff(protocol_definition(config_from_dict(stored)), protocol_definition(config)) if stored else []
            detail = "; ".join(differences[:8]) or "the stored config could not be read"
            raise RayprivError(
                f"{store.uri} holds a run of a different config (protocol {manifest.get('protocol_hash')}, this "
                f"config is {digest}; differences: {detail}). Use a new --out, or delete that directory to start over"
            )
    elif not store.is_empty():
        raise RayprivError(f"{store.uri} is not empty and holds no raypriv run (no run.json); choose a new or empty --out")

    dataset = load_dataset(config.dataset)
    if "hflip" in config.queries and not dataset.is_image:
        raise RayprivError(
            f"queries lists 'hflip', but {config.dataset.name} is tabular (no image to flip); use queries: [identity]"
        )
    split = make_audit_split(dataset, config.audit.n_audit, config.audit.canary, config.n_models, config.seed)

    created = store.read_json("run.json")["created_at"] if store.exists("run.json") else None
    store.write_bytes("config.yaml", dump_config(config).encode())
    store.write_json(
        "run.json",
        {
            "schema_version": SCHEMA_VERSION,
            "protocol_hash": digest,
            "config_hash": config_hash(config),
            "raypriv_version": __version__,
            "created_at": created or datetime.now(timezone.utc).isoformat(),
            "queries": list(config.queries),
            "n_models": config.n_models,
            "n_audit": config.audit.n_audit,
            "num_classes": dataset.num_classes,
        },
    )
    if store.exists("keep.npy"):
        if not np.array_equal(store.read_npy("keep.npy"), split.keep):
            raise RayprivError(
                f"{store.path('keep.npy')} differs from the membership matrix this config draws "
                "(was the run made by another raypriv version?); use a new --out"
            )
    else:
        store.write_npy("keep.npy", split.keep)
    if not store.exists("audit.parquet"):
        store.write_table("audit.parquet", audit_table(split.audit_index, split.true_labels, split.audit_labels))
    return store, dataset, split


# ----------------------------------------------------------------- training


class _Progress:
    """Models done / total with throughput and ETA: a tqdm bar on a terminal, log lines otherwise."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.bar = None
        self.enabled = enabled
        self.next_log = 0.0
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="shadow models", unit="model", dynamic_ncols=True)

    def update(self, row: dict[str, Any]) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"{row['paradigm']} #{row['model_id']} acc={row['test_acc']:.3f}")
            self.bar.update(1)
            return
        elapsed = time.perf_counter() - self.start
        if self.enabled and (elapsed >= self.next_log or self.done == self.total):
            rate = self.done / elapsed
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            log.info(
                "models %d/%d (%.1f/min, ETA %.0fs); last: %s #%d acc=%.3f",
                self.done, self.total, 60 * rate, eta, row["paradigm"], row["model_id"], row["test_acc"],
            )
            self.next_log = elapsed + 10.0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _init_ray(config: ExperimentConfig) -> bool:
    """Connect to the configured cluster, or start a local instance; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # "local": a fresh instance, even where /tmp/ray records another (possibly dead)
        # cluster that a bare ray.init() would try to join.  ray.address: auto joins it.
        ray.init(address="local", include_dashboard=False, **kwargs)
    return True


def _actor_count(config: ExperimentConfig, pending: int, synthesis_workers: int = 0) -> int:
    """Shadow-model actors: ``ray.num_actors``, or what the cluster's resources fit now.

    The synthesis workers' resources are set aside first, so the two pools
    never wait on each other for the same CPUs or GPUs.
    """
    import ray

    r = config.ray
    if r.num_actors:
        return min(r.num_actors, pending)
    resources = ray.cluster_resources()
    cpus = resources.get("CPU", 0) - synthesis_workers * r.synthesis_cpus_per_worker
    count = int(cpus // r.num_cpus_per_actor)
    if r.num_gpus_per_actor > 0:
        gpus = resources.get("GPU", 0) - synthesis_workers * r.synthesis_gpus_per_worker
        if gpus <= 0:
            raise RayprivError(
                "ray.num_gpus_per_actor > 0 but the Ray cluster has no GPUs free for shadow-model actors right "
                "now. On an autoscaling cluster set ray.num_actors (or --actors N) so the autoscaler adds GPU "
                "nodes for them; otherwise set ray.num_gpus_per_actor: 0 to train on CPUs"
            )
        count = int(gpus // r.num_gpus_per_actor)
    return max(1, min(count, pending))


def _group_size(config: ExperimentConfig, paradigm: str, pending: int, workers: int, on_gpu: bool) -> int:
    """Models per call for ``paradigm``: 1 for the loop engine, else up to ``ray.models_per_group``.

    Groups are also cut so that every worker gets one; a GPU worker may split
    its group further to fit its memory.
    """
    recipe = make_paradigm(config, paradigm).training_recipe(config)
    device = torch.device("cuda" if on_gpu else "cpu")
    if resolve_engine(config.train.engine, config.model.arch, device, recipe is not None) == "loop":
        return 1
    return max(1, min(config.ray.models_per_group, math.ceil(pending / max(1, workers))))


def _make_groups(config: ExperimentConfig, keys: list[tuple[str, int]], workers: int, on_gpu: bool) -> list[tuple[str, tuple[int, ...]]]:
    """Cut pending (paradigm, model id) pairs into (paradigm, model ids) calls, paradigms interleaved."""
    by_paradigm: dict[str, list[int]] = {}
    for paradigm, model_id in keys:
        by_paradigm.setdefault(paradigm, []).append(model_id)
    chunks = []
    for paradigm, ids in by_paradigm.items():
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


def _train_on_ray(config, store, dataset, split, pending, progress) -> None:
    """Run the pending pipelines on Ray: a synthesis pool feeding the shadow-model pool.

    With ``ray.num_synthesis_workers > 0``, pipelines whose synthesis is
    separable (see :attr:`Paradigm.separable_synthesis`) synthesize on the
    synthesis pool, which stores each set and hands the model to the
    shadow-model pool at once: training starts as soon as its set exists.
    The others (``real``, DP-SGD, paradigms that keep state between the
    stages) run whole on the shadow-model pool.
    """
    import ray

    data_ref = ray.put(dataset)
    split_ref = ray.put(split)
    r = config.ray

    def actor_factory(role: str, cpus: float, gpus: float):
        remote_cls = ray.remote(ShadowTrainer).options(num_cpus=cpus, num_gpus=gpus)
        return lambda: remote_cls.remote(config.to_dict(), store.uri, data_ref, split_ref, role)

    to_synthesize = []
    if r.num_synthesis_workers > 0:
        separable = {p: make_paradigm(config, p).separable_synthesis for p in config.paradigms}
        to_synthesize = [
            key for key in pending if separable[key[0]] and not store.exists(synthetic_record_path(*key))
        ]
    synthesis = _ActorPool(
        "synthesis",
        actor_factory("synthesis", r.synthesis_cpus_per_worker, r.synthesis_gpus_per_worker),
        min(r.num_synthesis_workers, len(to_synthesize)),
        "synthesize",
    )
    trainers = _ActorPool(
        "shadow-model",
        actor_factory("train", r.num_cpus_per_actor, r.num_gpus_per_actor),
        _actor_count(config, len(pending), len(synthesis.actors)),
        "run_group",
    )
    log.info(
        "training %d shadow models on %d Ray actors%s",
        len(pending), len(trainers.actors),
        f", {len(to_synthesize)} synthetic sets made by {len(synthesis.actors)} synthesis workers" if to_synthesize else "",
    )
    on_gpu = r.num_gpus_per_actor > 0
    waiting = set(to_synthesize)
    group_sizes = {
        p: _group_size(config, p, sum(key[0] == p for key in pending), len(trainers.actors), on_gpu)
        for p in config.paradigms
    }
    ready: dict[str, list[int]] = {}  # synthesized models waiting to fill a group

    def dispatch_ready(paradigm: str) -> None:
        """Send the paradigm's synthesized models on as groups; the rest too once its synthesis is done."""
        ids = ready.get(paradigm, [])
        size = group_sizes.get(paradigm, 1)
        outstanding = any(key[0] == paradigm for key in waiting)
        while ids and (len(ids) >= size or not outstanding):
            trainers.add((paradigm, tuple(ids[:size])))
            del ids[:size]

    for key in to_synthesize:
        synthesis.add(key)
    for group in _make_groups(config, [k for k in pending if k not in waiting], len(trainers.actors), on_gpu):
        trainers.add(group)
    try:
        while synthesis.in_flight or trainers.in_flight:
            (ref,), _ = ray.wait([*synthesis.in_flight, *trainers.in_flight], num_returns=1)
            if ref in synthesis.in_flight:
                done = synthesis.collect(ref)
                if done is not None:
                    waiting.discard(done[0])
                    ready.setdefault(done[0][0], []).append(done[0][1])
                    dispatch_ready(done[0][0])
                if not synthesis.queue:
                    synthesis.release_idle()
            else:
                done = trainers.collect(ref)
                if done is not None:
                    for row in done[1]:
                        progress.update(row)
            if not (synthesis.queue or synthesis.in_flight or trainers.queue):
                trainers.release_idle()
    finally:
        synthesis.shutdown()
        trainers.shutdown()


def train_pending(config: ExperimentConfig, store: RunStore, dataset: Dataset, split: AuditSplit, pending: list[tuple[str, int]], use_ray: bool = True, show_progress: bool = True) -> None:
    """Train the (paradigm, model id) pairs in ``pending``."""
    progress = _Progress(len(pending), show_progress)
    try:
        if use_ray:
            _train_on_ray(config, store, dataset, split, pending, progress)
        else:
            threads = torch.get_num_threads()  # the trainer pins its own; give the caller's back after
            try:
                trainer = ShadowTrainer(config.to_dict(), store.uri, dataset, split)
                for paradigm, model_ids in _make_groups(config, pending, 1, trainer.device.type == "cuda"):
                    for row in trainer.run_group(paradigm, list(model_ids)):
                        progress.update(row)
            finally:
                torch.set_num_threads(threads)
    except KeyboardInterrupt:
        raise AuditInterrupted(
            f"interrupted after {progress.done} of {len(pending)} models; every finished model is saved in "
            f"{store.uri}. Rerun the same command to resume"
        ) from None
    finally:
        progress.close()


# ----------------------------------------------------------------- attacking


@dataclass
class AuditResult:
    run_dir: str
    metrics: dict[str, Any]
    models: pd.DataFrame
    summary: str
    wall_seconds: float
    trained_now: int = 0
    discarded: list[str] = field(default_factory=list)


def score_run(config: ExperimentConfig, store: RunStore, split: AuditSplit, models: pd.DataFrame) -> dict[str, Any]:
    """Run the attacks on the stored logits; write scores, metrics and the ROC plot.

    Streams in bounded memory (see :mod:`raypriv.scoring`): each paradigm's
    logits are reduced model by model as they are read, attacked in blocks of
    audit samples, appended to ``scores.parquet`` in row groups, and
    summarised without materialising full ROC curves.
    """
    metrics: dict[str, Any] = {}
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    n_models, n_audit = split.keep.shape
    is_in = split.keep
    attacks = list(config.attacks)
    needs_scores = any(a != "loss" for a in attacks)
    workers = scoring_workers()
    with store.table_writer("scores.parquet", scores_schema(attacks), **scores_write_options(attacks)) as writer:
        for paradigm in config.paradigms:
            rows = models[models.paradigm == paradigm]
            hashes = set(rows.recipe_hash)
            if hashes != {recipe_hash(config, paradigm)}:
                raise RayprivError(
                    f"models of {paradigm} come from recipes {sorted(hashes)}, not {recipe_hash(config, paradigm)}; "
                    "the attack will not mix recipes. Use a new --out"
                )
            start = time.perf_counter()
            lira_scores, label_log_p = load_attack_inputs(
                store, paradigm, n_models, n_audit, len(config.queries), split.audit_labels,
                need_scores=needs_scores, need_loss="loss" in attacks, workers=workers,
            )
            read = time.perf_counter()
            scores = score_attacks(lira_scores, label_log_p, split.keep, attacks, workers=workers)
            del lira_scores, label_log_p
            attacked = time.perf_counter()
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
            delta = entry.get("info", {}).get("delta", 0.0)  # DP paradigms report theirs
            for attack, score in scores.items():
                entry[attack], curves.setdefault(paradigm, {})[attack] = roc_metrics(is_in, score, delta)
            metrics[paradigm] = entry
            write_scores(writer, paradigm, is_in, scores)
            del scores
            log.info(
                "scored %s: %d models x %d samples; read %.1fs, attacks %.1fs, metrics and scores.parquet %.1fs",
                paradigm, n_models, n_audit, read - start, attacked - read, time.perf_counter() - attacked,
            )

    store.write_json("metrics.json", metrics)
    flat = [
        {"paradigm": p, "attack": a, **{k: v for k, v in m.items()}, "test_acc": e["test_acc"]}
        for p, e in metrics.items()
        for a, m in e.items()
        if isinstance(m, dict) and "auc" in m
    ]
    store.write_bytes("metrics.csv", pd.DataFrame(flat).to_csv(index=False).encode())
    figure = plot_roc(curves, f"{config.name}: {n_models} models x {n_audit} audit samples (leave-one-out)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    import matplotlib.pyplot as plt

    plt.close(figure)
    store.write_bytes("roc.png", buffer.getvalue())
    return metrics


def _completed_models(config: ExperimentConfig, store: RunStore) -> tuple[dict[tuple[str, int], dict[str, Any]], list[str]]:
    """Rows of the models already stored for this config, keyed (paradigm, model id), and what was discarded."""
    expected_rows = config.audit.n_audit * len(config.queries)
    complete: dict[tuple[str, int], dict[str, Any]] = {}
    discarded: list[str] = []
    for paradigm in config.paradigms:
        scan = scan_completed(store, paradigm, recipe_hash(config, paradigm), expected_rows)
        discarded += scan.discarded
        complete.update({(paradigm, m): row for m, row in scan.complete.items() if m < config.n_models})
    return complete, discarded


def run_audit(config: ExperimentConfig, use_ray: bool = True, show_progress: bool = True) -> AuditResult:
    """Run (or resume) the audit a config describes; see the module docstring."""
    start = time.perf_counter()
    store, dataset, split = prepare_run(config)
    complete, discarded = _completed_models(config, store)
    for message in discarded:
        log.warning("discarding a stored result: %s", message)
    # Model-major order: every paradigm progresses together, so early results cover them all
    # and the ETA averages over paradigms of very different cost.
    pending = [(p, m) for m in range(config.n_models) for p in config.paradigms if (p, m) not in complete]
    if complete:
        log.info("resuming %s: %d models already complete, %d to train", store.uri, len(complete), len(pending))

    if pending:
        started_ray = use_ray and _init_ray(config)
        try:
            train_pending(config, store, dataset, split, pending, use_ray, show_progress)
        finally:
            if started_ray:
                import ray

                ray.shutdown()
        complete, _ = _completed_models(config, store)

    rows = [complete[key] for key in sorted(complete)]
    models = pa.Table.from_pylist(rows, schema=MODEL_SCHEMA).to_pandas()
    store.write_table("models.parquet", pa.Table.from_pandas(models, schema=MODEL_SCHEMA, preserve_index=False))
    metrics = score_run(config, store, split, models)
    wall = time.perf_counter() - start
    summary = format_summary(config, metrics, models, wall)
    store.write_bytes("summary.txt", summary.encode())
    return AuditResult(store.uri, metrics, models, summary, wall, len(pending), discarded)


# ------------------------------------------------------------------- status


def _ranges(ids: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    parts, start = [], None
    for i, value in enumerate(ids):
        if start is None:
            start = value
        if i + 1 == len(ids) or ids[i + 1] != value + 1:
            parts.append(f"{start}" if start == value else f"{start}-{value}")
            start = None
    return ", ".join(parts)


def run_status(run_dir: str, config: ExperimentConfig | None = None) -> str:
    """What a run directory holds: complete and missing models, and whether ``config`` matches it."""
    import yaml

    store = RunStore(run_dir)
    if not store.exists("run.json"):
        raise RayprivError(f"{store.uri} holds no raypriv run (no run.json); give the --out of an audit")
    manifest = store.read_json("run.json")
    stored = config_from_dict(yaml.safe_load(store.read_bytes("config.yaml")))
    lines = [
        f"run {store.uri}: created {manifest.get('created_at')}, schema {manifest.get('schema_version')}, "
        f"protocol {manifest.get('protocol_hash')}",
    ]
    if config is None:
        config = stored
        lines.append("config: the stored config.yaml (pass --config to check another)")
    elif protocol_hash(config) != manifest.get("protocol_hash"):
        differences = "; ".join(_diff(protocol_definition(stored), protocol_definition(config))[:8])
        lines.append(
            f"config: DOES NOT MATCH this run (differences: {differences}); `raypriv audit` will refuse it. "
            "The run's own config.yaml holds:"
        )
        config = stored
    else:
        lines.append("config: matches this run's protocol")
    total_missing = 0
    name_width = max(10, *map(len, config.paradigms))
    for paradigm in config.paradigms:
        recipe = recipe_hash(config, paradigm)
        rows = []
        for relative in store.list_files(f"models/{paradigm}", ".parquet"):
            try:
                rows.append(store.read_table(relative).to_pylist()[0])
            except RayprivError:
                continue  # a broken row is retrained on resume; it is not complete
        done = sorted(r["model_id"] for r in rows if r.get("recipe_hash") == recipe and r["model_id"] < config.n_models)
        other = sum(r.get("recipe_hash") != recipe for r in rows)
        missing = sorted(set(range(config.n_models)) - set(done))
        total_missing += len(missing)
        note = f"; {other} models of another recipe (options changed)" if other else ""
        lines.append(
            f"  {paradigm:<{name_width}} {len(done):>5}/{config.n_models} complete"
            + (f"; missing: {_ranges(missing)}" if missing else "")
            + note
        )
    if total_missing:
        lines.append(
            f"{total_missing} models missing: rerun `raypriv audit --config {store.path('config.yaml')} "
            f"--out {store.uri}` to finish"
        )
    else:
        stale = not store.exists("metrics.json")
        lines.append("all models complete; " + ("attacks not yet computed: rerun `raypriv audit` to score" if stale else "metrics.json is written"))
    return "\n".join(lines) + "\n"

