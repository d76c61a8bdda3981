"""Experiment configuration: one YAML file, validated when it is loaded.

A config is a tree of dataclasses.  :func:`load_config` reads YAML, applies the
command-line overrides, and checks every field: an unknown name, a wrong type
or a value outside the allowed set raises :class:`RayprivError` naming the
field (``train.epochs``) and what is allowed.  The dataclass defaults *are* the
default experiment (``jobs/configs/digits-quick.yaml`` spells the same values
out; a test keeps the two equal).

Three fingerprints, each over fields that decide results only (execution
settings ``name``, ``out_dir``, ``ray`` and the attack list never enter: the
same models can be trained on a laptop or a cluster, and attacks are
recomputed from stored logits):

* :func:`protocol_hash`: what every paradigm of a run shares (seed, data,
  audit split, model count, architecture, training recipe, queries).  A run
  directory belongs to one protocol.
* :func:`recipe_hash`: the protocol plus one paradigm and its resolved
  options.  Stored per model; resume and the attacks key on it, so adding a
  paradigm to a run keeps the others' models.
* :func:`config_hash`: the protocol plus every paradigm, for display.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from raypriv.errors import RayprivError

ATTACKS = ("loss", "lira_online", "lira_offline", "lira_online_fixed", "lira_offline_fixed", "rmia")
QUERIES = ("identity", "hflip")


@dataclass
class DatasetConfig:
    """Which data to audit.  ``root``/``download`` are for torchvision sets (and adult from OpenML)."""

    name: str = "digits"
    root: str = "~/.cache/raypriv/data"
    download: bool = False
    path: str | None = None  # the file when name is "npz", "csv" or "parquet" (optional for "adult": its CSV)
    test_fraction: float = 0.2  # held-out share for sets without a test split
    label_column: str | None = None  # the class column of a "csv" or "parquet" table


@dataclass
class AuditConfig:
    """The audit samples: drawn from the training pool, IN for half the models."""

    n_audit: int = 200
    canary: Literal["none", "mislabel"] = "mislabel"


@dataclass
class ModelConfig:
    arch: Literal["mlp", "cnn_small", "resnet18", "wrn16_4", "logreg"] = "cnn_small"
    width: int | None = None  # None: the arch's default (see raypriv.models.DEFAULT_WIDTH)
    norm: Literal["batch", "group", "none"] = "batch"


@dataclass
class TrainConfig:
    # "loop": one model at a time (raypriv.training); "ensemble": a group at once with
    # torch.func (raypriv.ensemble); "auto": ensemble for small archs on CUDA, loop otherwise
    # (on CPU the loop is faster: see benchmarks/RESULTS.md).
    engine: Literal["auto", "loop", "ensemble"] = "auto"
    epochs: int = 15
    batch_size: int = 128
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    augment: Literal["none", "flip_crop", "crop"] = "none"
    crop_padding: int = 4
    amp: bool = True  # bfloat16 autocast, used on CUDA only
    eval_batch_size: int = 1024


@dataclass
class RayConfig:
    """How the shadow-model pool is laid out.  Never changes the results."""

    address: str | None = None  # None: RAY_ADDRESS if set, else a new local instance; "auto": a `ray start` cluster here
    num_actors: int | None = None  # shadow-model pool; None: as many as the cluster's resources fit
    num_cpus_per_actor: float = 1.0
    num_gpus_per_actor: float = 0.0  # fractional values share a GPU
    # Ensemble engine: the most models one actor trains at once.  On a GPU a group is cut
    # further to what fits in free memory; a group that runs out of memory is halved.
    models_per_group: int = 32
    # Synthesis pool: 0 means the shadow-model actors run whole pipelines.
    num_synthesis_workers: int = 0
    synthesis_cpus_per_worker: float = 1.0
    synthesis_gpus_per_worker: float = 0.0


@dataclass
class ExperimentConfig:
    name: str = "digits-quick"
    seed: int = 0
    out_dir: str = "runs/digits-quick"
    n_models: int = 64
    paradigms: list[str] = field(default_factory=lambda: ["real"])
    paradigm_options: dict[str, dict] = field(default_factory=dict)
    queries: list[str] = field(default_factory=lambda: ["identity"])
    attacks: list[str] = field(default_factory=lambda: list(ATTACKS))
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Fields that do not change any model or score.
_EXECUTION_FIELDS = ("name", "out_dir", "ray", "attacks")
_PARADIGM_FIELDS = ("paradigms", "paradigm_options")


def result_defining(config: ExperimentConfig) -> dict[str, Any]:
    """The part of the config that decides every trained model."""
    resolved = config.to_dict()
    for key in _EXECUTION_FIELDS:
        resolved.pop(key)
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
    from raypriv.synth import resolved_options

    return _digest({**protocol_definition(config), "paradigm": paradigm, "options": resolved_options(config, paradigm)})


# ---------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it normalised."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, where)
    if origin is Literal:
        if value not in args:
            raise RayprivError(f"config: {where}={value!r} is not allowed; choose one of {list(args)}")
        return value
    if origin is list:
        if isinstance(value, str):  # "real,dpsgd" from the command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise RayprivError(f"config: {where} must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RayprivError(f"config: {where} must be a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise RayprivError(f"config: {where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RayprivError(f"config: {where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RayprivError(f"config: {where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RayprivError(f"config: {where} must be a string, got {value!r}")
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise RayprivError(f"config: {where} must be a mapping, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {_type_name(tp)} at {where}")  # a bug, not user input


def _build(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RayprivError(f"config: {where or 'the top level'} must be a mapping of fields, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            prefix = f"{where}." if where else ""
            raise RayprivError(f"config: unknown field '{prefix}{key}'; allowed fields here: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in raw:
            kwargs[name] = _coerce(hints[name], raw[name], f"{where}.{name}" if where else name)
    return cls(**kwargs)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise RayprivError(f"config: {message}")


def _check_unique(values: list[str], where: str) -> None:
    _require(len(values) > 0, f"{where} must not be empty")
    duplicates = sorted({v for v in values if values.count(v) > 1})
    _require(not duplicates, f"{where} lists {duplicates} more than once")


def validate(config: ExperimentConfig) -> ExperimentConfig:
    """Check the relations between fields that types alone cannot express."""
    from raypriv.data import DATASETS
    from raypriv.synth import PARADIGMS, build_options, is_known_paradigm

    _require(
        config.dataset.name in DATASETS,
        f"dataset.name={config.dataset.name!r} is not a known dataset; choose one of {sorted(DATASETS)}",
    )
    if config.dataset.name == "npz":
        _require(config.dataset.path is not None, "dataset.name is 'npz' but dataset.path is not set; give the .npz file")
    if config.dataset.name in ("csv", "parquet"):
        kind = config.dataset.name
        _require(config.dataset.path is not None, f"dataset.name is '{kind}' but dataset.path is not set; give the .{kind} file")
        _require(
            bool(config.dataset.label_column),
            f"dataset.name is '{kind}' but dataset.label_column is not set; name the column holding the class",
        )
    else:
        _require(
            config.dataset.label_column is None,
            f"dataset.label_column is set but dataset {config.dataset.name!r} has its own labels; it is for csv and "
            "parquet tables only",
        )
    _require(0.0 < config.dataset.test_fraction < 1.0, "dataset.test_fraction must be between 0 and 1")
    _require(config.seed >= 0, "seed must be a non-negative integer")
    _require(config.audit.n_audit >= 1, "audit.n_audit must be at least 1")

    _check_unique(config.paradigms, "paradigms")
    for paradigm in config.paradigms:
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

    _check_unique(config.queries, "queries")
    for query in config.queries:
        _require(query in QUERIES, f"query {query!r} is not known; choose from {list(QUERIES)}")
    _check_unique(config.attacks, "attacks")
    for attack in config.attacks:
        _require(attack in ATTACKS, f"attack {attack!r} is not known; choose from {list(ATTACKS)}")

    _require(
        config.n_models >= 2 and config.n_models % 2 == 0,
        f"n_models={config.n_models}: it must be even and at least 2, so that every audit sample is IN "
        "for exactly half the models",
    )
    if any(a.startswith("lira") or a == "rmia" for a in config.attacks):
        _require(
            config.n_models >= 8,
            f"n_models={config.n_models} is too few for LiRA and RMIA: leave-one-out needs at least 8 models "
            "(3 IN and 3 OUT shadows per sample); use --models 8 or more (64+ for a real audit), "
            "or keep only the 'loss' attack",
        )

    t = config.train
    _require(t.epochs >= 1, "train.epochs must be at least 1")
    _require(t.batch_size >= 1 and t.eval_batch_size >= 1, "train.batch_size and train.eval_batch_size must be at least 1")
    _require(t.lr > 0, "train.lr must be positive")
    _require(t.momentum >= 0 and t.weight_decay >= 0, "train.momentum and train.weight_decay must be non-negative")
    _require(t.crop_padding >= 0, "train.crop_padding must be non-negative")
    _require(config.model.width is None or config.model.width >= 1, "model.width must be at least 1")

    r = config.ray
    _require(r.num_cpus_per_actor > 0, "ray.num_cpus_per_actor must be positive")
    _require(r.num_gpus_per_actor >= 0, "ray.num_gpus_per_actor must be zero (CPU) or positive (may be fractional)")
    _require(r.num_actors is None or r.num_actors >= 1, "ray.num_actors must be at least 1, or null for automatic")
    _require(r.models_per_group >= 1, "ray.models_per_group must be at least 1")
    _require(r.num_synthesis_workers >= 0, "ray.num_synthesis_workers must be 0 (no separate pool) or more")
    _require(r.synthesis_cpus_per_worker > 0, "ray.synthesis_cpus_per_worker must be positive")
    _require(r.synthesis_gpus_per_worker >= 0, "ray.synthesis_gpus_per_worker must be zero or positive")
    return config


def config_from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    """Build and validate a config from a plain mapping."""
    return validate(_build(ExperimentConfig, raw, ""))


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RayprivError(f"config: cannot override {dotted}: {part} is not a mapping")
    node[leaf] = value


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a YAML config (or the defaults), apply dotted overrides, validate.

    ``overrides`` maps dotted field names to values, e.g. ``{"n_models": 16,
    "out_dir": "runs/x"}``; ``None`` values are ignored.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RayprivError(f"config file {path} does not exist; pass an existing YAML file to --config")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise RayprivError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise RayprivError(f"config file {path} must hold a mapping of fields at the top level")
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, dotted, value)
    return config_from_dict(raw)


def dump_config(config: ExperimentConfig) -> str:
    """The resolved config as YAML (field order kept)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
