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
from typing import Any

import pyarrow as pa

from raypriv.config import ExperimentConfig
from raypriv.data import load_dataset
from raypriv.errors import RayprivError
from raypriv.execution import train_pending
from raypriv.queries import image_queries
from raypriv.reader import Run, run_name
from raypriv.report.figures import write_roc_png
from raypriv.run.directory import RunDirectory
from raypriv.run.fingerprints import Fingerprints
from raypriv.run.format import MODEL_SCHEMA
from raypriv.scoring import ScoringPlan, score_run
from raypriv.split import make_audit_split
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
    split = make_audit_split(
        dataset, config.audit.n_audit, config.audit.canary, config.n_models, config.seed, config.audit.n_population
    )
    run.check_recipes(fingerprints)
    run.record(config, fingerprints, dataset, split)

    complete, discarded = run.completed(config, fingerprints)
    for message in discarded:
        log.warning("discarding a stored result: %s", message)
    # Model-major order: every paradigm progresses together, so early results cover them all
    # and the ETA averages over paradigms of very different cost.
    pending = [(p, m) for m in range(config.n_models) for p in config.paradigms if (p, m) not in complete]
    if complete:
        log.info("resuming %s: %d models already complete, %d to train", run.uri, len(complete), len(pending))
    if pending:
        failures = train_pending(config, run.store, dataset, split, pending, dict(fingerprints.recipes),
                                 use_ray=use_ray, show_progress=show_progress)
        if failures:  # nothing is scored from an incomplete keep matrix; what finished stays stored
            raise RayprivError(failure_message(failures, len(pending), run.uri))
        complete, _ = run.completed(config, fingerprints)

    models = pa.Table.from_pylist([complete[key] for key in sorted(complete)], schema=MODEL_SCHEMA).to_pandas()
    run.store.write_table("models.parquet", pa.Table.from_pandas(models, schema=MODEL_SCHEMA, preserve_index=False))
    plan = ScoringPlan.from_config(config, split, recipe_hashes=fingerprints.recipes, store_uri=run.store.uri,
                                   show_progress=show_progress)
    metrics, curves = score_run(plan, run.store, models)
    run.record_outputs()  # run.json: the sha256 of audit.parquet, scores.parquet, metrics.json, written last
    write_roc_png(run.store, curves, f"{config.name}: {plan.n_models} models x {plan.n_audit} audit samples (leave-one-out)")
    wall = time.perf_counter() - start
    summary = format_summary(config, metrics, models, wall)
    run.store.write_bytes("summary.txt", summary.encode())
    return Run(
        uri=run.uri, name=run_name(config.out_dir), store=run.store, config=config, raw_config=config.to_dict(),
        manifest=run.manifest(), keep=split.keep, audit=run.audit(), models=models, results=metrics, summary=summary,
        wall_seconds=wall, trained_now=len(pending), discarded=discarded,
    )
