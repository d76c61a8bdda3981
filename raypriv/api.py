"""The Python API for notebooks: ``raypriv.audit(config, **overrides)`` and ``raypriv.load_run(dir)``.

Both return one :class:`raypriv.driver.AuditResult`: ``.metrics`` (a tidy
DataFrame: paradigm, attack, metric, value, ci_low, ci_high), ``.models``,
``.scores()`` (read on demand) and ``.report(path)``.  Bad input raises
:class:`raypriv.errors.RayprivError` with the same message the CLI prints.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from raypriv.driver import AuditResult, run_audit
from raypriv.config import apply_overrides, read_config_file
from raypriv.errors import RayprivError
from raypriv.experiment import config_from_dict
from raypriv.rundir import RunDirectory


def audit(
    config: dict[str, Any] | str | Path | None = None,
    *,
    use_ray: bool = True,
    show_progress: bool = False,
    **overrides: Any,
) -> AuditResult:
    """Run (or resume) an audit and return its result.

    ``config`` is a mapping of config fields, a YAML file, or None (the
    defaults).  ``overrides`` set fields on top of it: top-level names as
    keywords (``n_models=8``), nested ones with ``__`` (``train__epochs=2``
    sets ``train.epochs``).  ``use_ray=False`` trains in this process.
    """
    if isinstance(config, dict):
        raw = copy.deepcopy(config)
    elif config is None or isinstance(config, (str, Path)):
        raw = read_config_file(config)
    else:
        raise RayprivError(f"raypriv.audit: config must be a dict, a YAML path or None, got {type(config).__name__}")
    apply_overrides(raw, {key.replace("__", "."): value for key, value in overrides.items()})
    return run_audit(config_from_dict(raw), use_ray=use_ray, show_progress=show_progress)


def load_run(run_dir: str | Path) -> AuditResult:
    """The :class:`AuditResult` of a finished run directory (an audit's ``out_dir``)."""
    run = RunDirectory(str(run_dir))
    run.require_run("a finished audit")
    store = run.store
    for name in ("metrics.json", "models.parquet"):
        if not store.exists(name):
            raise RayprivError(
                f"{store.path(name)} is missing: the audit in {store.uri} has not finished; run "
                f"`raypriv status {store.uri}` and rerun the audit with its config and out_dir"
            )
    summary = store.read_bytes("summary.txt").decode() if store.exists("summary.txt") else ""
    models = store.read_table("models.parquet").to_pandas()
    return AuditResult(run.uri, store.read_json("metrics.json"), models, summary, None)
