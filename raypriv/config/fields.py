"""Experiment configuration: the schema, as dataclasses, and YAML coercion.

A config is a tree of dataclasses.  :func:`parse_config` turns a plain
mapping (read from YAML) into that tree and checks every field on its own: an
unknown name, a wrong type, a value outside the allowed set or range raises
:class:`RayprivError` naming the field (``train.epochs``) and what is
allowed.  The dataclass defaults *are* the default experiment
(``jobs/configs/digits-quick.yaml`` spells the same values out; a test keeps
the two equal).

This module imports nothing else from raypriv but the error type, so every
other module may import it.  Checking names against the registries (datasets,
paradigms, attacks, architectures, queries) and the fingerprints of a config
live one level up, in :mod:`raypriv.run.fingerprints`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import yaml

from raypriv.errors import RayprivError

MAX_INT = 2**31 - 1  # bound of every integer field
MAX_MODELS = 100_000
MAX_KEEP_ENTRIES = 10**9  # n_models * n_audit: the keep matrix stays under 1 GB
# train.lr, train.momentum, train.weight_decay: below float32's overflow (3.4e38), which the optimizers' scalar
# arithmetic hits with a traceback; a large value under it diverges, and the model fails ("training diverged").
MAX_OPTIMIZER_VALUE = 1e30


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
    # Held-out samples (from the test split) no model trains on; every model logs its logits on them too and
    # RMIA draws its population z from them.  0: no population set (z: the other audit samples).
    n_population: int = 0
    # How TPR at 0.1% and 1% FPR is read off the ROC curve (raypriv.metrics.TPR_READOUTS), recorded in metrics.json:
    # interpolate (the achievable curve), at-or-below (the last point with FPR <= t), below (FPR < t: the LiRA code's).
    tpr_readout: Literal["interpolate", "at-or-below", "below"] = "interpolate"
    # Which threat models to score (raypriv.release): "model" (the attacks query the trained model) and "release"
    # (the attacks read each pipeline's stored synthetic set, for paradigms that store one).  Changes no model.
    threat_models: list[Literal["model", "release"]] = field(default_factory=lambda: ["model", "release"])


@dataclass
class LiraConfig:
    """LiRA's settings.  Attack settings never change a model (they stay out of the fingerprints).

    ``preset`` (raypriv.attacks.LiraOptions): ``carlini-2022`` (median centre, ddof 0, groups truncated to equal
    size: the reference LiRA code) or ``aerni-2024`` (mean centre, ddof 1, no truncation: Aerni et al., CCS 2024).
    ``center`` (older configs): with ``carlini-2022``, ``mean`` changes only the centre; null: the preset's.
    """

    preset: Literal["carlini-2022", "aerni-2024"] = "carlini-2022"
    center: Literal["median", "mean"] | None = None


@dataclass
class RmiaConfig:
    """RMIA's settings (raypriv.attacks.rmia: Zarifzadeh et al., ICML 2024, as the authors' code runs it)."""

    gamma: float = 1.0  # x beats z when the ratio of their likelihood ratios exceeds it (the authors' configs: 2)
    # Pr(x): trimmed mean over the reference models, this share cut from each end.  0 (the plain mean, the paper's
    # formula) by default: the authors' 0.2 hides a coreset's selective leak (benchmarks/RESULTS.md, RMIA section)
    trim: float = 0.0
    temperature: float = 1.0  # Pr(x|theta) = softmax(logits / temperature)_y (the authors' configs: 1 or 2)
    # vote: a ratio and a comparison per query, then a majority vote per (x, z) (the authors' code);
    # mean: the per-query shares averaged; pool: probabilities averaged over queries before the ratio (before 2026-12-05)
    queries: Literal["vote", "mean", "pool"] = "vote"


@dataclass
class ModelConfig:
    arch: str = "cnn_small"  # a name in raypriv.models.ARCHITECTURES
    width: int | None = None  # None: the arch's default (raypriv.models.ARCHITECTURES)
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
class ExecutionConfig:
    """How a worker groups its pipelines.  Never changes the results, so it stays out of the fingerprints.

    ``pack``: K pipelines of one paradigm synthesized at once by one worker (raypriv.pipeline.resolve_pack).
    ``auto``: 1 for a paradigm without a batched synthesis; for one with, as many as fit the budget, at most
    8 on a CPU and 64 on a GPU.  The budget is ``pack_memory_gb`` on a CPU, half the free memory on a GPU.
    """

    pack: int | Literal["auto"] = "auto"
    pack_memory_gb: float = 2.0


@dataclass
class ScoringConfig:
    """Where the attacks run (raypriv.scoring.ray_data).  Never changes the results, so it stays out of the fingerprints."""

    backend: Literal["local", "ray", "auto"] = "local"  # auto: ray above driver_memory_gb or for a cloud run dir
    driver_memory_gb: float = 4.0  # auto: ray when the local scoring arrays would exceed this (ScoringPlan.local_gb)
    num_cpus: float = 1.0  # CPUs per Ray Data scoring task (never GPUs)
    block_samples: int | None = None  # audit samples per attack task; None: about 2^22 scores per task


@dataclass
class BudgetConfig:
    """How many models to train: a fixed ``n_models``, or rounds until each paradigm's verdict is decided.

    ``until: decided`` trains ``round`` models per paradigm at a time, up to
    ``max_models`` (which becomes ``n_models``), rescoring after each round
    and stopping a paradigm once it leaks or its TPR is bounded under
    ``bounded_multiple`` × chance (:mod:`raypriv.sequential`).  The keep
    matrix is then built in balanced blocks of ``round`` models.
    """

    until: Literal["fixed", "decided"] = "fixed"
    max_models: int | None = None  # until: decided: the most models per paradigm (the run's n_models)
    round: int = 8  # until: decided: models per paradigm per round (even; divides max_models)
    bounded_multiple: float = 2.0  # until: decided: "bounded" once TPR/FPR's upper bound is under this multiple


@dataclass
class ExperimentConfig:
    name: str = "digits-quick"
    seed: int = 0
    out_dir: str = "runs/digits-quick"
    n_models: int = 64
    paradigms: list[str] = field(default_factory=lambda: ["real"])
    paradigm_options: dict[str, dict] = field(default_factory=dict)
    queries: list[str] = field(default_factory=lambda: ["identity"])  # names in raypriv.queries.QUERIES
    # Names in raypriv.attacks.ATTACKS; None: all of them, in table order (filled in by raypriv.run.fingerprints).
    attacks: list[str] | None = None
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    lira: LiraConfig = field(default_factory=LiraConfig)
    rmia: RmiaConfig = field(default_factory=RmiaConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it normalised."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_optional(args, value, where)
    if origin is Literal:
        return _coerce_literal(args, value, where)
    if origin is list:
        return _coerce_list(args[0], value, where)
    if origin is dict:
        return _coerce_mapping(args[1], value, where)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, where)
    coerce_plain = _PLAIN_TYPES.get(tp)
    if coerce_plain is None:
        raise TypeError(f"unsupported config annotation {_type_name(tp)} at {where}")  # a bug, not user input
    return coerce_plain(value, where)


def _coerce_optional(args: tuple[Any, ...], value: Any, where: str) -> Any:
    """An ``X | None`` field (``args``: the union's members): None if allowed, else ``value`` coerced to ``X``.

    A union of several members (``float | Literal["auto"] | None``) takes the
    first member that accepts ``value``, ``Literal`` members first (a string
    is never read as a number), and names every choice if none does.
    """
    if value is None and type(None) in args:
        return None
    members = [a for a in args if a is not type(None)]
    if len(members) == 1:
        return _coerce(members[0], value, where)
    members.sort(key=lambda a: typing.get_origin(a) is not Literal)
    for member in members:
        try:
            return _coerce(member, value, where)
        except RayprivError:
            continue
    choices = [", ".join(repr(v) for v in typing.get_args(m)) if typing.get_origin(m) is Literal else f"a {_type_name(m)}"
               for m in members] + (["null"] if type(None) in args else [])
    raise RayprivError(f"config: {where}={value!r} is not allowed; give {' or '.join(choices)}")


def _coerce_literal(args: tuple[Any, ...], value: Any, where: str) -> Any:
    """A ``Literal[...]`` field: ``value`` if it is one of ``args``."""
    if value not in args:
        raise RayprivError(f"config: {where}={value!r} is not allowed; choose one of {list(args)}")
    return value


def _coerce_list(item_type: Any, value: Any, where: str) -> list:
    """A ``list[item_type]`` field, each item coerced; a string is split on commas (as given on the command line)."""
    if isinstance(value, str):  # "real,dpsgd" from the command line
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list):
        raise RayprivError(f"config: {where} must be a list, got {value!r}")
    return [_coerce(item_type, v, f"{where}[{i}]") for i, v in enumerate(value)]


def _coerce_mapping(value_type: Any, value: Any, where: str) -> dict[str, Any]:
    """A ``dict[str, value_type]`` field: keys as strings, each value coerced."""
    if not isinstance(value, dict):
        raise RayprivError(f"config: {where} must be a mapping, got {value!r}")
    return {str(k): _coerce(value_type, v, f"{where}.{k}") for k, v in value.items()}


def _coerce_bool(value: Any, where: str) -> bool:
    """A ``bool`` field: only true or false (no 0/1 or strings)."""
    if not isinstance(value, bool):
        raise RayprivError(f"config: {where} must be true or false, got {value!r}")
    return value


def _coerce_int(value: Any, where: str) -> int:
    """An ``int`` field: an integer (not a bool) within ±MAX_INT."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise RayprivError(f"config: {where} must be an integer, got {value!r}")
    # One bound for every integer field (paradigm options too): larger values overflow int64 seeds and sizes.
    if abs(value) > MAX_INT:
        raise RayprivError(f"config: {where}={value} is out of range; integers must lie within ±{MAX_INT} (2**31 - 1)")
    return value


def _coerce_float(value: Any, where: str) -> float:
    """A ``float`` field: a finite int or float (not a bool), returned as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RayprivError(f"config: {where} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise RayprivError(f"config: {where}={value!r} is not a finite number; give a finite value")
    return float(value)


def _coerce_str(value: Any, where: str) -> str:
    """A ``str`` field: a string as it is."""
    if not isinstance(value, str):
        raise RayprivError(f"config: {where} must be a string, got {value!r}")
    return value


def _coerce_plain_dict(value: Any, where: str) -> dict:
    """A bare ``dict`` field: any mapping, as it is."""
    if not isinstance(value, dict):
        raise RayprivError(f"config: {where} must be a mapping, got {value!r}")
    return value


# The annotations without type arguments that config fields use, and their checks.
_PLAIN_TYPES: dict[Any, Callable[[Any, str], Any]] = {
    bool: _coerce_bool,
    int: _coerce_int,
    float: _coerce_float,
    str: _coerce_str,
    dict: _coerce_plain_dict,
}


def build_dataclass(cls: type, raw: Any, where: str) -> Any:
    """The dataclass ``cls`` from the mapping ``raw``, every field coerced and checked; ``where`` prefixes error names."""
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


MAX_NAME_CHARS = 200  # the experiment's name: printed in summaries, plot titles and reports


def check_name(name: str) -> None:
    """The experiment's ``name``: at most :data:`MAX_NAME_CHARS` printable characters (no newlines or controls)."""
    shown = repr(name[:40]) + ("..." if len(name) > 40 else "")
    _require(len(name) <= MAX_NAME_CHARS,
             f"name {shown} has {len(name)} characters; give a name of at most {MAX_NAME_CHARS}")
    _require(name.isprintable(), f"name {shown} holds non-printable characters (newlines, tabs, controls); remove them")


def check_budget(config: ExperimentConfig) -> None:
    """The ``budget`` section; with ``until: decided``, ``n_models`` is set to ``budget.max_models`` (the plan)."""
    b = config.budget
    _require(b.bounded_multiple > 1,
             f"budget.bounded_multiple={b.bounded_multiple:g} must be above 1 (a multiple of chance, e.g. 2)")
    if b.until == "fixed":
        _require(b.max_models is None,
                 f"budget.max_models={b.max_models} is set but budget.until is 'fixed'; add --until-decided "
                 "(budget.until: decided), or give the model count as --models (n_models)")
        return
    _require(b.max_models is not None,
             "budget.until is 'decided' but budget.max_models is not set; pass --max-models N (budget.max_models), "
             "the most models per paradigm")
    _require(b.round >= 2 and b.round % 2 == 0,
             f"budget.round={b.round} must be even and at least 2: each round of models puts every audit sample IN "
             "for exactly half of them; choose e.g. 8")
    _require(b.max_models >= b.round and b.max_models % b.round == 0,
             f"budget.round={b.round} does not divide budget.max_models={b.max_models}; choose a round that divides "
             f"it, or a max_models that is a multiple of {b.round}")
    config.n_models = b.max_models


def check_fields(config: ExperimentConfig) -> ExperimentConfig:
    """Check the ranges of fields and the relations between them that types alone cannot express.

    Names that refer to a registry (datasets, paradigms, attacks, ...) are
    checked by :func:`raypriv.run.fingerprints.check_names`.
    """
    check_name(config.name)
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
    check_budget(config)
    _require(config.audit.n_audit >= 1, "audit.n_audit must be at least 1")
    _require(config.audit.n_population >= 0, "audit.n_population must be 0 (no population set) or more")

    _require(
        np.isfinite(config.rmia.gamma) and config.rmia.gamma > 0,
        f"rmia.gamma={config.rmia.gamma} must be a positive number (1: the likelihood ratios themselves; the paper uses 2)",
    )
    _require(
        0.0 <= config.rmia.trim < 0.5,
        f"rmia.trim={config.rmia.trim} must lie in [0, 0.5): the share of reference models cut from each end "
        "(0: the plain mean, the default; 0.2: the authors' code)",
    )
    _require(
        config.rmia.temperature > 0,
        f"rmia.temperature={config.rmia.temperature} must be a positive number (1: the softmax itself; the authors use 1 or 2)",
    )
    _require(
        config.lira.preset != "aerni-2024" or config.lira.center in (None, "mean"),
        f"lira.center={config.lira.center!r} contradicts lira.preset: aerni-2024, which takes the mean centre; remove "
        "lira.center (or use lira.preset: carlini-2022 for the median)",
    )
    _check_unique(config.paradigms, "paradigms")
    _check_unique(config.queries, "queries")
    _check_unique(config.audit.threat_models, "audit.threat_models")
    _require("model" in config.audit.threat_models,
             f"audit.threat_models={config.audit.threat_models} must include 'model': the release attacks are "
             "reported beside the model attacks; give [model] or [model, release]")
    if config.attacks is not None:
        _check_unique(config.attacks, "attacks")
    _require(
        config.n_models >= 2 and config.n_models % 2 == 0,
        f"n_models={config.n_models}: it must be even and at least 2, so that every audit sample is IN "
        "for exactly half the models",
    )
    _require(config.n_models <= MAX_MODELS, f"n_models={config.n_models} is above the limit of {MAX_MODELS}")
    _require(
        config.n_models * config.audit.n_audit <= MAX_KEEP_ENTRIES,
        f"n_models × audit.n_audit = {config.n_models * config.audit.n_audit} is above the limit of "
        f"{MAX_KEEP_ENTRIES} (the membership matrix would not fit in memory); lower one of them",
    )
    if config.attacks is not None and all(a in ("loss", "rmia", "rmia_offline") for a in config.attacks):
        _require(
            config.n_models >= 4 or config.attacks == ["loss"],
            f"n_models={config.n_models} is too few for RMIA: leave-one-out needs at least 4 models (1 IN and 1 OUT "
            "shadow per sample); use --models 4 or more, or keep only the 'loss' attack",
        )
    elif config.attacks is None or any(a != "loss" for a in config.attacks):
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
    for field_name in ("lr", "momentum", "weight_decay"):
        value = getattr(t, field_name)
        _require(
            value <= MAX_OPTIMIZER_VALUE,
            f"train.{field_name}={value:g} is above {MAX_OPTIMIZER_VALUE:g}: no recipe trains with it, and the "
            "optimizer's float32 arithmetic overflows; lower it (e.g. train.lr: 0.05)",
        )
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
    e = config.execution
    _require(e.pack == "auto" or e.pack >= 1, "execution.pack must be at least 1 (1: no packs), or auto")
    _require(e.pack_memory_gb > 0, "execution.pack_memory_gb must be positive (the CPU memory a pack may use)")
    s = config.scoring
    _require(np.isfinite(s.driver_memory_gb) and s.driver_memory_gb > 0, "scoring.driver_memory_gb must be a positive number")
    _require(np.isfinite(s.num_cpus) and s.num_cpus > 0, "scoring.num_cpus must be positive (scoring tasks use CPUs only)")
    _require(s.block_samples is None or s.block_samples >= 1, "scoring.block_samples must be at least 1, or null for automatic")
    return config


def parse_config(raw: dict[str, Any]) -> ExperimentConfig:
    """Build a config from a plain mapping and check its fields (not yet its names: see raypriv.run.fingerprints)."""
    config = build_dataclass(ExperimentConfig, raw, "")
    if config.budget.until == "decided" and "n_models" in raw and raw["n_models"] != config.budget.max_models:
        raise RayprivError(
            f"config: n_models={raw['n_models']} and budget.until: decided both set the model count; give only "
            f"budget.max_models (--max-models), the most models an until-decided audit trains per paradigm"
        )
    return check_fields(config)


class _AliasRefused(yaml.YAMLError):
    """A YAML anchor or alias: refused before any node is composed (see :class:`_UniqueKeyLoader`)."""

    def __init__(self, mark: Any):
        super().__init__(f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping with the same key twice (PyYAML keeps the last silently), and anchors
    and aliases: a few hundred bytes of nested aliases expand to gigabytes (a "billion laughs" bomb)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _AliasRefused(event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}: each field may appear once", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(data: bytes, what: str) -> dict[str, Any]:
    """The mapping YAML ``data`` holds ({} if empty); ``what`` names the source in errors (``config file x.yaml``)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise RayprivError(f"{what} is UTF-16 encoded; save it as UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_byte = data[exc.start : exc.start + 1]
        raise RayprivError(f"{what} is not UTF-8 text (byte {exc.start}: {bad_byte!r}); save it as UTF-8") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except _AliasRefused as exc:
        raise RayprivError(
            f"{what}: YAML anchors and aliases (&, *) are not supported ({exc}); write the values out"
        ) from None
    except yaml.YAMLError as exc:
        raise RayprivError(f"{what} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise RayprivError(f"{what} must hold a mapping of fields at the top level")
    return raw


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RayprivError(f"config: cannot override {dotted}: {part} is not a mapping")
    node[leaf] = value


def read_config_file(path: str | Path | None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The mapping a YAML config file holds (``{}`` for None), with dotted overrides applied.

    ``overrides`` maps dotted field names to values, e.g. ``{"n_models": 16,
    "out_dir": "runs/x"}``; ``None`` values are ignored.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RayprivError(f"config file {path} does not exist; pass an existing YAML file to --config")
        raw = load_yaml(path.read_bytes(), f"config file {path}")
    return apply_overrides(raw, overrides)


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Set dotted fields (``{"train.epochs": 2}``) in the mapping ``raw``, in place; ``None`` values are ignored."""
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, dotted, value)
    return raw


def dump_config(config: ExperimentConfig) -> str:
    """The resolved config as YAML (field order kept)."""
    return yaml.dump(config.to_dict(), Dumper=_PlainDumper, sort_keys=False)


class _PlainDumper(yaml.SafeDumper):
    """A SafeDumper that writes every value out, never as an anchor and alias (which :func:`load_yaml` refuses)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True
