"""The report's data: the runs it reads and what :mod:`raypriv.report.build` computes from them.

Plain dataclasses, so that the figures, the sample tables and the renderers
can take them without importing the code that builds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from raypriv.results import ParadigmMetrics
from raypriv.run.reader import Run


@dataclass
class ParadigmResult:
    """One paradigm of one run, with everything the report shows about it."""

    label: str
    run: Run
    paradigm: str
    entry: ParadigmMetrics
    is_in: np.ndarray
    scores: dict[str, np.ndarray]
    bootstrap: dict[str, np.ndarray] = field(default_factory=dict)  # headline attack replicates
    verdict_kind: str = ""
    verdict: str = ""
    frontier_kind: str = ""  # against the run's DP-SGD frontier (verdicts.frontier_verdict); "" without one
    frontier: str = ""

    @property
    def models(self) -> pd.DataFrame:
        return self.run.models[self.run.models.paradigm == self.paradigm]

    @property
    def accounted(self) -> tuple[float | None, float | None]:
        info = self.entry.info
        return info.get("epsilon"), info.get("delta")


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
    runs: list[Run]
    results: list[ParadigmResult]
    attack: str
    histogram_attack: str
    n_boot: int
    comparisons: list[Comparison]
    skipped_comparisons: list[str]
    vulnerable: dict[str, pd.DataFrame]
    figures: dict[str, bytes]  # name -> PNG
    figure_notes: dict[str, str]
