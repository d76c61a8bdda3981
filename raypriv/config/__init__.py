"""Experiment configuration: the schema, and the one entry that loads and checks a config.

* :func:`load` (``raypriv.config.load(source, overrides)``): a YAML file, a
  mapping or the defaults, with overrides, fully checked.  The command line
  and ``raypriv.audit`` both use it (:mod:`raypriv.config.loading`).
* :func:`from_dict`: a plain mapping, fully checked (a run's stored config).
* The schema, as dataclasses (:class:`ExperimentConfig` and its parts), and
  YAML reading: :mod:`raypriv.config.fields`, which checks each field on its
  own.  :mod:`raypriv.config.names` checks names against the tables.

Importing this package loads no other raypriv module but the error type, nor
torch: :func:`load` and :func:`from_dict` import the tables when called.
"""

from __future__ import annotations

import importlib
from typing import Any

from raypriv.config.fields import (
    MAX_INT,
    MAX_KEEP_ENTRIES,
    MAX_MODELS,
    AuditConfig,
    BudgetConfig,
    DatasetConfig,
    ExecutionConfig,
    ExperimentConfig,
    LiraConfig,
    ModelConfig,
    RayConfig,
    RmiaConfig,
    ScoringConfig,
    TrainConfig,
    apply_overrides,
    build_dataclass,
    check_fields,
    dump_config,
    load_yaml,
    parse_config,
    read_config_file,
)

_LAZY = {"load": "raypriv.config.loading", "from_dict": "raypriv.config.loading", "check_names": "raypriv.config.names"}

__all__ = [
    "MAX_INT", "MAX_KEEP_ENTRIES", "MAX_MODELS", "AuditConfig", "BudgetConfig", "DatasetConfig", "ExecutionConfig",
    "ExperimentConfig", "LiraConfig",
    "ModelConfig", "RayConfig", "RmiaConfig", "ScoringConfig", "TrainConfig", "apply_overrides", "build_dataclass",
    "check_fields", "dump_config", "load_yaml", "parse_config", "read_config_file", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'raypriv.config' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
