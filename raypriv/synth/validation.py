"""The checks every paradigm's training set and reported ``info`` pass before a model trains on them.

One set of rules for every source of synthetic data: an ``external``
command's ``.npz`` (:mod:`raypriv.synth.external`), a Python plugin's
:class:`~raypriv.synth.base.LabeledSet`, and a built-in's
(:meth:`raypriv.pipeline.ShadowTrainer._synthesize`).  A problem is a
:class:`ValueError` whose message says what is wrong; the pipeline turns it
into a :class:`~raypriv.errors.ModelFailed` for that model only.

:func:`check_training_set` in full (``strict=True``, code from outside
raypriv: external commands and plugins):

* ``x`` has the private set's feature shape ``(N, *feature_shape)`` with
  ``N >= 1``, and a numeric dtype: images ``uint8`` or floats in [0, 1],
  tabular features floats; every value finite;
* ``y`` has one row per row of ``x``: integer class ids in
  ``[0, num_classes)``, or float probability rows ``(N, num_classes)``
  (finite, non-negative, summing to 1).

Built-in paradigms get ``strict=False``: the same shape, emptiness, length,
finiteness and class checks, without the dtype policy, the [0, 1] range of
float images and the row sums of soft labels (their outputs are clamped and
normalised by construction, and kept bit for bit as they are).

This module imports no torch.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def _labels(y: np.ndarray, n: int, num_classes: int, strict: bool) -> np.ndarray:
    """The labels as int64 ids or float32 probabilities, or :class:`ValueError` saying why they are malformed."""
    if y.ndim == 0 or len(y) != n:
        raise ValueError(f"y has {len(y) if y.ndim else 'no'} rows but x has {n}; give one label per input")
    if y.ndim == 1 and y.dtype.kind in "iu":
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"y holds classes {int(y.min())}..{int(y.max())}, outside [0, {num_classes})")
        return y.astype(np.int64)
    if y.ndim == 2 and y.shape[1] == num_classes and y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise ValueError("y (soft labels) holds NaN or infinite values")
        if strict and ((y < 0).any() or not np.allclose(y.sum(axis=1), 1.0, atol=1e-3)):
            raise ValueError("y (soft labels) rows must be non-negative and sum to 1")
        return y.astype(np.float32)
    raise ValueError(
        f"y has shape {y.shape} and dtype {y.dtype}; give integer class ids (N,) or float probabilities "
        f"(N, {num_classes})"
    )


def check_training_set(
    x: np.ndarray,
    y: np.ndarray,
    *,
    feature_shape: tuple[int, ...],
    num_classes: int,
    image: bool,
    strict: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` checked (see the module docstring) and normalised: x float32 or uint8, y int64 ids or float32 rows.

    Raises :class:`ValueError` naming the problem.  ``feature_shape`` is the
    private set's (``(C, H, W)`` or ``(F,)``); ``image`` whether the inputs
    are images.
    """
    x, y = np.asarray(x), np.asarray(y)
    feature_shape = tuple(feature_shape)
    if x.ndim != len(feature_shape) + 1 or tuple(x.shape[1:]) != feature_shape or len(x) == 0:
        expected = f"(N, {', '.join(map(str, feature_shape))})"
        empty = " (the set is empty)" if x.ndim >= 1 and len(x) == 0 else ""
        raise ValueError(f"x has shape {x.shape}{empty}; expected {expected} with N >= 1")
    if x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise ValueError("x holds NaN or infinite values")
        if strict and image and (x.min() < 0.0 or x.max() > 1.0):
            raise ValueError(f"x (images as floats) lies in [{x.min():.3g}, {x.max():.3g}], outside [0, 1]")
        if strict:
            x = x.astype(np.float32)
    elif strict and not (image and x.dtype == np.uint8):
        raise ValueError(f"x has dtype {x.dtype}; give float32 ({'in [0, 1], or uint8 ' if image else ''}features)")
    elif not strict and x.dtype.kind not in "iu":
        raise ValueError(f"x has dtype {x.dtype}; expected numbers")
    return x, _labels(y, len(x), num_classes, strict)


def check_info(info: Any) -> None:
    """Check what a paradigm reported in ``context.info``; :class:`ValueError` naming the fix.

    ``info`` is a mapping with string keys and JSON values (it is stored as
    JSON in the models table).  An accounted ``epsilon`` comes with its
    ``delta`` (the summary and the report print them together): both finite
    numbers, ``epsilon >= 0`` and ``0 <= delta < 1`` (0 for pure DP).  The
    ``accountant`` that computed them (``"rdp"``, ``"prv"``, ``"zcdp"``, ...)
    is printed beside them; the built-in DP paradigms always report it.  It is
    optional for a plugin (one that omits it is shown without), but when given
    it is a short non-empty string and comes with an ``epsilon``.
    """
    if not isinstance(info, dict):
        raise ValueError(f"context.info is a {type(info).__name__}; it must stay a dict")
    bad_keys = [key for key in info if not isinstance(key, str)]
    if bad_keys:
        raise ValueError(f"context.info has non-string keys {bad_keys!r}; use strings")
    try:
        json.dumps(info, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"context.info is not JSON ({exc}); store plain numbers, strings and booleans (e.g. float(value))"
        ) from None
    if "accountant" in info:
        accountant = info["accountant"]
        if not isinstance(accountant, str) or not accountant.strip() or len(accountant) > 40:
            raise ValueError(
                f"context.info['accountant']={accountant!r} must be a short non-empty string naming how epsilon was "
                "accounted (e.g. 'rdp', 'prv', 'zcdp')"
            )
        if "epsilon" not in info:
            raise ValueError(
                "context.info has an 'accountant' but no 'epsilon'; report the accountant beside the epsilon it computed"
            )
    if "epsilon" not in info and "delta" not in info:
        return
    if "epsilon" not in info or "delta" not in info:
        given, missing = ("epsilon", "delta") if "epsilon" in info else ("delta", "epsilon")
        raise ValueError(
            f"context.info has {given!r} but no {missing!r}; report both (delta=0.0 for pure epsilon-DP)"
        )
    for key in ("epsilon", "delta"):
        value = info[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"context.info[{key!r}]={value!r} must be a finite number (use float(...))")
    if info["epsilon"] < 0:
        raise ValueError(f"context.info['epsilon']={info['epsilon']!r} must be non-negative")
    if not 0 <= info["delta"] < 1:
        raise ValueError(f"context.info['delta']={info['delta']!r} must lie in [0, 1)")
