"""Shared by the ``dpgen-*`` paradigms: privacy accounting and data-independent bins.

Neighbouring datasets differ by adding or removing one record (unbounded DP):
that is the difference a membership-inference attack tests.

Accounting
----------
Each paradigm invokes one noise mechanism ``k`` times (once per marginal
table, or once per generated token), adaptively, on queries whose
sensitivity to one record is bounded.

* **Gaussian**: noise ``N(0, sigma^2)`` per coordinate of a query with L2
  sensitivity ``D2`` is ``rho = D2^2 / (2 sigma^2)``-zCDP (Bun & Steinke,
  "Concentrated Differential Privacy", TCC 2016, Prop. 1.6); ``k`` adaptive
  invocations compose to ``k rho`` (their Lemma 2.3).  ``rho``-zCDP implies
  ``(epsilon, delta)``-DP for
  ``delta = min_{alpha > 1} exp((alpha-1)(alpha rho - epsilon)) / (alpha-1) * (1-1/alpha)^alpha``
  (Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential
  Privacy", NeurIPS 2020, Prop. 12 / Cor. 13), tighter than
  ``epsilon = rho + 2 sqrt(rho log(1/delta))``.  To meet a target
  ``(epsilon, delta)`` we find the largest ``rho`` whose conversion gives at
  most ``epsilon`` and set ``sigma = D2 sqrt(k / (2 rho))``.
* **Laplace**: noise ``Lap(b)`` per coordinate of a query with L1
  sensitivity ``D1`` is ``(D1 / b)``-DP; ``k`` invocations compose to
  ``k D1 / b`` (basic composition, exact for pure DP), so ``b = k D1 / epsilon``
  and ``delta = 0``.

The reported ``noise_multiplier`` is the noise scale over the sensitivity of
one invocation (``sigma / D2``, or ``b / D1``), as DP-SGD's is ``sigma / C``.
The noise is drawn from seeded NumPy generators (the audit must be
reproducible), not a cryptographic source, and floating-point Laplace/Gaussian
sampling has known side channels (Mironov, CCS 2012): the accounted epsilon is
that of the ideal mechanism, which is what an audit compares against.

Bins
----
Both paradigms put feature values into bins, and the bin edges must not
depend on the private records beyond the DP guarantee.  The edges are fixed
in the *normalised* space of the run's :class:`~raypriv.training.Normalizer`:
``levels`` equal-width bins over ``[-clip, clip]`` standard deviations around
the mean, values beyond clipped into the end bins.  The Normalizer's mean
and standard deviation are treated as *public*.  They are fitted on the whole
training pool (every audit sample included, IN or OUT), so within an audit
they are the same for every shadow model and carry no membership signal; but
they are statistics of the data, and a deployment claiming the accounted
epsilon for its whole pipeline would have to take them from public data (or
spend budget on them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from raypriv.errors import RayprivError

if TYPE_CHECKING:  # torch is not imported here: the options of both paradigms check their budget with this module
    import torch

    from raypriv.training import Normalizer

# Bisection steps: far beyond double precision for the brackets used.
_BISECTION_STEPS = 200


def _bisect(low: float, high: float, in_lower_half: Callable[[float], bool]) -> tuple[float, float]:
    """Halve ``[low, high]`` :data:`_BISECTION_STEPS` times, keeping the half ``in_lower_half(middle)`` points to."""
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        if in_lower_half(middle):
            high = middle
        else:
            low = middle
    return low, high


def zcdp_delta(rho: float, epsilon: float) -> float:
    """The smallest ``delta`` the CKS 2020 conversion gives for ``rho``-zCDP at ``epsilon``."""
    if rho < 0 or epsilon < 0:
        raise ValueError(f"rho and epsilon must be non-negative, got rho={rho}, epsilon={epsilon}")
    if rho == 0:
        return 0.0
    # The bound is convex in alpha; its minimiser solves (2 alpha - 1) rho - epsilon + log(1 - 1/alpha) = 0.
    # Any alpha > 1 gives a valid (if looser) delta, so an imprecise search errs on the safe side.
    low, high = 1.0 + 1e-9, max(2.0, (epsilon + 1.0) / (2.0 * rho) + 2.0)
    for _ in range(_BISECTION_STEPS):
        alpha = (low + high) / 2
        if (2 * alpha - 1) * rho - epsilon + math.log1p(-1.0 / alpha) < 0:
            low = alpha
        else:
            high = alpha
    alpha = max(high, 1.01)  # keep away from alpha -> 1, where the formula is numerically unstable
    log_delta = (alpha - 1) * (alpha * rho - epsilon) + alpha * math.log1p(-1.0 / alpha) - math.log(alpha - 1)
    return float(math.exp(min(0.0, log_delta)))  # delta <= 1 always


def zcdp_epsilon(rho: float, delta: float) -> float:
    """The smallest ``epsilon`` with ``zcdp_delta(rho, epsilon) <= delta``: ``rho``-zCDP as ``(epsilon, delta)``-DP."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    if rho == 0:
        return 0.0
    high = rho + 2 * math.sqrt(rho * math.log(1 / delta))  # Bun & Steinke's bound is feasible
    return float(_bisect(0.0, high, lambda epsilon: zcdp_delta(rho, epsilon) <= delta)[1])


def zcdp_rho(epsilon: float, delta: float) -> float:
    """The largest ``rho`` whose zCDP guarantee implies ``(epsilon, delta)``-DP."""
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    high = epsilon + 1.0  # zcdp_delta(epsilon + 1, epsilon) > delta for any delta < 1
    return float(_bisect(0.0, high, lambda rho: zcdp_delta(rho, epsilon) > delta)[0])


@dataclass(frozen=True)
class NoiseCalibration:
    """The noise of ``compositions`` invocations of one mechanism, and their accounted guarantee."""

    mechanism: str  # "gaussian" or "laplace"
    scale: float  # sigma (Gaussian) or b (Laplace), per coordinate
    noise_multiplier: float  # scale / sensitivity of one invocation (L2 for Gaussian, L1 for Laplace)
    epsilon: float  # accounted over all invocations
    delta: float  # 0 for Laplace (pure DP)
    compositions: int
    rho: float | None = None  # zCDP parameter of the whole, Gaussian only

    def info(self) -> dict[str, Any]:
        """The facts a paradigm stores in ``context.info`` (no epsilon for ``none``: nothing is accounted)."""
        if self.mechanism == "none":
            return {"mechanism": "none", "noise_scale": 0.0, "compositions": self.compositions}
        facts: dict[str, Any] = {
            "epsilon": self.epsilon,
            "delta": self.delta,
            # how epsilon was accounted: zCDP composition, converted to (epsilon, delta) (CKS 2020); or pure-DP
            # basic composition of the Laplace invocations
            "accountant": "zcdp" if self.mechanism == "gaussian" else "basic-composition",
            "noise_multiplier": self.noise_multiplier,
            "noise_scale": self.scale,
            "mechanism": self.mechanism,
            "compositions": self.compositions,
        }
        if self.rho is not None:
            facts["rho"] = self.rho
        return facts

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Noise of this calibration (float64), drawn from ``rng``; zeros for ``none``."""
        if self.mechanism == "none":
            return np.zeros(shape)
        if self.mechanism == "gaussian":
            return rng.normal(0.0, self.scale, size=shape)
        return rng.laplace(0.0, self.scale, size=shape)


def calibrate(
    mechanism: str, epsilon: float, delta: float, compositions: int, l1_sensitivity: float, l2_sensitivity: float
) -> NoiseCalibration:
    """Noise for ``compositions`` invocations that together meet ``(epsilon, delta)`` (see the module docstring).

    ``delta`` is ignored by the Laplace mechanism, which is pure DP.  ``none``
    adds no noise: epsilon is infinite (the non-private baseline of a DP
    generator), and ``epsilon`` and ``delta`` are ignored.
    """
    if mechanism == "none":
        return NoiseCalibration("none", 0.0, 0.0, math.inf, 0.0, compositions)
    if not epsilon > 0:
        raise RayprivError(f"epsilon={epsilon!r}: the privacy budget must be positive")
    if compositions < 1:
        raise ValueError(f"compositions must be at least 1, got {compositions}")
    if mechanism == "laplace":
        scale = compositions * l1_sensitivity / epsilon
        return NoiseCalibration("laplace", scale, scale / l1_sensitivity, float(epsilon), 0.0, compositions)
    if mechanism == "gaussian":
        rho = zcdp_rho(epsilon, delta)
        sigma = l2_sensitivity * math.sqrt(compositions / (2.0 * rho))
        accounted_rho = compositions * l2_sensitivity**2 / (2.0 * sigma**2)
        return NoiseCalibration(
            "gaussian", sigma, sigma / l2_sensitivity, zcdp_epsilon(accounted_rho, delta), float(delta),
            compositions, accounted_rho,
        )
    raise RayprivError(f"mechanism={mechanism!r} is not known; choose 'laplace' or 'gaussian'")


def check_budget(where: str, epsilon: float, delta: float, mechanism: str, allow_none: bool = False) -> None:
    """Validate the privacy options every ``dpgen-*`` paradigm has (``allow_none``: ``mechanism: none`` is allowed)."""
    if allow_none and mechanism == "none":
        return
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise RayprivError(
            f"{where}.epsilon={epsilon!r}: the privacy budget must be a positive number (e.g. 1 or 8); "
            "epsilon <= 0 would mean infinite noise"
        )
    if not 0.0 < delta < 1.0:
        raise RayprivError(
            f"{where}.delta={delta!r}: delta must lie strictly between 0 and 1 (well below 1/n, e.g. 1e-5)"
        )
    if mechanism not in ("laplace", "gaussian"):
        choices = "'laplace', 'gaussian' or 'none' (no noise: not private)" if allow_none else "'laplace' or 'gaussian'"
        raise RayprivError(f"{where}.mechanism={mechanism!r} is not known; choose {choices}")


def require_tabular(where: str, input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 1:
        raise RayprivError(
            f"{where} generates tabular records, but the dataset's inputs have shape {input_shape}; use a tabular "
            "dataset (breast_cancer, wine, adult, csv, parquet, or an npz of (N, D) features)"
        )


@dataclass(frozen=True)
class Quantizer:
    """``levels`` equal-width bins per feature over ``[-clip, clip]`` public standard deviations.

    Edges are fixed by the public normaliser statistics (see the module
    docstring), never by the private records.
    """

    mean: np.ndarray  # (D,) float64
    std: np.ndarray  # (D,) float64
    levels: int
    clip: float

    @classmethod
    def from_normalizer(cls, normalizer: Normalizer, levels: int, clip: float) -> "Quantizer":
        mean = normalizer.mean.detach().cpu().double().numpy().reshape(-1)
        std = normalizer.std.detach().cpu().double().numpy().reshape(-1)
        return cls(mean, std, levels, clip)

    @property
    def width(self) -> float:
        """Bin width in normalised units."""
        return 2.0 * self.clip / self.levels

    def bin(self, x: np.ndarray) -> np.ndarray:
        """Bin index ``0..levels-1`` of each raw value of ``x`` (N, D)."""
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.std
        index = np.floor((np.clip(z, -self.clip, self.clip) + self.clip) / self.width).astype(np.int64)
        return np.clip(index, 0, self.levels - 1)

    def sample(self, bins: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Raw float32 values drawn uniformly within the given bins (N, D)."""
        z = -self.clip + (np.asarray(bins, dtype=np.float64) + rng.random(bins.shape)) * self.width
        return (z * self.std + self.mean).astype(np.float32)

    def centre(self, bins: np.ndarray) -> np.ndarray:
        """Raw float32 values at the centre of the given bins."""
        z = -self.clip + (np.asarray(bins, dtype=np.float64) + 0.5) * self.width
        return (z * self.std + self.mean).astype(np.float32)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def tabular_records(private: Any, context: Any, levels: int, clip: float) -> tuple[Quantizer, np.ndarray, np.ndarray]:
    """What every ``dpgen-*`` paradigm starts from: the public quantizer, and the private features and labels as NumPy."""
    require_tabular(context.paradigm, context.input_shape)
    quantizer = Quantizer.from_normalizer(context.normalizer, levels, clip)
    return quantizer, to_numpy(private.x), to_numpy(private.y).astype(np.int64)
