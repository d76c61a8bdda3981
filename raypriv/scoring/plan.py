"""The scoring plan: everything both backends need to score a run, fixed once, before the first read.

A :class:`ScoringPlan` is built by the driver from the config and the audit
split (:meth:`ScoringPlan.from_config`).  It holds the sizes, the attack list
and their options, the resolved backend, and each paradigm's recipe
fingerprint, computed once by the driver and passed down.  The backends
(:mod:`raypriv.scoring.local`, :mod:`raypriv.scoring.ray_data`) take it as
their one description of the work, so neither reads the config again.

Every paradigm is scored in the same :data:`STAGES`:

1. ``read``: each model's logits, reduced as read to the per-query LiRA
   score and the label log-probability (:mod:`raypriv.scoring.read`);
2. ``attacks``: every attack, leave-one-out (:mod:`raypriv.attacks`);
3. ``metrics``: each attack's ROC summary and ε bound (:mod:`raypriv.metrics`);
4. ``scores``: the per-pair scores appended to ``scores.parquet``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

import numpy as np

from raypriv.attacks import ATTACKS, LiraOptions, RmiaOptions, attack_channels, check_attacks, staged_queries
from raypriv.config import ExperimentConfig

if TYPE_CHECKING:
    from raypriv.data import Dataset
    from raypriv.release import ReleaseInputs
    from raypriv.split import AuditSplit

STAGES = ("read", "attacks", "metrics", "scores")


@dataclass(frozen=True, eq=False)
class ScoringPlan:
    """What scoring a run means: sizes, attacks, options, backend, fingerprints.

    Arrays: ``keep`` bool ``(n_models, n_audit)``, ``audit_labels`` int64
    ``(n_audit,)``, ``population_labels`` int64 ``(n_population,)`` (empty
    without a population set).  ``backend``: ``"local"`` or ``"ray"``, already
    resolved from ``scoring.backend: auto``.  ``recipe_hashes``: each
    paradigm's recipe fingerprint, which its stored models must carry.
    ``rmia`` / ``lira``: the attacks' settings (from ``rmia:`` and
    ``lira.preset``); ``tpr_readout``: how TPR at a low FPR is read off the
    ROC curve (``audit.tpr_readout``, :data:`raypriv.metrics.TPR_READOUTS`).
    """

    name: str
    paradigms: tuple[str, ...]
    attacks: tuple[str, ...]
    keep: np.ndarray
    audit_labels: np.ndarray
    population_labels: np.ndarray
    n_queries: int
    recipe_hashes: Mapping[str, str]
    backend: str = "local"
    rmia: RmiaOptions = RmiaOptions()
    lira: LiraOptions = LiraOptions()
    tpr_readout: str = "interpolate"
    block_samples: int | None = None  # Ray backend: audit samples per attack task (None: about 2^22 scores)
    num_cpus: float = 1.0  # Ray backend: CPUs per task
    ray_address: str | None = None  # Ray backend: the cluster to join when Ray is not running yet
    driver_memory_gb: float = 4.0
    show_progress: bool = False
    stages: tuple[str, ...] = field(default=STAGES)
    # Until-decided audits: the models each paradigm used, the first rows of ``keep`` (absent: all of them).
    model_counts: Mapping[str, int] = field(default_factory=dict)
    # The release threat model (raypriv.release; audit.threat_models): its attacks, the paradigms that store a
    # synthetic set to attack, and the audit and reference samples they are compared with.  Empty: model attacks only.
    release_attacks: tuple[str, ...] = ()
    release_paradigms: tuple[str, ...] = ()
    release_inputs: ReleaseInputs | None = None

    @property
    def score_columns(self) -> list[str]:
        """``scores.parquet``'s attack columns: the model attacks, then the release attacks (null where none ran)."""
        return list(self.attacks) + list(self.release_attacks)

    def releases(self, paradigm: str) -> bool:
        """Whether ``paradigm``'s stored synthetic sets are attacked (release threat model)."""
        return bool(self.release_attacks) and paradigm in self.release_paradigms

    @property
    def n_models(self) -> int:
        return int(self.keep.shape[0])

    @property
    def n_audit(self) -> int:
        return int(self.keep.shape[1])

    @property
    def n_population(self) -> int:
        return int(len(self.population_labels))

    @property
    def n_channels(self) -> int:
        """float32 values the read pass keeps per (model, sample): the LiRA scores, and RMIA's tempered channels."""
        return attack_channels(self.n_queries, self.attacks, self.rmia)

    @property
    def needs_scores(self) -> bool:
        """Whether any attack reads the per-query LiRA scores (all but ``loss``)."""
        return any(ATTACKS[a].inputs == "scores" for a in self.attacks)

    @property
    def needs_loss(self) -> bool:
        return any(ATTACKS[a].inputs == "loss" for a in self.attacks)

    @property
    def needs_population(self) -> bool:
        """Whether RMIA's ``z`` come from a population set (the run has one and an RMIA attack is asked for)."""
        return self.n_population > 0 and any(ATTACKS[a].finish is not None for a in self.attacks)

    @classmethod
    def from_config(
        cls,
        config: ExperimentConfig,
        split: AuditSplit,
        *,
        recipe_hashes: Mapping[str, str] | None = None,
        store_uri: str = "",
        show_progress: bool = False,
        dataset: Dataset | None = None,
    ) -> ScoringPlan:
        """The plan of ``config`` on its audit ``split``.

        ``recipe_hashes``: the driver's fingerprints (computed here from the
        config when not given); ``store_uri``: the run directory, which
        ``scoring.backend: auto`` sends to Ray when it is in the cloud.
        ``dataset``: the run's data, which the release attacks compare each
        synthetic set with (``audit.threat_models`` lists ``release``); loaded
        here from the config when not given and some paradigm releases a set.
        """
        if recipe_hashes is None:
            from raypriv.run.fingerprints import recipe_hashes as compute  # the paradigm tables: torch

            recipe_hashes = compute(config)
        plan = cls(
            name=config.name,
            paradigms=tuple(config.paradigms),
            attacks=tuple(check_attacks(config.attacks)),
            keep=np.asarray(split.keep, dtype=bool),
            audit_labels=np.asarray(split.audit_labels, dtype=np.int64),
            population_labels=np.asarray(
                split.population_labels if config.audit.n_population else np.empty(0), dtype=np.int64),
            n_queries=len(config.queries),
            recipe_hashes=dict(recipe_hashes),
            rmia=RmiaOptions(config.rmia.gamma, config.rmia.trim, config.rmia.temperature, config.rmia.queries),
            lira=LiraOptions.from_preset(config.lira.preset, config.lira.center),
            tpr_readout=config.audit.tpr_readout,
            block_samples=config.scoring.block_samples,
            num_cpus=config.scoring.num_cpus,
            ray_address=config.ray.address,
            driver_memory_gb=config.scoring.driver_memory_gb,
            show_progress=show_progress,
            **release_fields(config, split, dataset),
        )
        return plan.with_backend(choose_backend(config.scoring.backend, plan, store_uri))

    def for_paradigm(self, paradigm: str) -> ScoringPlan:
        """The plan for one paradigm: ``keep`` cut to the models it used (:attr:`model_counts`), else this plan."""
        used = self.model_counts.get(paradigm, self.n_models)
        if used == self.n_models:
            return self
        from dataclasses import replace

        return replace(self, keep=self.keep[:used])

    def with_backend(self, backend: str) -> ScoringPlan:
        from dataclasses import replace

        return replace(self, backend=backend)

    def score_array_gb(self) -> float:
        """GB of one paradigm's float32 (models x samples x channels) scores, population rows included."""
        return self.n_models * (self.n_audit + self.n_population) * self.n_channels * 4 / 2**30

    def local_gb(self) -> float:
        """GB of the arrays the local backend holds at once for one paradigm.

        The score array, the label log-probabilities and every attack's
        ``(models x samples)`` output, float32, plus float64 for the RMIA
        variants until they are ranked (one per query when they vote).  Its measured peak RSS is this plus
        1.3 to 1.9 GB (interpreter, torch, per-block copies;
        ``benchmarks/RESULTS.md``).
        """
        staged = sum(staged_queries(a, self.n_queries, self.rmia) for a in self.attacks if ATTACKS[a].finish is not None)
        # The release threat model: float32 statistics (at most 3) and one float32 score per release attack.
        release = 4 * (3 + len(self.release_attacks)) if self.release_attacks else 0
        pair_bytes = 4 + 4 * len(self.attacks) + 8 * staged + release
        return self.score_array_gb() + self.n_models * self.n_audit * pair_bytes / 2**30


def release_fields(config: ExperimentConfig, split: AuditSplit, dataset: Dataset | None = None) -> dict:
    """The plan's release fields: the attacks, the paradigms that store a set, and the inputs (empty: none to attack).

    The reference set is the run's population set (``audit.n_population``),
    else the dataset's whole test split: samples no model trains on, never
    audit samples.
    """
    if "release" not in config.audit.threat_models:
        return {}
    from raypriv.release import RELEASE_ATTACKS, RecordText, ReleaseInputs, release_attack_names
    from raypriv.synth import build_options, paradigm_class  # the paradigm tables: torch
    from raypriv.synth.dpgen.common import Quantizer
    from raypriv.synth.dpgen.llm import serialize_record
    from raypriv.training import Normalizer

    paradigms = tuple(p for p in config.paradigms if paradigm_class(p).stores_training_set)
    if not paradigms:
        return {}
    if dataset is None:
        from raypriv.data import load_dataset

        dataset = load_dataset(config.dataset)
    reference = dataset.x_test[split.population_index] if config.audit.n_population else dataset.x_test
    audit_x = dataset.x_train[split.audit_index]
    inputs = ReleaseInputs.build(audit_x, split.audit_labels, reference)
    # dpgen-llm writes records as text, with the public quantizer of the training pool (raypriv.release.ngram).
    texts = {}
    for paradigm in paradigms:
        if paradigm_class(paradigm).name == "dpgen-llm":
            options = build_options(paradigm, config.paradigm_options.get(paradigm))
            quantizer = Quantizer.from_normalizer(Normalizer.fit(dataset.x_train), options.levels, options.clip)
            texts[paradigm] = RecordText(quantizer, serialize_record)
    if texts:
        inputs = inputs.with_texts(texts, audit_x)
    # A calibrated release attack needs what its engine needs: with `attacks: [loss]` (too few models for
    # leave-one-out), only the raw statistics are scored.
    model_attacks = set(check_attacks(config.attacks))
    names = tuple(name for name in release_attack_names(inputs.is_image, bool(texts))
                  if RELEASE_ATTACKS[name].engine in (None, *model_attacks))
    return {"release_attacks": names, "release_paradigms": paradigms, "release_inputs": inputs}


def choose_backend(requested: str, plan: ScoringPlan, store_uri: str = "") -> str:
    """``scoring.backend`` with ``auto`` resolved: ray for a cloud run directory, or when the local backend's
    arrays (:meth:`ScoringPlan.local_gb`) would exceed ``scoring.driver_memory_gb``; local otherwise."""
    if requested != "auto":
        return requested
    cloud = "://" in store_uri and not store_uri.startswith("file://")
    return "ray" if cloud or plan.local_gb() > plan.driver_memory_gb else "local"
