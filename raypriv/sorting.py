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
