"""Per-sample statistics: which audit samples an attack finds best, and their nearest synthetic neighbours."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from raypriv.report.results import ParadigmResult

TOP_SAMPLES = 20


def vulnerable_samples(result: ParadigmResult, attack: str, top: int = TOP_SAMPLES, fpr: float = 0.01) -> pd.DataFrame:
    """The audit samples this attack finds best, most vulnerable first.

    *Attack success* of a sample: the share of the models that trained on it
    (IN) in which the attack flags it at the paradigm's global threshold,
    the one that flags at most ``fpr`` of all OUT pairs.  Ties (common: many
    canaries are caught in every IN model) are broken by the mean score
    margin, mean over IN models minus mean over OUT models.
    """
    score, is_in = result.scores[attack], result.is_in
    out_scores = np.sort(score[~is_in])[::-1]
    allowed = int(np.floor(fpr * len(out_scores)))  # OUT pairs the threshold may let through
    threshold = out_scores[min(allowed, len(out_scores) - 1)]
    flagged = score > threshold
    n_in = is_in.sum(axis=0)
    n_out = (~is_in).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        success = (flagged & is_in).sum(axis=0) / n_in
        false_alarms = (flagged & ~is_in).sum(axis=0) / n_out
        margin = np.where(is_in, score, 0).sum(axis=0) / n_in - np.where(~is_in, score, 0).sum(axis=0) / n_out
    audit = result.run.audit
    frame = pd.DataFrame(
        {
            "sample_id": audit.sample_id.to_numpy(),
            "dataset_index": audit.dataset_index.to_numpy(),
            "true_label": audit.true_label.to_numpy(),
            "label": audit.label.to_numpy(),
            "canary": audit.canary.to_numpy(),
            "success": success,
            "flagged_out": false_alarms,
            "margin": margin,
            "n_in": n_in,
        }
    )
    frame = frame.sort_values(["success", "margin"], ascending=[False, False], kind="stable").head(top)
    return frame.reset_index(drop=True)


def _pixels(x: np.ndarray) -> np.ndarray:
    """Images in pixel scale 0..1 as float32 rows."""
    x = np.asarray(x)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    return x.reshape(len(x), -1)


def _squared_distances(queries: np.ndarray, points: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """``(n_queries, n_points)`` squared L2 distances in pixel space; ``points`` as stored (uint8 or float).

    Points are converted a chunk at a time, so a 50,000-image pool never
    exists as float32 all at once.
    """
    out = np.empty((len(queries), len(points)), dtype=np.float32)
    q_norm = (queries**2).sum(axis=1)[:, None]
    for start in range(0, len(points), chunk):
        block = _pixels(points[start : start + chunk])
        out[:, start : start + len(block)] = q_norm + (block**2).sum(axis=1)[None, :] - 2.0 * queries @ block.T
    return np.maximum(out, 0.0)


def nearest_neighbours(
    result: ParadigmResult, frame: pd.DataFrame, dataset: Any
) -> tuple[pd.DataFrame, dict[int, np.ndarray], str]:
    """Add each sample's nearest image among the synthetic sets trained on while it was IN.

    L2 in pixel space (0..1).  Only the models where the sample was IN count:
    those are the sets its private copy could have leaked into.  For a
    paradigm that trains on the private set itself (``real``, DP-SGD) the
    neighbour is the sample itself.  Also adds ``nearest_real``: the distance
    to the closest *other* training-pool image, the scale a near-copy is
    judged against.  Returns the frame, the neighbour images by sample id,
    and a note on what was searched.
    """
    from raypriv.run.format import synthetic_path

    run, paradigm = result.run, result.paradigm
    frame = frame.copy()
    indices = frame.dataset_index.to_numpy()
    queries = _pixels(dataset.x_train[indices])
    real_distances = _squared_distances(queries, dataset.x_train)
    real_distances[np.arange(len(indices)), indices] = np.inf
    frame["nearest_real"] = np.sqrt(real_distances.min(axis=1))
    frame["neighbour_distance"] = np.nan
    frame["neighbour_model"] = -1
    frame["neighbour_label"] = -1
    images: dict[int, np.ndarray] = {}

    stored = run.store.list_files(f"synthetic/{paradigm}", ".npz")
    rows = result.models
    if not stored:
        if len(rows) and (rows.synthetic_size == rows.private_size).all():
            frame["neighbour_distance"] = 0.0
            frame["neighbour_label"] = frame.label
            for sample_id, index in zip(frame.sample_id, indices, strict=True):
                images[int(sample_id)] = dataset.x_train[index]
            return frame, images, "trains on the private set itself: each sample's nearest training image is itself"
        return frame, images, "no synthetic sets stored for this paradigm: no neighbours to show"

    best = np.full(len(frame), np.inf)
    searched, skipped = 0, 0
    sample_ids = frame.sample_id.to_numpy()
    for model_id in range(run.keep.shape[0]):
        members = np.flatnonzero(run.keep[model_id, sample_ids])
        relative = synthetic_path(paradigm, model_id)
        if len(members) == 0 or not run.store.exists(relative):
            continue
        arrays = run.store.read_npz(relative)
        x = arrays["x"]
        if x.shape[1:] != dataset.x_train.shape[1:]:
            skipped += 1
            continue
        searched += 1
        distances = _squared_distances(queries[members], x)
        nearest = distances.argmin(axis=1)
        for position, (row, column) in enumerate(zip(members, nearest, strict=True)):
            value = float(np.sqrt(distances[position, column]))
            if value < best[row]:
                best[row] = value
                y = arrays["y"][column]
                frame.loc[row, "neighbour_distance"] = value
                frame.loc[row, "neighbour_model"] = model_id
                frame.loc[row, "neighbour_label"] = int(np.argmax(y)) if np.ndim(y) else int(y)
                images[int(sample_ids[row])] = x[column]
    note = f"searched the synthetic sets of {searched} models (each sample: only the models where it was IN)"
    if skipped:
        note += f"; {skipped} sets of another shape skipped"
    return frame, images, note
