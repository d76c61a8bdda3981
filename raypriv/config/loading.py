"""The one config entry, for the command line and the Python API alike: :func:`load`.

``load(source, overrides)`` reads a YAML file, a mapping or the defaults,
applies dotted overrides, selects paradigms, and checks the result: each
field on its own (:mod:`raypriv.config.fields`), then every name against its
table (:mod:`raypriv.config.names`).  ``raypriv audit --config F --paradigms a,b``
and ``raypriv.audit(F, paradigms=["a", "b"])`` both come here, so they
accept and refuse the same configs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

from raypriv.config.fields import ExperimentConfig, apply_overrides, parse_config, read_config_file
from raypriv.errors import RayprivError


def from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    """Build and fully check a config from a plain mapping (e.g. a run's stored config.yaml)."""
    from raypriv.config.names import check_names  # the registries: paradigm and architecture tables

    return check_names(parse_config(raw))


def load(source: Mapping[str, Any] | str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """A checked config from ``source`` (a YAML path, a mapping of fields, or None for the defaults).

    ``overrides`` maps dotted field names to values, e.g. ``{"n_models": 16,
    "train.epochs": 2}``; ``None`` values are ignored.  Overriding
    ``paradigms`` (a list, or a comma-separated string) selects among the
    source's paradigms: the options of those left out are dropped.  In the
    source itself, options for an unlisted paradigm are an error (a likely
    typo).  ``source`` is never modified.
    """
    if isinstance(source, Mapping):
        raw = apply_overrides(copy.deepcopy(dict(source)), dict(overrides or {}))
    elif source is None or isinstance(source, (str, Path)):
        raw = read_config_file(source, dict(overrides or {}))
    else:
        raise RayprivError(f"config must be a mapping of fields, a YAML path or None, got {type(source).__name__}")
    if (overrides or {}).get("paradigms") is not None and isinstance(raw.get("paradigm_options"), dict):
        listed = raw["paradigms"]
        selected = {p.strip() for p in listed.split(",")} if isinstance(listed, str) else set(listed)
        raw["paradigm_options"] = {p: o for p, o in raw["paradigm_options"].items() if p in selected}
    return from_dict(raw)
