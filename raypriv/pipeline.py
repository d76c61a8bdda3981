"""One shadow pipeline's story: private set -> synthesis (or a stored set) -> training -> logits -> row.

:class:`ShadowTrainer` is the worker both execution pools run (one instance
per Ray actor, or one in the driver without Ray).  For one paradigm and a
group of model ids it

1. takes each model's private set (the always-IN samples plus its IN audit
   samples, :meth:`raypriv.split.AuditSplit.private_indices`),
2. makes the paradigm's training set from it, or loads the set a synthesis
   worker stored for the same recipe.  Models of a separable paradigm (or
   of one that keeps state for ``train`` and declares a batched synthesis)
   without a stored set are synthesized in packs of K (``execution.pack``, :func:`resolve_pack`): one
   batched call for a paradigm with a batched synthesis
   (:meth:`raypriv.synth.base.Paradigm.packs_synthesis`), one by one
   otherwise.  Each model's set and record are stored on their own, as
   without packs, and a pipeline's error is raised for that model alone, in
   its turn, as the single run would raise it,
3. trains the audited model with the engine :func:`raypriv.ensemble.engine_for`
   picks (one by one, or a vmapped group),
4. queries it on the audit samples and stores its logits and its row
   (:func:`raypriv.run.store.write_model_result`), straight from the worker.

Nothing malformed is stored as a result.  Every paradigm's training set
passes :func:`raypriv.synth.validation.check_training_set` (in full for code
from outside raypriv: plugins and ``external``; built-ins get the structural
checks, see there), and a plugin's ``context.info`` passes
:func:`~raypriv.synth.validation.check_info`.  An exception raised by a
plugin's code (its ``__init__``, ``training_recipe``, ``synthesize`` or
``train``) fails that model only, with the exception's last line; a
built-in's exception propagates as before (it is raypriv's bug, not the
user's).  A model whose weights or logits are not finite failed ("training
diverged") and is never stored.  Each failure is a :class:`ModelFailed`: the
model gets a failure record, the others go on, and a rerun retries it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from raypriv.config import from_dict
from raypriv.data import Dataset
from raypriv.ensemble import engine_for, models_fitting_in_memory, train_ensemble, train_fitting_memory
from raypriv.errors import ModelFailed, RayprivError
from raypriv.run.fingerprints import recipe_hashes as recipe_hashes_of
from raypriv.run.format import synthetic_path, synthetic_record_path
from raypriv.run.store import RunStore, write_model_result
from raypriv.seeding import torch_seed
from raypriv.split import AuditSplit
from raypriv.synth import LabeledSet, ShadowContext, make_paradigm, plugin_identity
from raypriv.synth.registry import BUILTINS, VARIANT_SEPARATOR
from raypriv.synth.validation import check_info, check_training_set
from raypriv.training import Normalizer, accuracy, predict_logits

log = logging.getLogger("raypriv")


def failure_record(paradigm: str, model_id: int, error: Exception) -> dict[str, Any]:
    """What a worker returns for a model whose pipeline failed: no row is stored, so a rerun retries it."""
    return {"paradigm": paradigm, "model_id": model_id, "status": "failed", "error": str(error)}


def is_plugin(paradigm: str) -> bool:
    """Whether paradigm (or variant) ``paradigm`` runs code from outside raypriv (entry point, module:Class, register)."""
    return paradigm.partition(VARIANT_SEPARATOR)[0] not in BUILTINS


def _last_line(exc: BaseException) -> str:
    """``Type: last line of the message`` (a plugin's error, without its traceback)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__


@contextlib.contextmanager
def plugin_errors(paradigm: str, stage: str):
    """A plugin's exception in ``stage`` becomes :class:`ModelFailed` with its last line; a built-in's propagates.

    Only :class:`Exception` is caught: KeyboardInterrupt and SystemExit stop the run as always.
    """
    try:
        yield
    except ModelFailed:
        raise
    except Exception as exc:
        if not is_plugin(paradigm):
            raise
        raise ModelFailed(f"the plugin paradigm {paradigm!r} raised in {stage}: {_last_line(exc)}") from exc


def make_checked_paradigm(config, paradigm: str):
    """:func:`raypriv.synth.make_paradigm`, with a plugin's exception in ``__init__`` as :class:`ModelFailed`."""
    with plugin_errors(paradigm, "__init__"):
        return make_paradigm(config, paradigm)


def separable_synthesis(config, paradigm: str) -> bool:
    """:attr:`Paradigm.separable_synthesis` of ``paradigm``; False for a plugin that cannot be made (its models fail)."""
    try:
        return make_checked_paradigm(config, paradigm).separable_synthesis
    except ModelFailed:
        return False


def _as_array(value: Any) -> np.ndarray:
    """A tensor (any device, any float dtype) or array-like as a NumPy array, for the checks."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        return value.numpy()
    return np.asarray(value)


PACK_AUTO_MAX = {"cpu": 8, "cuda": 64}  # execution.pack: auto's ceiling per device type (benchmarks/RESULTS.md)


def pack_ceiling(config, paradigm, on_gpu: bool) -> int:
    """The most pipelines of ``paradigm`` a worker synthesizes at once, before its memory is known.

    The driver cuts its calls to workers with this; the worker then packs
    as :func:`resolve_pack` says, within the call.
    """
    pack = config.execution.pack
    if pack != "auto":
        return int(pack)
    return PACK_AUTO_MAX["cuda" if on_gpu else "cpu"] if packs_by_default(paradigm, on_gpu) else 1


def packs_by_default(paradigm, on_gpu: bool) -> bool:
    """Whether ``execution.pack: auto`` packs ``paradigm``: it has a batched synthesis, bit-exact or on a GPU.

    A pack that is only equal in law to the single run (mtt/datm on a CPU)
    would make a model's set depend on the pack it landed in; on a CPU that
    is left to an explicit ``execution.pack: K``
    (:meth:`~raypriv.synth.base.Paradigm.packs_bit_exact`).
    """
    return paradigm.packs_synthesis() and (on_gpu or paradigm.packs_bit_exact())


def resolve_pack(config, paradigm_name: str, paradigm, device: torch.device, input_shape: tuple[int, ...],
                 num_classes: int, private_size: int) -> int:
    """K, the pipelines of ``paradigm`` one worker synthesizes at once (``execution.pack``).

    ``auto``: 1 for a paradigm without a batched synthesis (a pack would only
    run it one by one), or whose pack is only equal in law to its single run
    on a CPU (:func:`packs_by_default`); otherwise as many pipelines as its
    :meth:`~raypriv.synth.base.Paradigm.pack_memory_bytes` fit in the budget
    (``execution.pack_memory_gb`` on a CPU, half the free memory on a GPU),
    at most :data:`PACK_AUTO_MAX` of the device type.  An explicit K whose
    batched pack does not fit the budget is a RayprivError naming both.
    """
    pack = config.execution.pack
    if pack != "auto" and (pack == 1 or not paradigm.packs_synthesis()):
        return int(pack)
    if pack == "auto" and not packs_by_default(paradigm, device.type == "cuda"):
        return 1
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget, where = free // 2, f"half the free memory of {device} ({free / 2**30:.1f} GiB free)"
    else:
        budget = int(config.execution.pack_memory_gb * 2**30)
        where = f"execution.pack_memory_gb={config.execution.pack_memory_gb:g}"
    per_pipeline = max(1, paradigm.pack_memory_bytes(tuple(input_shape), num_classes, private_size))
    fits = int(budget // per_pipeline)
    if pack == "auto":
        return max(1, min(fits, PACK_AUTO_MAX.get(device.type, 1)))
    if pack > fits:
        raise RayprivError(
            f"execution.pack={pack} does not fit: one pipeline of {paradigm_name} needs about "
            f"{per_pipeline / 2**20:.1f} MiB, and {where} holds {max(fits, 0)}; lower execution.pack (or use auto)"
            + ("" if device.type == "cuda" else ", or raise execution.pack_memory_gb")
        )
    return int(pack)


def diverged(model, *logits: np.ndarray | None) -> bool:
    """Whether a trained model's weights, buffers or query logits hold NaN or infinity.

    Finite weights give finite logits and a finite loss on finite, validated
    data, so this covers a non-finite loss too.
    """
    if any(block is not None and not np.isfinite(block).all() for block in logits):
        return True
    with torch.no_grad():
        return any(t.is_floating_point() and not bool(torch.isfinite(t).all())
                   for t in [*model.parameters(), *model.buffers()])


class ShadowTrainer:
    """Runs shadow pipelines one after another; one instance per Ray actor.

    It holds the dataset on its device for its whole life, so each model costs
    only its own synthesis and training.  The same class serves both pools:
    a synthesis worker calls :meth:`synthesize` (``role="synthesis"``), a
    shadow-model actor calls :meth:`run`.
    """

    def __init__(self, config: dict[str, Any], run_uri: str, dataset: Dataset, split: AuditSplit,
                 recipe_hashes: dict[str, str] | None = None, role: str = "train"):
        self.config = from_dict(config)
        # The driver's fingerprints (computed once per audit); computed here only for a trainer made by hand.
        self.recipe_hashes = dict(recipe_hashes) if recipe_hashes is not None else recipe_hashes_of(self.config)
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
        self.x_population = self.x_test[torch.tensor(split.population_index, device=self.device)]
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

    def context(self, paradigm_name: str, model_id: int) -> ShadowContext:
        """The :class:`ShadowContext` model ``model_id`` of ``paradigm_name`` runs in on this worker."""
        context = ShadowContext(
            self.config, paradigm_name, model_id, self.num_classes, self.input_shape, self.normalizer, self.device
        )
        plugin = plugin_identity(paradigm_name)
        if plugin is not None:  # kept in the row, so a refused resume can name the version that made it
            context.info["plugin"] = " ".join(filter(None, (plugin["class"], plugin["distribution"], plugin["version"])))
        return context

    def private_set(self, model_id: int) -> LabeledSet:
        """Model ``model_id``'s private set on this worker's device (its always-IN and IN audit samples)."""
        index = torch.from_numpy(self.split.private_indices(model_id)).to(self.device)
        return LabeledSet(self.x_pool[index], self.y_pool[index])

    def _synthesize(self, paradigm, context: ShadowContext) -> tuple[LabeledSet, dict[str, Any]]:
        """Run the synthesis stage on the model's private set; store the set if the paradigm makes one."""
        name, model_id = context.paradigm, context.model_id
        private = self.private_set(model_id)
        start = time.perf_counter()
        with self._seeded_global_rng(f"{name}/synthesize", model_id), plugin_errors(name, "synthesize()"):
            training_set = paradigm.synthesize(private, context)
        self._sync()
        return self._store_synthesis(paradigm, training_set, context, len(private), time.perf_counter() - start)

    def pack_size(self, paradigm_name: str, paradigm, model_id: int) -> int:
        """K for ``paradigm`` on this worker (:func:`resolve_pack`; the private size of ``model_id`` sizes ``auto``)."""
        return resolve_pack(self.config, paradigm_name, paradigm, self.device, tuple(self.input_shape),
                            self.num_classes, len(self.split.private_indices(model_id)))

    def _synthesize_packs(self, paradigm, contexts: list[ShadowContext]) -> dict[int, Any]:
        """Synthesize and store the sets of ``contexts``' models in packs; model id -> (set, record) or its exception.

        A paradigm with a batched synthesis runs each pack as one
        ``synthesize_pack`` call (the synthesis time is shared evenly); any
        other runs its models one by one (:meth:`_synthesize`).  Exceptions
        are kept per model and raised for it by the caller, in its turn.
        """
        outcomes: dict[int, Any] = {}
        if not contexts:
            return outcomes
        name = contexts[0].paradigm
        try:
            with plugin_errors(name, "packs_synthesis()"):
                batched = paradigm.packs_synthesis()
                size = self.pack_size(name, paradigm, contexts[0].model_id)
        except ModelFailed as exc:  # a plugin's broken pack hooks fail its models, each on its own record
            return {context.model_id: exc for context in contexts}
        for first in range(0, len(contexts), size):
            pack = contexts[first : first + size]
            if len(pack) == 1 or not batched:
                for context in pack:
                    try:
                        outcomes[context.model_id] = self._synthesize(paradigm, context)
                    except Exception as exc:  # noqa: BLE001 - raised for its own model by the caller
                        outcomes[context.model_id] = exc
                continue
            privates = [self.private_set(context.model_id) for context in pack]
            start = time.perf_counter()
            try:
                # A batched synthesis draws from each context's generators only; the global RNG is seeded for determinism.
                with self._seeded_global_rng(f"{name}/synthesize", pack[0].model_id), plugin_errors(name, "synthesize_pack()"):
                    results = paradigm.synthesize_pack(privates, pack)
                if not isinstance(results, list) or len(results) != len(pack):
                    raise ModelFailed(f"paradigm {name!r}: synthesize_pack() returned {type(results).__name__}, not a "
                                      f"list of {len(pack)} entries (a LabeledSet or an exception per pipeline)")
            except ModelFailed as exc:  # the whole call failed (a plugin): each of its models fails on its own record
                outcomes.update({context.model_id: exc for context in pack})
                continue
            self._sync()
            seconds = (time.perf_counter() - start) / len(pack)
            for context, private, result in zip(pack, privates, results, strict=True):
                try:
                    if isinstance(result, Exception):
                        with plugin_errors(name, "synthesize_pack()"):
                            raise result
                    outcomes[context.model_id] = self._store_synthesis(paradigm, result, context, len(private), seconds)
                except Exception as exc:  # noqa: BLE001 - raised for its own model by the caller
                    outcomes[context.model_id] = exc
        return outcomes

    def _store_synthesis(self, paradigm, training_set: Any, context: ShadowContext, private_size: int,
                         seconds: float) -> tuple[LabeledSet, dict[str, Any]]:
        """Check a synthesized set, store it and its record (if the paradigm keeps sets); return both."""
        name, model_id = context.paradigm, context.model_id
        training_set = self._checked_set(training_set, context)
        # Plain strides: a set trained on straight away must match one reloaded from storage.
        training_set = LabeledSet(
            training_set.x.detach().clone(memory_format=torch.contiguous_format),
            training_set.y.detach().clone(memory_format=torch.contiguous_format),
        )
        record = {
            "recipe_hash": self.recipe_hashes[name],
            "synth_seconds": seconds,
            "private_size": private_size,
            "info": dict(context.info),
        }
        if paradigm.stores_training_set:
            self.store.write_npz(
                synthetic_path(name, model_id), x=training_set.x.cpu().numpy(), y=training_set.y.cpu().numpy()
            )
            self.store.write_json(synthetic_record_path(name, model_id), record)
        return training_set, record

    def _checked_set(self, training_set: Any, context: ShadowContext) -> LabeledSet:
        """The set a paradigm's ``synthesize`` returned, checked (see the module docstring), or :class:`ModelFailed`.

        A plugin's (or ``external``'s) set comes back normalised on the device
        (x float32 or uint8, y int64 ids or float32 rows); a built-in's as it
        was, checked only.
        """
        name = context.paradigm
        strict = is_plugin(name) or name.partition(VARIANT_SEPARATOR)[0] == "external"
        if not isinstance(training_set, LabeledSet):
            raise ModelFailed(
                f"paradigm {name!r}: synthesize() returned {type(training_set).__name__}, not a raypriv.LabeledSet; "
                "return LabeledSet(x, y) with x and y tensors"
            )
        try:
            x, y = check_training_set(
                _as_array(training_set.x), _as_array(training_set.y), feature_shape=tuple(self.input_shape),
                num_classes=self.num_classes, image=len(self.input_shape) == 3, strict=strict,
            )
        except (ValueError, TypeError, RuntimeError) as exc:
            raise ModelFailed(f"paradigm {name!r} made a malformed training set: {exc}") from None
        if strict:
            self._checked_info(context)
            return LabeledSet(torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device))
        return training_set

    @staticmethod
    def _checked_info(context: ShadowContext) -> None:
        """A plugin's ``context.info``, checked (:func:`raypriv.synth.validation.check_info`), or :class:`ModelFailed`."""
        if not is_plugin(context.paradigm):
            return
        try:
            check_info(context.info)
        except ValueError as exc:
            raise ModelFailed(f"paradigm {context.paradigm!r} reported a malformed info: {exc}") from None

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
        """Synthesis stage only (for the synthesis pool); returns the stored record, or a failure record."""
        return self.synthesize_group(paradigm_name, [model_id])[0]

    def synthesize_group(self, paradigm_name: str, model_ids: list[int]) -> list[dict[str, Any]]:
        """Synthesis stage of ``model_ids`` in packs (for the synthesis pool): each one's record, or failure record.

        Each record carries its ``model_id``.  A built-in's exception other
        than :class:`ModelFailed` propagates, as from a single synthesis.
        """
        try:
            paradigm = make_checked_paradigm(self.config, paradigm_name)
        except ModelFailed as exc:
            return [failure_record(paradigm_name, model_id, exc) for model_id in model_ids]
        contexts = [self.context(paradigm_name, model_id) for model_id in model_ids]
        stored = {c.model_id: self._stored_synthesis(paradigm, c) for c in contexts}
        outcomes = self._synthesize_packs(paradigm, [c for c in contexts if stored[c.model_id] is None])
        records = []
        for model_id in model_ids:
            outcome = stored[model_id] or outcomes[model_id]
            if isinstance(outcome, ModelFailed):
                records.append(failure_record(paradigm_name, model_id, outcome))
            elif isinstance(outcome, Exception):
                raise outcome
            else:
                records.append({**outcome[1], "model_id": model_id})
        return records

    def run(self, paradigm_name: str, model_id: int) -> dict[str, Any]:
        """Train, query and store one model; returns its row (see :meth:`run_group`)."""
        return self.run_group(paradigm_name, [model_id])[0]

    def run_group(self, paradigm_name: str, model_ids: list[int]) -> list[dict[str, Any]]:
        """Train, query and store the models ``model_ids`` of one paradigm; returns their rows.

        Each model synthesizes first unless a stored set exists, in packs
        (:meth:`_synthesize_packs`) where the paradigm is separable or
        declares a batched synthesis (then this instance keeps each model's
        state until its ``train``).  The engine
        (:func:`raypriv.ensemble.resolve_engine`) trains them one by one, each
        stored as soon as it is done, or all at once with the ensemble engine.
        A model whose pipeline raises :class:`ModelFailed` gets a failure
        record (:func:`failure_record`) in place of its row; the others go on.
        """
        try:
            paradigm = make_checked_paradigm(self.config, paradigm_name)
            with plugin_errors(paradigm_name, "training_recipe()"):
                recipe = paradigm.training_recipe(self.config)
                engine = engine_for(self.config, paradigm, self.device)
            # Packs for separable paradigms, and for one that keeps state from synthesis for train() (DFAD's
            # student) if it declares a batched synthesis: this instance synthesizes the group's packs, then
            # trains each model, so it holds the state of a pack's K models until their train().  Any other
            # paradigm with state synthesizes and trains each model in turn, as before packs.
            with plugin_errors(paradigm_name, "packs_synthesis()"):
                packed = paradigm.separable_synthesis or paradigm.packs_synthesis()
        except ModelFailed as exc:  # a plugin that cannot be made fails each of its models
            return [failure_record(paradigm_name, model_id, exc) for model_id in model_ids]
        rows, prepared, failed = [], [], []
        contexts = [self.context(paradigm_name, model_id) for model_id in model_ids]
        stored = {context.model_id: self._stored_synthesis(paradigm, context) for context in contexts}
        outcomes = self._synthesize_packs(paradigm, [c for c in contexts if packed and stored[c.model_id] is None])
        for context in contexts:
            model_id = context.model_id
            try:
                outcome = stored[model_id] or outcomes.get(model_id)
                if outcome is None:
                    outcome = self._synthesize(paradigm, context)
                elif isinstance(outcome, Exception):
                    raise outcome  # this model's own error, in its turn (a built-in's non-ModelFailed propagates)
                training_set, record = outcome
            except ModelFailed as exc:
                failed.append(failure_record(paradigm_name, model_id, exc))
                continue
            if engine == "ensemble":
                prepared.append((context, training_set, record))
                continue
            start = time.perf_counter()
            try:
                with self._seeded_global_rng(f"{paradigm_name}/train", model_id), plugin_errors(paradigm_name, "train()"):
                    model = paradigm.train(training_set, context)
                self._sync()
                rows.append(self._finish(context, model, training_set, record, time.perf_counter() - start))
            except ModelFailed as exc:
                failed.append(failure_record(paradigm_name, model_id, exc))
        if engine == "loop" or not prepared:
            return rows + failed

        start = time.perf_counter()
        models = self._train_ensemble(prepared, recipe)
        self._sync()
        seconds = (time.perf_counter() - start) / len(prepared)  # the group's wall time, shared evenly
        for (context, training_set, record), model in zip(prepared, models, strict=True):
            try:
                rows.append(self._finish(context, model, training_set, record, seconds))
            except ModelFailed as exc:
                failed.append(failure_record(paradigm_name, context.model_id, exc))
        return rows + failed

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
        return train_fitting_memory(ids, train_group, self.models_that_fit[paradigm], on_split)

    def _finish(
        self, context: ShadowContext, model, training_set: LabeledSet, record: dict[str, Any], train_seconds: float
    ) -> dict[str, Any]:
        """Query a trained model on the audit samples and store its logits and row.

        A model that is not an ``nn.Module``, whose weights or logits are not
        finite (:func:`diverged`), or whose plugin reported a malformed
        ``info`` raises :class:`ModelFailed` before anything is stored.
        """
        config, paradigm_name, model_id = self.config, context.paradigm, context.model_id
        if not isinstance(model, torch.nn.Module):
            raise ModelFailed(
                f"paradigm {paradigm_name!r}: train() returned {type(model).__name__}, not a torch.nn.Module; "
                "return the trained network"
            )
        self._checked_info(context)
        batch = config.train.eval_batch_size
        logits = predict_logits(model, self.x_audit, self.normalizer, config.queries, batch)
        population_logits = population = None
        if len(self.split.population_index):
            population_logits = predict_logits(model, self.x_population, self.normalizer, config.queries, batch)
            population = (population_logits, self.split.population_labels)
        if diverged(model, logits, population_logits):
            raise ModelFailed(
                f"training diverged (non-finite weights or logits; train.lr={config.train.lr:g}): lower train.lr "
                "(or the paradigm's own learning rate); that is a new recipe, so give it a new --out"
            )
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
        write_model_result(self.store, row, logits, self.split.audit_labels, population)
        return row
