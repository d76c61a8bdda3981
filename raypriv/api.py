"""The Python API for notebooks and scripts: ``raypriv.audit(config, **overrides)`` and ``raypriv.load_run(dir)``.

Both return one :class:`raypriv.reader.Run`: ``.metrics`` (a tidy
DataFrame: paradigm, attack, threat_model (``model`` or ``release``), metric,
value, ci_low, ci_high), ``.results``
(typed, per paradigm), ``.models``, ``.keep``, ``.config``, ``.scores()``
(read on demand) and ``.report(path)``.  Bad input raises
:class:`raypriv.errors.RayprivError` with the same message the CLI prints.
The config goes through :func:`raypriv.config.load`, as the CLI's does, so
``paradigms=[...]`` selects among a config's paradigms exactly as
``--paradigms`` does.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

from raypriv.config import load
from raypriv.driver import run_audit
from raypriv.reader import Run, load_run

__all__ = ["audit", "load_run"]


def audit(
    config: Mapping[str, Any] | str | Path | None = None,
    *,
    use_ray: bool = True,
    show_progress: bool = True,
    **overrides: Any,
) -> Run:
    """Run (or resume) an audit and return its :class:`~raypriv.reader.Run`.

    ``config`` is a mapping of config fields, a YAML file, or None (the
    defaults); it is never modified.  ``overrides`` set fields on top of it:
    top-level names as keywords (``n_models=8``, ``paradigms=["real",
    "coreset"]``), nested ones with ``__`` (``train__epochs=2`` sets
    ``train.epochs``).  ``use_ray=False`` trains in this process.
    ``show_progress``: a progress bar (tqdm: a widget in a notebook, a bar on
    a terminal) or, elsewhere, a log line every 10 s on stderr;
    ``show_progress=False`` prints nothing.

    An audit that runs until it decides takes the config's ``budget``
    section (``{"until": "decided", "max_models": 64, "round": 8}``, or
    ``budget__until="decided", budget__max_models=64``): it trains in rounds
    and stops each paradigm once its verdict is decided
    (:mod:`raypriv.sequential`); the run's ``sequential.json`` holds each
    paradigm's decision and models.
    """
    dotted = {key.replace("__", "."): value for key, value in overrides.items()}
    if dotted.get("budget.max_models") is not None and "n_models" not in dotted:  # the plan's size, as --max-models
        dotted["n_models"] = dotted["budget.max_models"]
    resolved = load(config, dotted)
    with _progress_to_stderr(show_progress):
        return run_audit(resolved, use_ray=use_ray, show_progress=show_progress)


@contextlib.contextmanager
def _progress_to_stderr(enabled: bool) -> Iterator[None]:
    """While auditing, send the ``raypriv`` logger's progress lines to stderr when nothing else handles them.

    The CLI configures logging itself; a script or notebook usually has no
    handler, and Python would then drop INFO lines silently.
    """
    logger = logging.getLogger("raypriv")
    if not enabled or logger.handlers or logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("raypriv: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
