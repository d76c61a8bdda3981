"""The one reader of a finished run: :class:`Run`, what ``raypriv.load_run``, ``raypriv.audit`` and the report use.

A :class:`Run` holds the small files of a run directory, read once and
checked against each other: the manifest, the config, the keep matrix, the
audit samples, the model rows and the typed metrics
(:class:`raypriv.results.ParadigmMetrics`).  The large ones are read on
demand: :meth:`Run.scores` (``scores.parquet``) and :meth:`Run.logits_dataset`
(the logits, as a Ray Dataset).  :meth:`Run.report` writes the comparison
report of this one run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from raypriv.config import ExperimentConfig, from_dict
from raypriv.errors import RayprivError
from raypriv.results import RunMetrics, metrics_from_json, metrics_to_json
from raypriv.run.directory import RunDirectory
from raypriv.run.store import RunStore

if TYPE_CHECKING:
    import ray.data

# What a finished audit has written; a run missing any of them has not finished scoring.
FINISHED_FILES = ("metrics.json", "scores.parquet", "models.parquet", "keep.npy", "audit.parquet")


@dataclass
class Run:
    """A finished audit's run directory.

    ``results``: each paradigm's typed metrics, in run order; :attr:`metrics`
    is the same numbers as a tidy table.  ``keep``: bool ``(n_models,
    n_audit)``, ``keep[m, i]`` is True where audit sample ``i`` was IN for
    model ``m``.  ``audit``: the audit samples in ``sample_id`` order
    (labels, canaries).  ``config``: None if the stored config no longer
    validates (e.g. a plugin that is gone); ``raw_config`` is its mapping.

    A run returned by ``raypriv.audit`` also says what that call did:
    ``wall_seconds``, ``trained_now`` and ``discarded`` (stored results that
    failed their checks and were retrained).  A loaded run has
    ``wall_seconds`` None.
    """

    uri: str
    name: str
    store: RunStore
    config: ExperimentConfig | None
    raw_config: dict[str, Any]
    manifest: dict[str, Any]
    keep: np.ndarray
    audit: pd.DataFrame
    models: pd.DataFrame
    results: RunMetrics
    summary: str = ""
    wall_seconds: float | None = None
    trained_now: int = 0
    discarded: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, run_dir: str) -> Run:
        """Read a finished run directory (``raypriv audit``'s ``--out``); a RayprivError names what is missing."""
        directory = RunDirectory(str(run_dir))
        directory.require_run("a finished audit")
        store = directory.store
        for name in FINISHED_FILES:
            if not store.exists(name):
                raise RayprivError(
                    f"{store.path(name)} is missing: the audit in {store.uri} has not finished scoring; "
                    f"run `raypriv status {store.uri}` and rerun `raypriv audit` with its config and --out"
                )
        damaged = directory.damaged_outputs()
        if damaged:
            raise RayprivError(
                f"{', '.join(store.path(name) for name in damaged)} differ from the sha256 run.json records (damaged, "
                f"or copied from another run); rerun `raypriv audit --config {store.path('config.yaml')} --out {store.uri}` "
                "to rebuild them from the stored models"
            )
        raw = directory.stored_config_raw()
        try:
            config = from_dict(raw)
        except RayprivError:
            config = None
        audit, keep = directory.audit(), directory.keep()
        if len(audit) != keep.shape[1] or not np.array_equal(audit.sample_id.to_numpy(), np.arange(keep.shape[1])):
            raise RayprivError(
                f"{store.uri}: audit.parquet and keep.npy disagree on the audit samples; rerun the audit in a new --out"
            )
        summary = store.read_bytes("summary.txt").decode() if store.exists("summary.txt") else ""
        return cls(
            uri=store.uri,
            name=run_name(run_dir),
            store=store,
            config=config,
            raw_config=raw or {},
            manifest=directory.manifest(),
            keep=keep,
            audit=audit,
            models=store.read_table("models.parquet").to_pandas(),
            results=metrics_from_json(store.read_json("metrics.json"), store.path("metrics.json")),
            summary=summary,
        )

    @property
    def run_dir(self) -> str:
        return self.uri

    @property
    def metrics(self) -> pd.DataFrame:
        """Columns paradigm, attack, threat_model, metric, value, ci_low, ci_high (:func:`raypriv.summary.tidy_metrics`)."""
        from raypriv.summary import tidy_metrics

        return tidy_metrics(self.results)

    @property
    def metrics_json(self) -> dict[str, Any]:
        """The mapping ``metrics.json`` holds (:func:`raypriv.results.metrics_to_json`)."""
        return metrics_to_json(self.results)

    def scores(self, paradigm: str | None = None) -> pd.DataFrame:
        """Per (paradigm, model, audit sample) attack scores, read from ``scores.parquet`` now (one paradigm's rows, if given)."""
        import pyarrow.parquet as pq

        filters = [("paradigm", "==", paradigm)] if paradigm is not None else None
        return pq.read_table(self.store.path("scores.parquet"), filesystem=self.store.fs, filters=filters).to_pandas()

    def logits_dataset(self, paradigm: str | None = None) -> ray.data.Dataset:
        """The run's logits as a ``ray.data.Dataset`` with a ``paradigm`` column, for analysis at cluster scale."""
        from raypriv.scoring.logits_dataset import logits_dataset

        return logits_dataset(self.uri, paradigm)

    def report(self, path: str | None = None, **options: Any) -> dict[str, str]:
        """Write report.html and report.md of this run into ``path`` (default: the run's ``report/``).

        ``options`` go to :func:`raypriv.report.build_report` (``attack``,
        ``n_boot``, ``seed``, ``top``); returns the paths written.
        """
        from raypriv.report import build_report, write_report

        return write_report(build_report([self], **options), str(path) if path else self.store.path("report"))


def run_name(run_dir: str) -> str:
    """A run's short name in reports: its directory's last path component."""
    return str(run_dir).rstrip("/").rsplit("/", 1)[-1] or str(run_dir)


def load_run(run_dir: str) -> Run:
    """The :class:`Run` of a finished run directory (``raypriv.load_run``)."""
    return Run.open(str(run_dir))
