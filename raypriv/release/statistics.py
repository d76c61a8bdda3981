"""The release statistics' arithmetic: records, distances to the closest record, kernel densities (NumPy only).

Every function here takes records as float64 ``(n, D)`` rows (images
flattened, pixels in 0..1; tabular records standardised by the reference
set, :class:`Standardiser`) and works in chunks of about ``2^22`` numbers, so a
synthetic set of any size is compared without an ``(N, S, D)`` array.
Distances are computed from the differences themselves (not from
``|a|^2 + |b|^2 - 2ab``), so a released copy of a record is at distance 0
exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

CHUNK_ELEMENTS = 1 << 22  # float64 numbers per (queries x records x D) difference block
DCR_FLOOR = 1e-6  # added to a distance before its log: a copy (distance 0) stays finite


def as_records(x: np.ndarray) -> np.ndarray:
    """Rows of float64 ``(n, D)`` from images ``(n, C, H, W)`` or records ``(n, D)``; uint8 pixels are scaled to 0..1.

    A stored set holds uint8 pixels (coresets) or float32 pixels in 0..1
    (generators), the dataset uint8: both end up on the same 0..1 scale.
    """
    x = np.asarray(x)
    rows = x.reshape(len(x), -1)
    return rows.astype(np.float64) / 255.0 if x.dtype == np.uint8 else rows.astype(np.float64)


@dataclass(frozen=True)
class Standardiser:
    """Per-column ``(x - mean) / scale`` fitted on public rows (the reference set); a constant column keeps scale 1."""

    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)

    @classmethod
    def fit(cls, rows: np.ndarray) -> Standardiser:
        std = rows.std(axis=0)
        return cls(rows.mean(axis=0), np.where(std > 0, std, 1.0))

    @classmethod
    def identity(cls, dim: int) -> Standardiser:
        return cls(np.zeros(dim), np.ones(dim))

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return (rows - self.mean) / self.scale


def _squared_distances(queries: np.ndarray, records: np.ndarray):
    """Yield ``(start, stop, d2)``: the squared distances ``(stop - start, S)`` of query rows to every record."""
    per_query = max(1, records.shape[0] * records.shape[1])
    step = max(1, CHUNK_ELEMENTS // per_query)
    for start in range(0, len(queries), step):
        stop = min(len(queries), start + step)
        if records.shape[1] * records.shape[0] <= CHUNK_ELEMENTS:
            diff = queries[start:stop, None, :] - records[None, :, :]
            yield start, stop, np.einsum("qsd,qsd->qs", diff, diff)
        else:  # one query's differences alone exceed the chunk: walk the records too
            out = np.empty((stop - start, len(records)))
            rows = max(1, CHUNK_ELEMENTS // records.shape[1])
            for first in range(0, len(records), rows):
                diff = queries[start:stop, None, :] - records[None, first : first + rows, :]
                out[:, first : first + rows] = np.einsum("qsd,qsd->qs", diff, diff)
            yield start, stop, out


def nearest_distances(queries: np.ndarray, records: np.ndarray, query_labels: np.ndarray | None = None,
                      record_labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each query's Euclidean distance to its closest record, and that record's index: float64 ``(N,)``, int64 ``(N,)``.

    ``queries`` ``(N, D)``, ``records`` ``(S, D)``, ``S >= 1``.  With labels
    (``(N,)`` and ``(S,)`` int64) the search is class-conditional: a query is
    compared with the records of its own label only, or with every record
    when the set has none of that label.
    """
    dist = np.empty(len(queries))
    index = np.empty(len(queries), dtype=np.int64)
    if query_labels is None or record_labels is None:
        groups = [(np.arange(len(queries)), np.arange(len(records)))]
    else:
        groups = []
        for label in np.unique(query_labels):
            own = np.flatnonzero(record_labels == label)
            groups.append((np.flatnonzero(query_labels == label), own if len(own) else np.arange(len(records))))
    for rows, candidates in groups:
        for start, stop, d2 in _squared_distances(queries[rows], records[candidates]):
            best = d2.argmin(axis=1)
            dist[rows[start:stop]] = np.sqrt(d2[np.arange(stop - start), best])
            index[rows[start:stop]] = candidates[best]
    return dist, index


def scott_bandwidth(n: int, dim: int) -> float:
    """Scott's rule ``n^(-1/(D+4))`` for standardised data (unit variance per column): the kernel's standard deviation."""
    return float(max(n, 1) ** (-1.0 / (dim + 4)))


def log_kde(queries: np.ndarray, data: np.ndarray, bandwidth: float | None = None) -> np.ndarray:
    """Log density of an isotropic Gaussian KDE of ``data`` ``(S, D)`` at ``queries`` ``(N, D)``: float64 ``(N,)``.

    ``log (1/S) sum_s N(x; data_s, h^2 I)``, ``h`` Scott's rule
    (:func:`scott_bandwidth`) unless given.
    """
    n, dim = data.shape
    h = scott_bandwidth(n, dim) if bandwidth is None else bandwidth
    out = np.empty(len(queries))
    norm = np.log(n) + 0.5 * dim * np.log(2 * np.pi * h * h)
    for start, stop, d2 in _squared_distances(queries, data):
        out[start:stop] = logsumexp(-d2 / (2 * h * h), axis=1) - norm
    return out


def hard_labels(y: np.ndarray) -> np.ndarray:
    """Class ids ``(S,)`` int64 from hard labels ``(S,)`` or soft-label rows ``(S, K)`` (their argmax)."""
    y = np.asarray(y)
    return (y.argmax(axis=1) if y.ndim == 2 else y).astype(np.int64)
