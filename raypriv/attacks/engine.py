"""The attack table and the engine that runs it over blocks of audit samples.

:data:`ATTACKS` lists every attack once: its name, family, inputs, its place
in the report's fixed headline order, and a function of one
:class:`~raypriv.attacks.block.SampleBlock`.  A new attack is one entry here
plus its function (in :mod:`raypriv.attacks.lira`, :mod:`raypriv.attacks.rmia`
or a module of its own).

:func:`score_attacks` is pass 2 of scoring: it walks blocks of audit samples
(each holds every model's scores for those samples, which is what a
leave-one-out median needs), first pooling the per-sample variances for the
fixed-variance attacks (a cheap pass without sorting), then computing every
attack.  Per-block memory is bounded by ``block_elements``; the outputs are
float32 ``(n_models, n_audit)``.  Medians come from order statistics of the
sorted float32 scores (the values the reference picks), sums are in float64,
so the engine matches :mod:`raypriv.attacks.reference` on float32-rounded
scores to rounding error.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
from scipy.special import expit

from raypriv.attacks.block import LiraOptions, SampleBlock
from raypriv.attacks.lira import lira_offline, lira_online, reduce_logits, to_float32
from raypriv.attacks.rmia import (
    RmiaOptions,
    fit_offline_a,
    population_log_ratio,
    rmia_log_ratio,
    rmia_offline_log_ratio,
    rmia_scores,
    score_channels,
    tempered_scores,
)
from raypriv.errors import RayprivError

DEFAULT_RMIA = RmiaOptions()  # the config's defaults (raypriv.config.RmiaConfig)
DEFAULT_LIRA = LiraOptions()  # lira.preset: carlini-2022


@dataclass(frozen=True)
class Attack:
    """One entry of the attack table."""

    family: str  # "loss", "lira" or "rmia"
    inputs: str  # "loss": the label log-probability on query 0; "scores": the per-query LiRA scores
    headline_rank: int  # the report's fixed preference for its headline attack (0 first)
    # block, RMIA's options -> float64 (B, M), or (B, M, Q) per query for RMIA; None: the input itself
    block: Callable[[SampleBlock, RmiaOptions], np.ndarray] | None = None
    # whole rows of block output ((T, N) or (T, N, Q)), RMIA's options, the rows' population log ratios (or None) -> scores
    finish: Callable[[np.ndarray, RmiaOptions, np.ndarray | None], np.ndarray] | None = None
    pooled_variance: tuple[bool, ...] = ()  # sides (True: IN) whose variance is pooled over all samples first


ATTACKS: dict[str, Attack] = {
    "loss": Attack("loss", "loss", 5),
    "lira_online": Attack("lira", "scores", 0, lambda b, _: lira_online(b)),
    "lira_offline": Attack("lira", "scores", 3, lambda b, _: lira_offline(b)),
    "lira_online_fixed": Attack("lira", "scores", 2, lambda b, _: lira_online(b, True), pooled_variance=(True, False)),
    "lira_offline_fixed": Attack("lira", "scores", 4, lambda b, _: lira_offline(b, True), pooled_variance=(False,)),
    "rmia": Attack("rmia", "scores", 1, rmia_log_ratio, finish=rmia_scores),
    "rmia_offline": Attack("rmia", "scores", 6, rmia_offline_log_ratio, finish=rmia_scores),
}


def has_rmia(attacks: Iterable[str]) -> bool:
    """Whether any of ``attacks`` is an RMIA variant (they read ``Pr(x|theta)`` and rank whole rows)."""
    return any(ATTACKS[a].family == "rmia" for a in attacks)


def attack_channels(n_queries: int, attacks: Iterable[str], rmia: RmiaOptions) -> int:
    """Channels of the read pass's float32 score array for these attacks (:func:`raypriv.attacks.rmia.score_channels`)."""
    return score_channels(n_queries, rmia, has_rmia(attacks))


def lira_queries(n_channels: int, attacks: Iterable[str], rmia: RmiaOptions) -> int:
    """The queries (LiRA channels) of a score array with ``n_channels`` channels: the inverse of :func:`attack_channels`."""
    return n_channels // 2 if (has_rmia(attacks) and rmia.own_signal) else n_channels


def staged_queries(name: str, n_queries: int, rmia: RmiaOptions) -> int:
    """Per-pair values an attack with a whole-row finish stages: ``n_queries`` for per-query RMIA, else 1."""
    return n_queries if (ATTACKS[name].family == "rmia" and rmia.per_query) else 1


def headline_order() -> list[str]:
    """Attack names in the report's fixed order of preference for its headline attack."""
    return sorted(ATTACKS, key=lambda name: ATTACKS[name].headline_rank)


def check_attacks(attacks: Iterable[str]) -> list[str]:
    """The attack names as a list; an unknown one is a RayprivError listing the known ones."""
    attacks = list(attacks)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise RayprivError(f"unknown attack(s) {unknown}; choose from {list(ATTACKS)}")
    return attacks


def map_threads(function: Callable, items: Iterable, workers: int) -> list:
    """``list(map(function, items))`` on ``workers`` threads (NumPy releases the GIL in its kernels)."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, items))


def group_sizes(keep: np.ndarray, attacks: list[str], lira: LiraOptions = DEFAULT_LIRA) -> tuple[int, int]:
    """IN and OUT models per sample; the leave-one-out attacks need the same counts for every sample
    (and ddof 1 needs 2 shadows a side after leave-one-out)."""
    counts = keep.sum(axis=0)
    k_in, k_out = int(counts[0]), keep.shape[0] - int(counts[0])
    if any(ATTACKS[a].inputs == "scores" for a in attacks):
        if not (counts == k_in).all():
            raise RayprivError(
                "the membership matrix must make every audit sample IN for the same number of models "
                f"(it has {counts.min()} to {counts.max()}); use the run's own keep.npy"
            )
        if min(k_in, k_out) < 2:
            raise RayprivError(
                f"{keep.shape[0]} models give {k_in} IN and {k_out} OUT models per sample; the leave-one-out "
                "attacks need at least 2 of each (n_models >= 8 for LiRA); use more models or only 'loss'"
            )
        if lira.ddof and any(ATTACKS[a].family == "lira" for a in attacks) and min(k_in, k_out) - 1 <= lira.ddof:
            raise RayprivError(
                f"{keep.shape[0]} models leave {min(k_in, k_out) - 1} shadow(s) a side, too few for LiRA's variance with "
                f"ddof {lira.ddof} (lira.preset: aerni-2024); use at least {2 * (lira.ddof + 2)} models or "
                "lira.preset: carlini-2022"
            )
    return k_in, k_out


def score_attacks(
    scores: np.ndarray | None,
    loss: np.ndarray | None,
    keep: np.ndarray,
    attacks: Iterable[str],
    rmia: RmiaOptions = DEFAULT_RMIA,
    lira: LiraOptions = DEFAULT_LIRA,
    block_elements: int = 1 << 20,
    workers: int = 1,
    population: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every named attack from the reduced logits: ``{attack: float32 (n_models, n_audit)}``.

    ``scores``: float32 ``(M, N, C)``: the ``Q`` per-query LiRA scores
    (needed by LiRA and RMIA), then, when an RMIA attack runs at a
    temperature other than 1, ``Q`` tempered RMIA channels
    (:func:`attack_channels`); ``loss``: ``(M, N)`` log-probability of the
    label on query 0 (the loss attack, returned as it is); ``keep``:
    ``(M, N)`` membership.  Sample blocks of about ``block_elements`` scores
    are processed on ``workers`` threads; results do not depend on either.
    ``rmia`` / ``lira``: the attacks' settings; ``population``: float32
    ``(M, P, C)`` scores on the population set, RMIA's ``z``.
    """
    attacks = check_attacks(attacks)
    keep = np.asarray(keep, dtype=bool)
    n_models, n_samples = keep.shape
    group_sizes(keep, attacks, lira)
    results: dict[str, np.ndarray] = {}
    for name in attacks:
        if ATTACKS[name].inputs == "loss":
            if loss is None or loss.shape != keep.shape:
                raise ValueError(f"the loss attack needs the (n_models, n_audit) = {keep.shape} label log-probabilities")
            results[name] = to_float32(loss)
    blocked = [name for name in attacks if ATTACKS[name].block is not None]
    if not blocked:
        return {a: results[a] for a in attacks}
    if scores is None or scores.shape[:2] != keep.shape:
        raise ValueError(f"LiRA and RMIA need (n_models, n_audit, n_queries) scores matching keep {keep.shape}")
    if scores.dtype != np.float32:
        scores = to_float32(scores)
    n_queries = lira_queries(scores.shape[2], attacks, rmia)
    block = max(1, block_elements // (n_models * scores.shape[2]))
    bounds = [(start, min(n_samples, start + block)) for start in range(0, n_samples, block)]

    # The fixed-variance attacks pool each side's per-sample variances over all samples first: a cheap pass.
    pooled_sides = sorted({side for name in blocked for side in ATTACKS[name].pooled_variance})
    pooled = _pooled_variances(scores, keep, bounds, pooled_sides, workers, lira, n_queries)
    offline_a = _rmia_offline_a(scores, keep, rmia, block_elements, n_queries) if "rmia_offline" in blocked else None

    staged = {}  # attacks with a whole-row finish keep their block outputs in float64 until then
    for name in blocked:
        if ATTACKS[name].finish is None:
            results[name] = np.empty((n_models, n_samples), dtype=np.float32)
        else:
            per_pair = staged_queries(name, n_queries, rmia)
            staged[name] = np.empty((n_models, n_samples, per_pair) if rmia.per_query else (n_models, n_samples))

    def main_pass(b: tuple[int, int]) -> None:
        sample_block = SampleBlock(scores, keep, *b, pooled=pooled, lira=lira, offline_a=offline_a, n_queries=n_queries)
        for name in blocked:
            value = ATTACKS[name].block(sample_block, rmia)
            if name in staged:
                staged[name][:, b[0] : b[1]] = np.swapaxes(value, 0, 1)
            else:
                results[name][:, b[0] : b[1]] = to_float32(value).T

    map_threads(main_pass, bounds, workers)
    signal = None if population is None else population[:, :, n_queries:] if rmia.own_signal else population[:, :, :n_queries]
    for name, values in staged.items():
        versus = None if signal is None else population_log_ratio(signal, rmia, offline_a if name == "rmia_offline" else None)
        results[name] = _finish_rows(ATTACKS[name].finish, values, rmia, versus, workers)
    return {a: results[a] for a in attacks}


def _pooled_variances(
    scores: np.ndarray, keep: np.ndarray, bounds: list[tuple[int, int]], sides: list[bool], workers: int,
    lira: LiraOptions = DEFAULT_LIRA, n_queries: int | None = None,
) -> dict[bool, np.ndarray]:
    """Each side's per-sample variance pooled over all audit samples, ``{side: (Q, M)}`` (True: IN); ``{}`` for no sides.

    The input of the fixed-variance attacks: one pass over the sample blocks
    ``bounds`` on ``workers`` threads, summing each block's variances, then
    the mean over all samples (one variance per query and target).
    """
    if not sides:
        return {}
    n_samples = keep.shape[1]

    def block_sums(b: tuple[int, int]) -> list[np.ndarray]:
        return [SampleBlock(scores, keep, *b, lira=lira, n_queries=n_queries).variance(side).sum(axis=0) for side in sides]

    partial = map_threads(block_sums, bounds, workers)
    return {side: sum(p[i] for p in partial) / n_samples for i, side in enumerate(sides)}


def pooled_probability(scores: np.ndarray, n_queries: int) -> np.ndarray:
    """Query-pooled ``Pr(x|theta)`` ``(M, N)`` from float32 ``(M, N, C)`` scores, as
    :attr:`SampleBlock.label_probability` computes it: the RMIA channels when ``C > n_queries``, else the LiRA ones."""
    channels = scores[:, :, n_queries:] if scores.shape[2] > n_queries else scores
    return expit(channels.astype(np.float64)).mean(axis=2)


def _rmia_offline_a(scores: np.ndarray, keep: np.ndarray, rmia: RmiaOptions, block_elements: int,
                    n_queries: int) -> np.ndarray:
    """Offline RMIA's fitted ``a`` (:func:`~raypriv.attacks.rmia.fit_offline_a`) from Pr(x|theta) of every pair.

    Pr(x|theta) is :func:`pooled_probability`, a group of models of about
    ``block_elements`` scores at a time.
    """
    n_models, n_samples = keep.shape
    rows = max(1, block_elements // (n_samples * scores.shape[2]))
    probs = np.concatenate([pooled_probability(scores[i : i + rows], n_queries) for i in range(0, n_models, rows)])
    return fit_offline_a(probs, keep, rmia.gamma)


def _finish_rows(
    finish: Callable[[np.ndarray, RmiaOptions, np.ndarray | None], np.ndarray],
    values: np.ndarray,
    rmia: RmiaOptions,
    versus: np.ndarray | None,
    workers: int,
) -> np.ndarray:
    """An attack's whole-row ``finish`` on its float64 block outputs ``values`` ``(M, N[, Q])``: float32 ``(M, N)``.

    Rows (models) are finished in chunks of about 4M values on ``workers``
    threads; ``versus`` is the rows' population log ratios, or None.
    """
    n_models, n_samples = values.shape[:2]
    rows = max(1, (1 << 22) // max(n_samples, 1))
    out = np.empty((n_models, n_samples), dtype=np.float32)

    def finish_chunk(start: int) -> None:
        z = None if versus is None else versus[start : start + rows]
        out[start : start + rows] = finish(values[start : start + rows], rmia, z)

    map_threads(finish_chunk, range(0, n_models, rows), workers)
    return out


def run_attacks(
    logits: np.ndarray, labels: np.ndarray, keep: np.ndarray, attacks: list[str], rmia: RmiaOptions = DEFAULT_RMIA,
    lira: LiraOptions = DEFAULT_LIRA, workers: int = 1,
) -> dict[str, np.ndarray]:
    """Every named attack on in-memory logits ``(n_models, n_audit, n_queries, C)``; float32 ``(n_models, n_audit)`` each.

    The audit streams the logits from the store instead
    (:func:`raypriv.scoring.load_attack_inputs`); both feed :func:`score_attacks`.
    """
    attacks = check_attacks(attacks)
    n_models, n_samples, n_queries, n_classes = logits.shape
    row_labels = np.broadcast_to(np.asarray(labels)[None, :, None], (n_models, n_samples, n_queries)).ravel()
    flat = logits.reshape(-1, n_classes)
    score, log_p = reduce_logits(flat, row_labels)
    channels = [score.reshape(n_models, n_samples, n_queries)]
    if attack_channels(n_queries, attacks, rmia) > n_queries:
        channels.append(tempered_scores(flat, row_labels, rmia.temperature).reshape(n_models, n_samples, n_queries))
    log_p = log_p.reshape(n_models, n_samples, n_queries)[:, :, 0]
    return score_attacks(to_float32(np.concatenate(channels, axis=2)), log_p, keep, attacks, rmia=rmia, lira=lira,
                         workers=workers)
