"""Checking a config's names against the tables that define them, and filling in table defaults.

:func:`check_names` checks every name the config uses: datasets
(:data:`raypriv.data.DATASETS`), paradigms and their options
(:mod:`raypriv.synth`), attacks (:data:`raypriv.attacks.ATTACKS`),
architectures (:data:`raypriv.models.ARCHITECTURES`) and queries
(:data:`raypriv.queries.QUERIES`).  It also fills in the defaults that come
from a table (``attacks: null`` means every attack; query presets expand).
:mod:`raypriv.config.fields` checks each field on its own before this.
"""

from __future__ import annotations

from raypriv.attacks import ATTACKS
from raypriv.config.fields import ExperimentConfig
from raypriv.data import DATASETS
from raypriv.errors import RayprivError
from raypriv.models import ARCHITECTURES
from raypriv.queries import expand_queries
from raypriv.synth import PARADIGMS, build_options, is_known_paradigm, paradigm_class


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
    _check_vote_size(config)
    return config


# RMIA's per-query vote compares every (x, z) pair on every query, for every target model: past this many
# comparisons in all (about an hour of NumPy on one core) the audit would stall in scoring after all its training.
MAX_VOTE_COMPARISONS = 2e11


def _check_vote_size(config: ExperimentConfig) -> None:
    """Refuse, before anything is trained, an ``rmia.queries: vote`` whose comparisons cannot finish."""
    n_queries = len(config.queries)
    if config.rmia.queries != "vote" or n_queries < 2 or not {"rmia", "rmia_offline"} & set(config.attacks):
        return
    n_audit = config.audit.n_audit
    versus = config.audit.n_population or n_audit - 1
    comparisons = float(config.n_models) * n_audit * versus * n_queries
    against = "population" if config.audit.n_population else "other audit"
    _require(
        comparisons <= MAX_VOTE_COMPARISONS,
        f"rmia.queries: vote compares every audit sample with every {against} "
        f"sample on each of the {n_queries} queries for each of the {config.n_models} models: {comparisons:.1e} "
        f"comparisons, over the {MAX_VOTE_COMPARISONS:.0e} that finish in about an hour; set rmia.queries: mean "
        "(the per-query shares averaged, O(N log N) per query) or a smaller audit.n_population",
    )
