"""The report's data: the runs it reads and what :mod:`raypriv.report.build` computes from them.

Plain dataclasses, so that the figures, the sample tables and the renderers
can take them without importing the code that builds them.  A run enters as
a :class:`FinishedRun`: the fields the report reads.  The one reader of a run
directory, :class:`raypriv.reader.Run`, has them (and its ``.report()``
calls into this package, so this package never imports it back).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from raypriv.config import ExperimentConfig
from raypriv.results import ParadigmMetrics
from raypriv.run.store import RunStore


class FinishedRun(Protocol):
    """What the report reads of a finished run (:class:`raypriv.reader.Run`, ``raypriv.load_run(dir)``).

    ``keep``: bool ``(n_models, n_audit)``; ``audit``: the audit samples in
    ``sample_id`` order; ``results``: each paradigm's typed metrics.
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
    results: dict[str, ParadigmMetrics]


@dataclass
class ReleaseView:
    """One paradigm's release threat model (:mod:`raypriv.release`): its headline release attack, fixed in advance
    (the first of :func:`raypriv.release.release_headline_order` it has), with its bootstrap, verdict and most
    vulnerable samples (beside their nearest synthetic record, for images)."""

    attack: str
    bootstrap: dict[str, np.ndarray]
    verdict_kind: str
    verdict: str
    vulnerable: pd.DataFrame


@dataclass
class ParadigmResult:
    """One paradigm of one run, with everything the report shows about it."""

    label: str
    run: FinishedRun
    paradigm: str
    entry: ParadigmMetrics
    is_in: np.ndarray
    scores: dict[str, np.ndarray]
    bootstrap: dict[str, np.ndarray] = field(default_factory=dict)  # headline attack replicates
    verdict_kind: str = ""
    verdict: str = ""
    frontier_kind: str = ""  # against the run's DP-SGD frontier (verdicts.frontier_verdict); "" without one
    frontier: str = ""
    release: ReleaseView | None = None  # None: the paradigm releases no synthetic set (or it was not scored)

    @property
    def models(self) -> pd.DataFrame:
        return self.run.models[self.run.models.paradigm == self.paradigm]

    @property
    def accounted(self) -> tuple[float | None, float | None]:
        info = self.entry.info
        return info.get("epsilon"), info.get("delta")

    @property
    def accountant(self) -> str | None:
        """How the accounted ε was computed (``rdp``, ``prv``, ``zcdp``, ...), None if the paradigm did not say."""
        value = self.entry.info.get("accountant")
        return value if isinstance(value, str) else None


@dataclass
class Comparison:
    a: str
    b: str
    attack: str
    results: dict[str, dict[str, float]]  # metric -> paired_bootstrap_difference output

    def reading(self, metric: str = "tpr@1%fpr") -> str:
        result = self.results[metric]
        if not np.isfinite(result["low"]):
            return "not comparable"
        if result["low"] > 0:
            return f"{self.a} leaks more (significant)"
        if result["high"] < 0:
            return f"{self.b} leaks more (significant)"
        return "no significant difference"


@dataclass
class Report:
    runs: list[FinishedRun]
    results: list[ParadigmResult]
    attack: str
    histogram_attack: str
    n_boot: int
    comparisons: list[Comparison]
    skipped_comparisons: list[str]
    vulnerable: dict[str, pd.DataFrame]
    figures: dict[str, bytes]  # name -> PNG
    figure_notes: dict[str, str]
