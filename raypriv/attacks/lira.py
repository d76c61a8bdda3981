"""LiRA (Carlini et al., "Membership Inference Attacks From First Principles", S&P 2022).

* :func:`reduce_logits`: pass 1, one model's logits to the per-query score
  ``s = log p_y - log sum_{y' != y} p_y'`` and the label log-probability;
* :func:`lira_online` and :func:`lira_offline`: pass 2, the likelihood ratio
  of one :class:`~raypriv.attacks.block.SampleBlock` under the leave-one-out
  IN and OUT Gaussians, averaged over queries.

The conventions (the presets of :class:`~raypriv.attacks.block.LiraOptions`, the 1e-45 and 1e-30 floors,
fixed variance) are listed in :mod:`raypriv.attacks`.
"""

from __future__ import annotations

import numpy as np

from raypriv.attacks.block import SampleBlock

LOG_FLOOR = 1e-45  # inside every log of a probability, as in the reference: scores stay finite
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def reduce_logits(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``(R, C)`` logits: the LiRA score ``s`` and ``log p_label``, both float64 ``(R,)``.

    The float64 formulas of :func:`raypriv.attacks.reference.lira_scores_from_logits` and
    :func:`raypriv.attacks.reference.loss_attack`, one row at a time, so a model's logits can be reduced
    batch by batch as they are read.  The class axis is reduced in a
    transposed ``(C, R)`` copy (reductions over a short last axis are slow in
    NumPy), so sums may differ from the reference's in the last bit.
    """
    z = np.array(np.asarray(logits).T, dtype=np.float64, order="C")  # (C, R)
    z -= z.max(axis=0)
    p = np.exp(z)
    total = p.sum(axis=0)
    log_total = np.log(total)
    p /= total
    rows = np.arange(z.shape[1])
    p_true = p[labels, rows].copy()
    p[labels, rows] = 0.0
    p_wrong = p.sum(axis=0)
    score = np.log(p_true + LOG_FLOOR) - np.log(p_wrong + LOG_FLOOR)
    return score, z[labels, rows] - log_total


def to_float32(values: np.ndarray) -> np.ndarray:
    """Cast to float32, clipping to its finite range: a float64 LiRA score of -1e50 (zero-variance shadows) stays finite.

    A float32 array is returned as it is (no copy).
    """
    values = np.asarray(values)
    if values.dtype == np.float32:
        return values
    return np.clip(values, -_FLOAT32_MAX, _FLOAT32_MAX).astype(np.float32)


def lira_online(block: SampleBlock, fixed_variance: bool = False) -> np.ndarray:
    """``mean_q [log N(s; mu_in, sd_in) - log N(s; mu_out, sd_out)]``, float64 ``(B, M)``."""
    return (block.log_pdf(True, fixed_variance) - block.log_pdf(False, fixed_variance)).mean(axis=1)


def lira_offline(block: SampleBlock, fixed_variance: bool = False) -> np.ndarray:
    """``mean_q [-log N(s; mu_out, sd_out)]``: the OUT log-pdf, a two-sided test, float64 ``(B, M)``."""
    return -block.log_pdf(False, fixed_variance).mean(axis=1)
