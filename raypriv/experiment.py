"""Loading an experiment: a config checked against the registries, and its fingerprints.

:func:`load_config` reads YAML (:mod:`raypriv.config` parses and checks each
field), then :func:`check_names` checks every name against the table that
defines it: datasets (:data:`raypriv.data.DATASETS`), paradigms and their
options (:mod:`raypriv.synth`), attacks (:data:`raypriv.attacks.ATTACKS`),
architectures (:data:`raypriv.models.ARCHITECTURES`) and queries
(:data:`raypriv.queries.QUERIES`).  It also fills in the defaults that come
from a table (``attacks: null`` means every attack).

Three fingerprints, each over fields that decide results only (execution
settings ``name``, ``out_dir``, ``ray``, the attack list and the attack
settings ``lira``, ``rmia`` never enter: the same models can be trained on a
laptop or a cluster, and attacks are recomputed from stored logits;
``audit.n_population`` enters only when set, so older runs keep their hashes):

* :func:`protocol_hash`: what every paradigm of a run shares (seed, data,
  audit split, model count, architecture, training recipe, queries).  A run
  directory belongs to one protocol.
* :func:`recipe_hash`: the protocol plus one paradigm and its resolved
  options (and, for a plugin, its class and distribution version).  Stored per model; resume and the attacks key on it, so adding a
  paradigm to a run keeps the others' models.
* :func:`config_hash`: the protocol plus every paradigm, for display.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from raypriv.attacks import ATTACKS
from raypriv.config import ExperimentConfig, parse_config, read_config_file
from raypriv.data import DATASETS
from raypriv.errors import RayprivError
from raypriv.models import ARCHITECTURES
from raypriv.queries import expand_queries
from raypriv.synth import PARADIGMS, build_options, is_known_paradigm, paradigm_class, plugin_identity, resolved_options


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise RayprivError(f"config: {message}")


def check_names(config: ExperimentConfig) -> ExperimentConfig:
    """Check every name the config uses against its registry; fill in table defaults."""
    _require(
        config.dataset.name in DATASETS,
        f"dataset.name={config.dataset.name!r} is not a known dataset; choose one of {sorted(DATASETS)}",
    )
    _require(
        config.model.arch in ARCHITECTURES,
        f"model.arch={config.model.arch!r} is not allowed; choose one of {list(ARCHITECTURES)}",
    )
    for paradigm in config.paradigms:
        if ":" in paradigm:
            paradigm_class(paradigm)  # a module:Class reference: its own error names the import problem
        _require(
            is_known_paradigm(paradigm),
            f"paradigm {paradigm!r} is not known; choose from {sorted(PARADIGMS)} (or a variant "
            "'<paradigm>@<tag>' with its own options, e.g. 'dpgen-marginals@eps1')",
        )
    for paradigm, options in config.paradigm_options.items():
        _require(
            paradigm in config.paradigms,
            f"paradigm_options has options for {paradigm!r}, which is not in paradigms {config.paradigms}",
        )
        build_options(paradigm, options)
    config.queries = expand_queries(config.queries, config.train.crop_padding)
    if config.attacks is None:
        config.attacks = list(ATTACKS)
    for attack in config.attacks:
        _require(attack in ATTACKS, f"attack {attack!r} is not known; choose from {list(ATTACKS)}")
    return config


def config_from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    """Build and fully check a config from a plain mapping (e.g. a run's stored config.yaml)."""
    return check_names(parse_config(raw))


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a YAML config (or the defaults), apply dotted overrides, check it.

    ``overrides`` maps dotted field names to values, e.g. ``{"n_models": 16,
    "out_dir": "runs/x"}``; ``None`` values are ignored.  Overriding
    ``paradigms`` selects among the file's paradigms: the options of those
    left out are dropped (in a file, options for an unlisted paradigm are an
    error: a likely typo).
    """
    raw = read_config_file(path, overrides)
    if (overrides or {}).get("paradigms") is not None and isinstance(raw.get("paradigm_options"), dict):
        listed = raw["paradigms"]
        selected = {p.strip() for p in listed.split(",")} if isinstance(listed, str) else set(listed)
        raw["paradigm_options"] = {p: o for p, o in raw["paradigm_options"].items() if p in selected}
    return config_from_dict(raw)


# ---------------------------------------------------------------- fingerprints

# Fields that do not change any model or score.
_EXECUTION_FIELDS = ("name", "out_dir", "ray", "attacks", "lira", "rmia", "scoring")
_PARADIGM_FIELDS = ("paradigms", "paradigm_options")


def result_defining(config: ExperimentConfig) -> dict[str, Any]:
    """The part of the config that decides every trained model."""
    resolved = config.to_dict()
    for key in _EXECUTION_FIELDS:
        resolved.pop(key)
    if resolved["audit"]["n_population"] == 0:  # absent before population sets existed: old runs keep their hashes
        resolved["audit"].pop("n_population")
    return resolved


def protocol_definition(config: ExperimentConfig) -> dict[str, Any]:
    """The result-defining fields every paradigm of a run shares."""
    resolved = result_defining(config)
    for key in _PARADIGM_FIELDS:
        resolved.pop(key)
    return resolved


def _digest(obj: Any) -> str:
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def config_hash(config: ExperimentConfig) -> str:
    """Fingerprint of :func:`result_defining` (the protocol and every paradigm)."""
    return _digest(result_defining(config))


def protocol_hash(config: ExperimentConfig) -> str:
    """Fingerprint of :func:`protocol_definition`: what a run directory is bound to."""
    return _digest(protocol_definition(config))


def recipe_hash(config: ExperimentConfig, paradigm: str) -> str:
    """Fingerprint of the protocol plus ``paradigm`` with its resolved options."""
    recipe = {**protocol_definition(config), "paradigm": paradigm, "options": resolved_options(config, paradigm)}
    plugin = plugin_identity(paradigm)
    if plugin is not None:  # built-ins leave it out, so their hashes (and stored runs) stay as they were
        recipe["plugin"] = plugin
    return _digest(recipe)


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``field: old -> new`` for every leaf where two config mappings differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]
