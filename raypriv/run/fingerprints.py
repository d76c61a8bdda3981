"""A config's fingerprints: which stored results it may resume, attack and compare.

Three fingerprints, each over fields that decide results only (execution
settings ``name``, ``out_dir``, ``ray``, ``execution`` (packs), ``scoring``, the attack list and the
attack settings ``lira``, ``rmia`` never enter: the same models can be
trained on a laptop or a cluster, and attacks are recomputed from stored
logits; ``audit.n_population`` enters only when set, so older runs keep
their hashes):

* :func:`protocol_hash`: what every paradigm of a run shares (seed, data,
  audit split, model count, architecture, training recipe, queries).  A run
  directory belongs to one protocol.
* :func:`recipe_hash`: the protocol plus one paradigm and its resolved
  options (and, for a plugin, its class and distribution version).  Stored
  per model; resume and the attacks key on it, so adding a paradigm to a run
  keeps the others' models.
* :func:`config_hash`: the protocol plus every paradigm, for display.

The driver computes them once per audit (:meth:`Fingerprints.of`) and passes
them down to the run directory, the shadow trainers and scoring.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

from raypriv.config import ExperimentConfig
from raypriv.synth import plugin_identity, resolved_options

# Fields that do not change any model or score.
_EXECUTION_FIELDS = ("name", "out_dir", "ray", "execution", "attacks", "lira", "rmia", "scoring")
_PARADIGM_FIELDS = ("paradigms", "paradigm_options")


def result_defining(config: ExperimentConfig) -> dict[str, Any]:
    """The part of the config that decides every trained model."""
    resolved = config.to_dict()
    for key in _EXECUTION_FIELDS:
        resolved.pop(key)
    if resolved["audit"]["n_population"] == 0:  # absent before population sets existed: old runs keep their hashes
        resolved["audit"].pop("n_population")
    resolved["audit"].pop("tpr_readout", None)  # how metrics read the ROC curve: no model depends on it
    resolved["audit"].pop("threat_models", None)  # which attacks are scored: no model depends on it
    budget = resolved.pop("budget", None)  # fixed-budget runs keep their hashes; bounded_multiple changes no model
    if budget is not None and budget["until"] == "decided":
        resolved["keep_blocks"] = budget["round"]  # the keep matrix is drawn in balanced blocks of this many models
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


def recipe_hashes(config: ExperimentConfig) -> dict[str, str]:
    """:func:`recipe_hash` of every paradigm of the config, in its order."""
    return {paradigm: recipe_hash(config, paradigm) for paradigm in config.paradigms}


@dataclass(frozen=True)
class Fingerprints:
    """A config's three fingerprints, computed once by the driver and passed down."""

    protocol: str
    config: str
    recipes: Mapping[str, str]  # paradigm -> recipe hash

    @classmethod
    def of(cls, config: ExperimentConfig) -> Fingerprints:
        return cls(protocol_hash(config), config_hash(config), recipe_hashes(config))


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``field: old -> new`` for every leaf where two config mappings differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]
