"""The comparison report of finished runs: ``raypriv report RUN_DIR [RUN_DIR ...]``.

:func:`build_report` reads finished run directories and computes, per
paradigm, the privacy metrics with 95% intervals, a worded verdict, utility
and cost, paired comparisons between paradigms, the most vulnerable audit
samples beside their nearest synthetic neighbours, and the plots;
:func:`write_report` writes them as one self-contained ``report.html`` and a
``report.md``.

The modules: :mod:`~raypriv.report.build` (loading runs, the computations),
:mod:`~raypriv.report.verdicts`, :mod:`~raypriv.report.samples` (per-sample
statistics), :mod:`~raypriv.report.figures`, :mod:`~raypriv.report.tables`,
:mod:`~raypriv.report.render` (the section model and both renderers) and
:mod:`~raypriv.report.browser` (the headless-Chromium check).
"""

from raypriv.report.browser import browser_check, find_chromium, screenshot
from raypriv.report.build import (
    Comparison,
    ParadigmResult,
    Report,
    audit_split_mismatch,
    build_report,
    choose_attack,
    load_scores,
)
from raypriv.report.render import (
    format_verdicts,
    render_html,
    render_markdown,
    write_report,
)
from raypriv.report.samples import nearest_neighbours, vulnerable_samples
from raypriv.report.tables import (
    attacks_table,
    comparison_table,
    cost_table,
    format_comparison,
    privacy_table,
)
from raypriv.report.verdicts import LevelEvidence, VerdictInput, verdict

__all__ = [
    "Comparison", "LevelEvidence", "ParadigmResult", "Report", "VerdictInput",
    "attacks_table", "audit_split_mismatch", "browser_check", "build_report", "choose_attack",
    "comparison_table", "cost_table", "find_chromium", "format_comparison", "format_verdicts",
    "load_scores", "nearest_neighbours", "privacy_table", "render_html",
    "render_markdown", "screenshot", "verdict", "vulnerable_samples", "write_report",
]
