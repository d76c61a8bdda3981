"""The release attack table and the function that turns release statistics into attack scores.

:data:`RELEASE_ATTACKS` lists each release attack once: the statistic it
reads (:data:`raypriv.release.stream.STATISTICS`), the model attack of
:data:`raypriv.attacks.ATTACKS` that calibrates it leave-one-out (or None:
the statistic is the score), its place in the report's headline order, and
whether it needs images.  A new release attack is one entry here (plus its
statistic in :mod:`raypriv.release.stream` if it reads a new one).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from raypriv.attacks import LiraOptions, RmiaOptions, score_attacks, to_float32
from raypriv.errors import RayprivError
from raypriv.results import THREAT_MODELS

DEFAULT_RMIA = RmiaOptions()  # the config's defaults
DEFAULT_LIRA = LiraOptions()


@dataclass(frozen=True)
class ReleaseAttack:
    """One entry of the release attack table."""

    statistic: str  # the (model, audit sample) statistic it reads
    engine: str | None  # the ATTACKS entry run on the statistic (leave-one-out over shadow pipelines); None: raw
    headline_rank: int  # the report's preference for the release column's headline attack (0 first)
    images_only: bool = False
    text_only: bool = False  # only for paradigms that write their records as text (dpgen-llm)


RELEASE_ATTACKS: dict[str, ReleaseAttack] = {
    "release_lira": ReleaseAttack("dcr", "lira_online", 0),
    "release_rmia": ReleaseAttack("dcr", "rmia", 1),
    "release_density": ReleaseAttack("density", None, 2),
    "release_dcr": ReleaseAttack("dcr", None, 3),
    "release_dcr_feature": ReleaseAttack("dcr_feature", None, 4, images_only=True),
    "release_ngram": ReleaseAttack("ngram", None, 5, text_only=True),
}



__all__ = ["RELEASE_ATTACKS", "THREAT_MODELS", "ReleaseAttack", "paradigm_release_attacks", "release_attack_names",
           "release_attack_scores", "release_headline_order", "statistics_needed"]


def release_attack_names(is_image: bool, text: bool = False) -> tuple[str, ...]:
    """The release attacks a run's data allows, in table order (the feature-space distance for images only, the
    n-gram attack where some paradigm writes text: ``text``)."""
    return tuple(name for name, attack in RELEASE_ATTACKS.items()
                 if (is_image or not attack.images_only) and (text or not attack.text_only))


def paradigm_release_attacks(names: tuple[str, ...] | list[str], writes_text: bool) -> tuple[str, ...]:
    """Those of ``names`` that apply to one paradigm: the text attacks only where it writes text (``writes_text``)."""
    return tuple(n for n in names if writes_text or not RELEASE_ATTACKS[n].text_only)


def release_headline_order() -> list[str]:
    """Release attack names in the report's order of preference for the release column's headline."""
    return sorted(RELEASE_ATTACKS, key=lambda name: RELEASE_ATTACKS[name].headline_rank)


def statistics_needed(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The statistics these release attacks read, each once, in first-use order."""
    unknown = [n for n in names if n not in RELEASE_ATTACKS]
    if unknown:
        raise RayprivError(f"unknown release attack(s) {unknown}; choose from {list(RELEASE_ATTACKS)}")
    return tuple(dict.fromkeys(RELEASE_ATTACKS[n].statistic for n in names))


def release_attack_scores(statistics: dict[str, np.ndarray], keep: np.ndarray, names: tuple[str, ...] | list[str],
                          rmia: RmiaOptions = DEFAULT_RMIA, lira: LiraOptions = DEFAULT_LIRA) -> dict[str, np.ndarray]:
    """Each release attack's scores ``{name: float32 (n_models, n_audit)}``, higher = more likely IN.

    ``statistics``: ``{statistic: (M, N)}`` from
    :func:`raypriv.release.stream.paradigm_statistics`; ``keep``: ``(M, N)``
    membership.  A raw attack's score is its statistic; a calibrated one runs
    :func:`raypriv.attacks.score_attacks` on the statistic as the one
    per-query "LiRA score" channel, so every target is calibrated against
    the other pipelines' statistics, leave-one-out.  RMIA runs at
    temperature 1 (a release statistic has no logits to temper):
    ``Pr(x|theta) = sigmoid(s)``; for the ``dcr`` statistic
    ``s = -log(d + 1e-6)`` that is ``1 / (1 + d + 1e-6)``.
    """
    keep = np.asarray(keep, dtype=bool)
    statistics_needed(names)
    out: dict[str, np.ndarray] = {}
    rmia = replace(rmia, temperature=1.0)
    for name in names:
        attack = RELEASE_ATTACKS[name]
        values = statistics[attack.statistic]
        if attack.engine is None:
            out[name] = to_float32(values)
            continue
        channel = to_float32(values)[:, :, None]
        out[name] = score_attacks(channel, None, keep, [attack.engine], rmia=rmia, lira=lira)[attack.engine]
    return out
