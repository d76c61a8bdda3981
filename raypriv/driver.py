"""The audit driver, as a short sequence of calls: config -> split -> shadow pipelines -> attacks -> summary.

:func:`run_audit` is the whole of ``raypriv audit`` and ``raypriv.audit``.
Each step is one module: the run directory (:mod:`raypriv.run.directory`),
the data and its audit split (:mod:`raypriv.data`, :mod:`raypriv.split`), the
shadow pipelines (:mod:`raypriv.pipeline`, run by :mod:`raypriv.execution`),
the attacks and their metrics (:mod:`raypriv.scoring`), and the printed
summary (:mod:`raypriv.summary`).  The config's fingerprints are computed
once, here, and passed down.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from raypriv.attacks import score_attacks
from raypriv.cluster import connected
from raypriv.config import ExperimentConfig
from raypriv.data import Dataset, load_dataset
from raypriv.errors import RayprivError
from raypriv.execution import train_pending
from raypriv.progress import report_open
from raypriv.queries import image_queries
from raypriv.reader import Run, run_name
from raypriv.report.figures import write_roc_png
from raypriv.run.directory import SEQUENTIAL_FILE, RunDirectory
from raypriv.run.fingerprints import Fingerprints
from raypriv.run.format import MODEL_SCHEMA, model_row_path
from raypriv.scoring import ScoringPlan, score_run
from raypriv.scoring.local import scoring_workers
from raypriv.scoring.outputs import paradigm_metrics
from raypriv.scoring.read import load_attack_inputs
from raypriv.sequential import ArmEvidence, Schedule, SequentialAudit, headline_attack
from raypriv.split import AuditSplit, make_audit_split
from raypriv.summary import format_summary
from raypriv.synth import paradigm_class
from raypriv.training import check_sizes

log = logging.getLogger("raypriv")


def failure_message(failures: list[dict[str, Any]], total: int, uri: str) -> str:
    """The error a run with failed models ends with: which failed, why, and that a rerun retries only them."""
    shown = "\n".join(f"  {f['paradigm']} #{f['model_id']}: {f['error']}" for f in failures[:5])
    more = f"\n  ... and {len(failures) - 5} more" if len(failures) > 5 else ""
    return (
        f"{len(failures)} of the {total} models trained now failed, so the run is not scored (the others are stored "
        f"in {uri}); fix the cause and rerun the same command: only the failed models are retried\n"
        f"{shown}{more}"
    )


def in_ray_job() -> bool:
    """True inside a `ray job submit` entrypoint (its working directory is a temporary copy)."""
    job = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if job:
        with contextlib.suppress(ValueError, AttributeError):
            if "job_submission_id" in (json.loads(job).get("metadata") or {}):
                return True
    return "runtime_resources/working_dir_files" in os.getcwd().replace(os.sep, "/")


def check_out_dir(config: ExperimentConfig) -> None:
    """Refuse a relative out_dir inside a Ray job: it would land in Ray's temporary working-dir copy and be lost."""
    out = config.out_dir
    if "://" not in out and not os.path.isabs(os.path.expanduser(out)) and in_ray_job():
        raise RayprivError(
            f"out_dir={out!r} is a relative path, and this audit runs as a Ray job, whose working directory "
            f"({os.getcwd()}) is a temporary copy deleted with the Ray session; set out_dir (or --out) to a shared "
            "absolute path or a URI such as s3://bucket/runs/x"
        )


def train_or_fail(config: ExperimentConfig, run: RunDirectory, dataset: Dataset, split: AuditSplit,
                  pending: list[tuple[str, int]], fingerprints: Fingerprints, use_ray: bool, show_progress: bool) -> None:
    """Train ``pending``; if any model failed, stop with :func:`failure_message` (what finished stays stored)."""
    failures = train_pending(config, run.store, dataset, split, pending, dict(fingerprints.recipes),
                             use_ray=use_ray, show_progress=show_progress)
    if failures:  # nothing is scored from an incomplete keep matrix
        raise RayprivError(failure_message(failures, len(pending), run.uri))


class SequentialRun:
    """An until-decided audit's rounds (:mod:`raypriv.sequential`): train a round, look, stop the decided paradigms.

    :class:`raypriv.sequential.SequentialAudit` decides who trains and what
    each look concludes; this class trains, scores the headline attack in
    memory, and reads the per-model test accuracies from the model rows.
    Resumable as a fixed audit is: each round trains only the models it
    lacks, and the looks are recomputed from the stored models (the frontier
    bootstrap is seeded), so a rerun reaches the same decisions and trains
    nothing more.
    """

    def __init__(self, config: ExperimentConfig, run: RunDirectory, fingerprints: Fingerprints, dataset: Dataset,
                 split: AuditSplit, plan: ScoringPlan, use_ray: bool, show_progress: bool) -> None:
        self.config, self.run_dir, self.fingerprints = config, run, fingerprints
        self.dataset, self.split, self.plan = dataset, split, plan
        self.use_ray, self.show_progress = use_ray, show_progress
        self.attack = headline_attack(plan.attacks)
        self.schedule = Schedule.of(config.budget.max_models, config.budget.round, self.attack)
        self.audit = SequentialAudit(list(config.paradigms), self.schedule, self.attack,
                                     config.budget.bounded_multiple, seed=config.seed)

    def run(self, complete: dict) -> int:
        """Every round until each paradigm is decided or has ``max_models`` models; returns the models trained now."""
        with connected(self.config.ray.address) if self.use_ray else contextlib.nullcontext():  # one Ray for all rounds
            return self._rounds(complete)

    def _rounds(self, complete: dict) -> int:
        trained, looks = 0, set(self.schedule.looks)
        for index in range(self.schedule.rounds):
            training = self.audit.training()
            if not training:
                break
            start, stop = index * self.schedule.round, (index + 1) * self.schedule.round
            pending = [(p, m) for m in range(start, stop) for p in training if (p, m) not in complete]
            if pending:
                train_or_fail(self.config, self.run_dir, self.dataset, self.split, pending, self.fingerprints,
                              self.use_ray, self.show_progress)
                trained += len(pending)
            if stop in looks:
                self.audit.look(stop, self.plan.keep, {p: self.evidence(p, stop) for p in training})
            else:
                self.audit.wait(stop)
            report_open(f"round {index + 1}/{self.schedule.rounds} ({stop} models)", self.audit.progress(training),
                        self.show_progress)
        return trained

    def evidence(self, paradigm: str, models: int) -> ArmEvidence:
        """``paradigm``'s first ``models`` models: headline-attack scores (in memory, nothing written) and model rows."""
        sub = replace(self.plan, keep=self.plan.keep[:models], attacks=(self.attack,))
        workers = scoring_workers()
        lira_scores, label_log_p = load_attack_inputs(sub, self.run_dir.store, paradigm, workers=workers)
        population = None
        if sub.needs_population:
            population, _ = load_attack_inputs(sub, self.run_dir.store, paradigm, population=True, workers=workers)
        # As raypriv.scoring.local.score_paradigm calls it, for the headline attack only, without writing scores.
        scores = score_attacks(lira_scores, label_log_p, sub.keep, sub.attacks, rmia=sub.rmia, lira=sub.lira,
                               workers=workers, population=population)[self.attack]
        rows = pd.DataFrame([self.run_dir.store.read_table(model_row_path(paradigm, m)).to_pylist()[0]
                             for m in range(models)])
        entry = paradigm_metrics(rows)
        epsilon, delta, accountant = (entry.info.get(key) for key in ("epsilon", "delta", "accountant"))
        return ArmEvidence(
            np.asarray(scores, dtype=np.float64), rows.test_acc.to_numpy(dtype=np.float64),
            entry.synth_seconds_mean + entry.train_seconds_mean,
            epsilon=float(epsilon) if isinstance(epsilon, (int, float)) else None,
            delta=float(delta) if isinstance(delta, (int, float)) else None,
            accountant=accountant if isinstance(accountant, str) else None,
        )

    def models_used(self) -> dict[str, int]:
        """Each paradigm's models: where it stopped, else ``max_models``."""
        return self.audit.models_used()

    def to_json(self) -> dict[str, Any]:
        """``sequential.json``: the schedule, the spending rules, and each paradigm's decision and looks."""
        return self.audit.to_json()

    def summary(self) -> str:
        """One line per paradigm: its decision, the models it used, and why."""
        return self.audit.summary()


def run_audit(config: ExperimentConfig, *, use_ray: bool = True, show_progress: bool = True,
              force_unlock: bool = False) -> Run:
    """Run (or resume) the audit a config describes, holding the run directory's lease throughout.

    Everything that can refuse the run (another holder, another protocol or
    recipe, a stored split that differs) is checked before the first write,
    so a refused run leaves the directory as it was.
    """
    start = time.perf_counter()
    check_out_dir(config)
    run = RunDirectory(config.out_dir)
    with run.lease(force_unlock):
        return _audit_locked(config, run, use_ray, show_progress, start)


def _audit_locked(config: ExperimentConfig, run: RunDirectory, use_ray: bool, show_progress: bool, start: float) -> Run:
    fingerprints = Fingerprints.of(config)
    run.check_resumable(config, fingerprints)
    dataset = load_dataset(config.dataset)
    check_sizes(config, dataset.input_shape, dataset.num_classes)  # crop_padding, width: before the first write
    for paradigm in config.paradigms:  # e.g. a tabular generator on images: refused before the first write
        paradigm_class(paradigm).check_data(paradigm, dataset.input_shape, dataset.num_classes)
    if image_queries(config.queries) and not dataset.is_image:
        raise RayprivError(
            f"queries lists {image_queries(config.queries)}, but {config.dataset.name} is tabular (no image to "
            "transform); use queries: [identity]"
        )
    until_decided = config.budget.until == "decided"
    split = make_audit_split(
        dataset, config.audit.n_audit, config.audit.canary, config.n_models, config.seed, config.audit.n_population,
        keep_block=config.budget.round if until_decided else None,
    )
    plan = ScoringPlan.from_config(config, split, recipe_hashes=fingerprints.recipes, store_uri=run.store.uri,
                                   show_progress=show_progress, dataset=dataset)
    if until_decided and plan.backend != "local":
        raise RayprivError(
            f"budget.until: decided rescores between rounds in this process, but scoring.backend resolves to "
            f"{plan.backend!r} (scoring.backend={config.scoring.backend!r}, out_dir={config.out_dir!r}); set "
            "scoring.backend: local, or audit with a fixed budget (--models N)"
        )
    run.check_recipes(fingerprints)
    run.record(config, fingerprints, dataset, split)

    complete, discarded = run.completed(config, fingerprints)
    for message in discarded:
        log.warning("discarding a stored result: %s", message)
    trained = 0
    if until_decided:
        sequential = SequentialRun(config, run, fingerprints, dataset, split, plan, use_ray, show_progress)
        trained = sequential.run(complete)
        plan = replace(plan, model_counts=sequential.models_used())
        complete, _ = run.completed(config, fingerprints)
        complete = {key: row for key, row in complete.items() if key[1] < plan.model_counts[key[0]]}
        run.store.write_json(SEQUENTIAL_FILE, sequential.to_json())
    else:
        # Model-major order: every paradigm progresses together, so early results cover them all
        # and the ETA averages over paradigms of very different cost.
        pending = [(p, m) for m in range(config.n_models) for p in config.paradigms if (p, m) not in complete]
        if complete:
            log.info("resuming %s: %d models already complete, %d to train", run.uri, len(complete), len(pending))
        if pending:
            train_or_fail(config, run, dataset, split, pending, fingerprints, use_ray, show_progress)
            complete, _ = run.completed(config, fingerprints)
        trained = len(pending)

    models = pa.Table.from_pylist([complete[key] for key in sorted(complete)], schema=MODEL_SCHEMA).to_pandas()
    run.store.write_table("models.parquet", pa.Table.from_pandas(models, schema=MODEL_SCHEMA, preserve_index=False))
    metrics, curves = score_run(plan, run.store, models)
    run.record_outputs()  # run.json: the sha256 of audit.parquet, scores.parquet, metrics.json, written last
    write_roc_png(run.store, curves, f"{config.name}: {plan.n_models} models x {plan.n_audit} audit samples (leave-one-out)")
    wall = time.perf_counter() - start
    summary = format_summary(config, metrics, models, wall)
    if until_decided:
        summary += sequential.summary()
    run.store.write_bytes("summary.txt", summary.encode())
    return Run(
        uri=run.uri, name=run_name(config.out_dir), store=run.store, config=config, raw_config=config.to_dict(),
        manifest=run.manifest(), keep=split.keep, audit=run.audit(), models=models, results=metrics, summary=summary,
        wall_seconds=wall, trained_now=trained, discarded=discarded,
    )
