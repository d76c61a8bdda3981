"""Order-preserving keys for float32 scores, and the runs of equal scores: what the ROC and the ε bound share.

A score threshold only matters where the score changes, so both the ROC walk
(:mod:`raypriv.metrics`) and the ε bound (:mod:`raypriv.epsilon`) sort pairs
by one uint key per score and mark the last pair of each run of equal scores.
A leaf module: it imports nothing from the package.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def value_keys(score: np.ndarray) -> np.ndarray:
    """uint32 keys in the order of the float32 ``score``: equal keys are equal scores (-0.0 is 0.0)."""
    bits = (np.asarray(score, dtype=np.float32) + np.float32(0.0)).view(np.uint32)
    return np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))


def run_ends(values: np.ndarray, following: Any = None) -> np.ndarray:
    """Mask of the last pair of each run of equal ``values``, one operating point each (``following``: the next value)."""
    end = np.empty(len(values), dtype=bool)
    end[:-1] = values[:-1] != values[1:]
    if len(values):
        end[-1] = following is None or values[-1] != following
    return end


def flat_pairs(is_in: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(is_in, score)`` flattened, as bool and as a float dtype (float32 kept, others float64), one per pair.

    A ValueError if a score is NaN or infinite: an ROC walk or a bound over such scores would be meaningless."""
    is_in = np.asarray(is_in, dtype=bool).ravel()
    score = np.asarray(score).ravel()
    if score.dtype.kind != "f":
        score = score.astype(np.float64)
    if not np.isfinite(score).all():
        raise ValueError("attack scores must be finite")
    return is_in, score


def sorted_keys(is_in: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ascending score order as ``(value keys, labels)``: equal keys are equal scores.

    float32 scores are packed with their label into one uint64 (the float's
    bits made order-preserving, shifted, plus the label bit), so one sort of
    8-byte keys does it; other dtypes fall back to an argsort.
    """
    if score.dtype == np.float32:
        keys = value_keys(score).astype(np.uint64)
        keys <<= np.uint64(1)
        keys |= is_in.view(np.uint8)
        keys.sort()
        return keys, None
    order = np.argsort(score, kind="stable")
    return score[order], is_in[order]
