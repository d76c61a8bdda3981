"""One block of audit samples, every model's scores for it, and the leave-one-out statistics the attacks share.

Every model in turn is the target and all others are its shadows, so each
statistic is "over the group less one": less the target when it is in the
group, else less the group's highest model id, so that every group has
``n_models/2 - 1`` members (see :mod:`raypriv.attacks`).  Arrays are
``(B, Q, M)`` (samples, queries, models) or ``(B, M)``.  A
:class:`SampleBlock` computes each statistic the first time an attack asks for
it, so LiRA's online and offline variants share one OUT fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.special import expit

STD_FLOOR = 1e-30  # added to every standard deviation, as the reference LiRA code does
_HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)


LIRA_PRESETS = ("carlini-2022", "aerni-2024")


@dataclass(frozen=True)
class LiraOptions:
    """LiRA's Gaussian-fit conventions (the config's ``lira:`` section, resolved by :meth:`from_preset`).

    * ``carlini-2022`` (the default; Carlini et al., S&P 2022, and their
      ``research/mi_lira_2021`` code): the *median* of the shadows as centre,
      ``np.std`` with ddof 0, and groups truncated to equal size (here: the
      group a target is not in drops its highest model id, so both groups
      have ``n_models/2 - 1`` shadows).
    * ``aerni-2024`` (Aerni, Zhang, Tramèr, "Evaluations of Machine Learning
      Privacy Defenses are Misleading", CCS 2024): the *mean* as centre,
      the unbiased variance (ddof 1), and no truncation: a target's shadows
      are every other model (``n_models/2 - 1`` in its own group,
      ``n_models/2`` in the other).

    ``center`` alone (``lira.center: mean`` under ``carlini-2022``) keeps
    raypriv's older meaning: only the centre changes.
    """

    center: str = "median"  # "median" or "mean"
    ddof: int = 0
    truncate: bool = True  # equal group sizes: the group a target is not in drops its highest model id

    @classmethod
    def from_preset(cls, preset: str = "carlini-2022", center: str | None = None) -> "LiraOptions":
        if preset == "carlini-2022":
            return cls(center or "median", 0, True)
        if preset == "aerni-2024":
            if center not in (None, "mean"):
                raise ValueError(f"lira preset aerni-2024 uses the mean centre, not {center!r}")
            return cls("mean", 1, False)
        raise ValueError(f"unknown LiRA preset {preset!r}; choose one of {LIRA_PRESETS}")


def log_normal_pdf(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``log N(x; mean, std)``, elementwise."""
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - _HALF_LOG_2PI


def group_ids(member: np.ndarray) -> np.ndarray:
    """``(B, K)`` model ids of each sample's group, ascending; ``member`` is ``(B, M)`` with K Trues per row."""
    n_rows, n_models = member.shape
    flat = np.flatnonzero(member)
    return (flat - np.repeat(np.arange(n_rows) * n_models, member.sum(axis=1))).reshape(n_rows, -1)


def loo_moments(
    scores32: np.ndarray, scores64: np.ndarray, member: np.ndarray, ids: np.ndarray, need_median: bool,
    lira: LiraOptions = LiraOptions(),
) -> tuple[np.ndarray | None, np.ndarray]:
    """Leave-one-out centre (median, or mean) and variance (ddof ``lira.ddof``) of one group, for one block.

    With ``lira.truncate`` false (``aerni-2024``) only a target inside the
    group is removed; one outside it keeps all ``K`` (mean centre only).

    Arrays are ``(B, Q, M)``.  ``scores32``/``scores64``: the block's scores (float32 as stored, and as
    float64); ``member``: ``(B, M)`` group membership; ``ids``: its
    :func:`group_ids`.  Same definitions as :func:`raypriv.attacks.reference.lira_attack`'s leave-one-out statistics:
    the removed value is the target's own score if it is in the group, else
    the group's highest model id; the median of the shortened sorted list
    reads position ``p`` at ``p`` before the removed value's rank and at
    ``p + 1`` from it on, so only the order statistics around the middle are
    needed, and ``v < removed`` decides the side (with ties the removed copy
    does not matter: the shortened list is the same).
    """
    k = ids.shape[1]
    size = k - 1
    values32 = np.take_along_axis(scores32, ids[:, None, :], axis=2)  # (B, Q, K) by model id
    values = values32.astype(np.float64)
    if lira.truncate:
        removed = np.where(member[:, None, :], scores64, values[:, :, k - 1 : k])
    else:
        if lira.center != "mean":
            raise ValueError("LiRA without truncation takes the mean centre (the aerni-2024 preset)")
        removed = np.where(member[:, None, :], scores64, 0.0)
        size = (k - member[:, None, :]).astype(np.float64)  # (B, 1, M): K - 1 inside the group, K outside
    mean = (values.sum(axis=2)[:, :, None] - removed) / size
    mean_sq = ((values * values).sum(axis=2)[:, :, None] - removed * removed) / size
    variance = np.maximum(mean_sq - mean * mean, 0.0)
    if lira.ddof:
        variance = variance * size / (size - lira.ddof)
    if not need_median:
        return None, variance
    if lira.center == "mean":
        return mean, variance
    values32.sort(axis=2)
    low, high = (size - 1) // 2, size // 2
    picks = [values32[:, :, i : i + 1].astype(np.float64) for i in (low, low + 1, high, high + 1)]
    median = 0.5 * (
        np.where(picks[0] < removed, picks[0], picks[1]) + np.where(picks[2] < removed, picks[2], picks[3])
    )
    return median, variance


def loo_sum(probs: np.ndarray, member: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per (sample, target): the sum of ``probs`` over the group ``ids`` less one (the target, else the highest id)."""
    values = np.take_along_axis(probs, ids, axis=1)  # (B, K)
    prefix = np.zeros_like(values)
    np.cumsum(values[:, :-1], axis=1, out=prefix[:, 1:])
    suffix = np.zeros_like(values)
    np.cumsum(values[:, :0:-1], axis=1, out=suffix[:, -2::-1])
    total = np.empty_like(probs)
    np.put_along_axis(total, ids, prefix + suffix, axis=1)  # targets in this group drop themselves
    return np.where(member, total, prefix[:, -1:])  # targets outside it: the group less its highest model id


class SampleBlock:
    """Every model's scores for one block of audit samples, and the statistics attacks share.

    Arrays are ``(B, Q, M)`` (samples, queries, models) or ``(B, M)``.  Each
    statistic is computed the first time an attack asks for it and then kept,
    so LiRA's online and offline variants share one OUT fit.
    """

    def __init__(self, scores: np.ndarray, keep: np.ndarray, start: int, stop: int, pooled: dict | None = None,
                 lira: LiraOptions = LiraOptions(), offline_a: np.ndarray | None = None, n_queries: int | None = None):
        """``scores``: float32 ``(M, N, C)``: the ``n_queries`` LiRA channels (all ``C`` when None), then, when
        ``C > n_queries``, RMIA's own logit-scaled ``Pr(x|theta)`` per query (a softmax temperature)."""
        n_queries = scores.shape[2] if n_queries is None else n_queries
        self.scores32 = np.ascontiguousarray(scores[:, start:stop, :n_queries].transpose(1, 2, 0))  # (B, Q, M)
        self.scores64 = self.scores32.astype(np.float64)
        self.rmia_scores = scores[:, start:stop, n_queries:] if scores.shape[2] > n_queries else None
        self.member = np.ascontiguousarray(keep[:, start:stop].T)  # (B, M)
        self.ids_in, self.ids_out = group_ids(self.member), group_ids(~self.member)
        self.pooled = pooled or {}  # {is_in_side: (Q, M) pooled variance} for the fixed-variance attacks
        self.lira, self.offline_a = lira, offline_a  # LiRA's conventions; RMIA offline's a per target

    def variance(self, in_side: bool) -> np.ndarray:
        """Leave-one-out variance of the IN (or OUT) shadows, without the median (the pooling pre-pass)."""
        member, ids = (self.member, self.ids_in) if in_side else (~self.member, self.ids_out)
        return loo_moments(self.scores32, self.scores64, member, ids, False, self.lira)[1]

    @cached_property
    def moments_out(self) -> tuple[np.ndarray, np.ndarray]:
        return loo_moments(self.scores32, self.scores64, ~self.member, self.ids_out, True, self.lira)

    @cached_property
    def moments_in(self) -> tuple[np.ndarray, np.ndarray]:
        return loo_moments(self.scores32, self.scores64, self.member, self.ids_in, True, self.lira)

    def log_pdf(self, in_side: bool, fixed_variance: bool) -> np.ndarray:
        """``log N(s; centre, std)`` of each score under its leave-one-out IN or OUT Gaussian."""
        key = (in_side, fixed_variance)
        cache = self.__dict__.setdefault("_log_pdf", {})
        if key not in cache:
            median, variance = self.moments_in if in_side else self.moments_out
            std = np.sqrt(self.pooled[in_side] if fixed_variance else variance) + STD_FLOOR
            cache[key] = log_normal_pdf(self.scores64, median, std)
        return cache[key]

    @cached_property
    def rmia_probability(self) -> np.ndarray:
        """RMIA's ``Pr(x|theta)`` per query, ``(B, Q, M)``: ``sigmoid(s) = p_y`` of the LiRA score, or of RMIA's own
        tempered channel when the scores carry one."""
        if self.rmia_scores is None:
            return expit(self.scores64)
        return expit(self.rmia_scores.transpose(1, 2, 0).astype(np.float64))

    @cached_property
    def label_probability(self) -> np.ndarray:
        """RMIA's query-pooled ``Pr(x|theta)``: :attr:`rmia_probability` averaged over queries, ``(B, M)``."""
        return self.rmia_probability.mean(axis=1)
