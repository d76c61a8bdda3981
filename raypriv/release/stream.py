"""The streaming pass over a paradigm's stored synthetic sets: one set at a time, each to its release statistics.

:class:`ReleaseInputs` holds what every set is compared with, computed once
per run: the audit samples (as records, and for images as features), their
labels, and the reference set's log density at each audit sample.
:func:`model_statistics` reads one model's ``synthetic/<paradigm>/model-<id>.npz``,
checks it, runs the feature extractor once over it (images) and returns
each statistic as ``(n_audit,)``.  :func:`paradigm_statistics` walks every
model of a paradigm, in this process or as one Ray task per model (the Ray
scoring backend), so at most one set per worker is in memory; the driver
keeps only the ``(n_models, n_audit)`` statistics.  Both call the same
function, so both backends get the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np

from raypriv.errors import RayprivError
from raypriv.release.features import Embedding, RandomConvNet, pixel_images
from raypriv.release.ngram import RecordText, ngram_statistic
from raypriv.release.statistics import (
    DCR_FLOOR,
    Standardiser,
    as_records,
    hard_labels,
    log_kde,
    nearest_distances,
)
from raypriv.run.format import logits_path, model_row_path, synthetic_path
from raypriv.run.store import RunStore

# What model_statistics can compute; "dcr_feature" for images only, "ngram" for paradigms that write text records.
STATISTICS = ("dcr", "dcr_feature", "density", "ngram")


@dataclass(frozen=True, eq=False)
class ReleaseInputs:
    """Everything a synthetic set is compared with, fixed once per run (public or audit-side data only).

    ``audit_rows`` float64 ``(N, D)``: the audit samples as records (images
    flattened, pixels 0..1; tabular records standardised by the reference
    set: ``standardiser``).  ``audit_labels`` int64 ``(N,)``: the labels the
    models train on (a canary's wrong label).  ``reference_rows`` ``(R, D)``:
    the reference set (population samples, never audit samples).  For images,
    ``embed`` maps images to features (default :class:`RandomConvNet`),
    standardised by the reference set's features (``feature_standardiser``);
    ``audit_features`` ``(N, F)``.  ``reference_log_density`` ``(N,)``: the
    reference set's KDE log density at each audit sample, in the density
    space (features for images, standardised records for tabular data).
    ``texts``: for each paradigm that writes its records as text (dpgen-llm),
    how (:class:`raypriv.release.ngram.RecordText`), and ``audit_lines`` the
    audit samples written that way (:meth:`with_texts`).
    """

    audit_rows: np.ndarray
    audit_labels: np.ndarray
    reference_rows: np.ndarray
    input_shape: tuple[int, ...]
    standardiser: Standardiser
    reference_log_density: np.ndarray
    embed: Embedding | None = None
    feature_standardiser: Standardiser | None = None
    audit_features: np.ndarray | None = None
    reference_features: np.ndarray | None = None
    texts: Mapping[str, RecordText] = field(default_factory=dict)
    audit_lines: Mapping[str, list[str]] = field(default_factory=dict)

    def with_texts(self, texts: Mapping[str, RecordText], audit_x: np.ndarray) -> ReleaseInputs:
        """These inputs with text paradigms' writers, and the raw audit records ``(N, D)`` written by each."""
        return replace(self, texts=dict(texts),
                       audit_lines={p: text.lines(audit_x, self.audit_labels) for p, text in texts.items()})

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    @property
    def n_audit(self) -> int:
        return int(len(self.audit_rows))

    @property
    def audit_density_points(self) -> np.ndarray:
        """The audit samples in the density space: ``(N, F)`` features for images, ``(N, D)`` records otherwise."""
        return self.audit_features if self.is_image else self.audit_rows

    @property
    def reference_density_points(self) -> np.ndarray:
        return self.reference_features if self.is_image else self.reference_rows

    @classmethod
    def build(cls, audit_x: np.ndarray, audit_labels: np.ndarray, reference_x: np.ndarray,
              embed: Embedding | None = None) -> ReleaseInputs:
        """The inputs from raw audit samples ``(N, ...)``, their labels ``(N,)`` and reference samples ``(R, ...)``.

        Images are ``(n, C, H, W)`` (uint8 0..255 or float 0..1); tabular
        records ``(n, D)``.  ``embed``: the image feature extractor (default:
        a :class:`RandomConvNet`); ignored for tabular data.
        """
        audit_x, reference_x = np.asarray(audit_x), np.asarray(reference_x)
        if len(reference_x) < 2:
            raise RayprivError(
                f"the release attacks need a reference set of at least 2 population samples, got {len(reference_x)}; "
                "give the dataset a test split, or audit with audit.threat_models: [model]"
            )
        input_shape = tuple(audit_x.shape[1:])
        image = len(input_shape) == 3
        reference_rows = as_records(reference_x)
        standardiser = Standardiser.identity(reference_rows.shape[1]) if image else Standardiser.fit(reference_rows)
        fields: dict[str, Any] = {}
        audit_rows = standardiser(as_records(audit_x))
        reference_rows = standardiser(reference_rows)
        if image:
            embed = embed or RandomConvNet(input_shape[0])
            reference_features = np.asarray(embed(pixel_images(reference_x)), dtype=np.float64)
            feature_standardiser = Standardiser.fit(reference_features)
            fields = {"embed": embed, "feature_standardiser": feature_standardiser,
                      "audit_features": feature_standardiser(np.asarray(embed(pixel_images(audit_x)), dtype=np.float64)),
                      "reference_features": feature_standardiser(reference_features)}
        density_reference = fields["reference_features"] if image else reference_rows
        density_audit = fields["audit_features"] if image else audit_rows
        return cls(audit_rows, np.asarray(audit_labels, dtype=np.int64), reference_rows, input_shape, standardiser,
                   log_kde(density_audit, density_reference), **fields)


def read_set(store: RunStore, paradigm: str, model_id: int, inputs: ReleaseInputs) -> tuple[np.ndarray, np.ndarray]:
    """One model's stored synthetic set ``(x, y)``, checked against the audit samples' shape; a bad set is a RayprivError
    naming the file, the model and the problem."""
    path = store.path(synthetic_path(paradigm, model_id))

    def bad(problem: str) -> RayprivError:
        return RayprivError(
            f"{path}: the synthetic set of model {model_id} of {paradigm} {problem}, so no release attack is scored from "
            f"it; delete it, the .json beside it, {store.path(model_row_path(paradigm, model_id))} and "
            f"{store.path(logits_path(paradigm, model_id))} and rerun the audit to synthesize and train that model "
            "again, or score the model attacks only (audit.threat_models: [model])"
        )

    arrays = store.read_npz(synthetic_path(paradigm, model_id))
    if "x" not in arrays or "y" not in arrays:
        raise bad(f"holds {sorted(arrays)}, not the arrays x and y")
    x, y = arrays["x"], arrays["y"]
    if len(x) == 0:
        raise bad("is empty (0 records)")
    if tuple(x.shape[1:]) != inputs.input_shape:
        raise bad(f"has records of shape {tuple(x.shape[1:])}, but the audit samples have shape {inputs.input_shape}")
    if len(y) != len(x) or y.ndim not in (1, 2):
        raise bad(f"has {len(x)} records but labels of shape {y.shape}")
    if not (np.issubdtype(x.dtype, np.number) and np.isfinite(x).all()):
        rows = int((~np.isfinite(x.astype(np.float64))).reshape(len(x), -1).any(axis=1).sum()) if np.issubdtype(
            x.dtype, np.number) else len(x)
        raise bad(f"has {rows} record(s) with NaN or infinite values")
    if not np.isfinite(np.asarray(y, dtype=np.float64)).all():
        raise bad("has NaN or infinite labels")
    return x, y


def model_statistics(store: RunStore, paradigm: str, model_id: int, inputs: ReleaseInputs,
                     names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named statistics (:data:`STATISTICS`) of one model's synthetic set: float32 ``(n_audit,)`` each, higher = nearer.

    * ``dcr``: ``-log(d + 1e-6)``, ``d`` the audit sample's distance to its
      nearest synthetic record of the same label (records space);
    * ``dcr_feature``: the same in the feature space (images);
    * ``density``: ``log p_syn(x) - log p_ref(x)``, both isotropic Gaussian
      KDEs (Scott's rule) in the density space;
    * ``ngram``: the audit record's text log-likelihood under a character
      n-gram model of the set's records as text (:mod:`raypriv.release.ngram`;
      paradigms in ``inputs.texts`` only).
    """
    x, y = read_set(store, paradigm, model_id, inputs)
    labels = hard_labels(y)
    out: dict[str, np.ndarray] = {}
    if "dcr" in names:
        distance, _ = nearest_distances(inputs.audit_rows, inputs.standardiser(as_records(x)), inputs.audit_labels, labels)
        out["dcr"] = -np.log(distance + DCR_FLOOR)
    features = None
    if inputs.is_image and {"dcr_feature", "density"} & set(names):
        features = inputs.feature_standardiser(np.asarray(inputs.embed(pixel_images(x)), dtype=np.float64))  # once per set
    if "dcr_feature" in names:
        if features is None:
            raise RayprivError("the feature-space distance (release_dcr_feature) needs images; this run's records are tabular")
        distance, _ = nearest_distances(inputs.audit_features, features, inputs.audit_labels, labels)
        out["dcr_feature"] = -np.log(distance + DCR_FLOOR)
    if "density" in names:
        points = features if features is not None else inputs.standardiser(as_records(x))
        out["density"] = log_kde(inputs.audit_density_points, points) - inputs.reference_log_density
    if "ngram" in names:
        if paradigm not in inputs.texts:
            raise RayprivError(f"release_ngram needs text records; {paradigm} does not write its records as text")
        out["ngram"] = ngram_statistic(inputs.audit_lines[paradigm], inputs.texts[paradigm].lines(x, labels))
    return {name: out[name].astype(np.float32) for name in names}


def _model_task(uri: str, paradigm: str, model_id: int, inputs: ReleaseInputs, names: tuple[str, ...]) -> dict:
    """A Ray task's body (module level: Ray pickles it): :func:`model_statistics` on the run at ``uri``."""
    import torch

    torch.set_num_threads(1)  # one task per CPU
    return model_statistics(RunStore(uri), paradigm, model_id, inputs, names)


def paradigm_statistics(store: RunStore, paradigm: str, n_models: int, inputs: ReleaseInputs, names: tuple[str, ...],
                        ray_args: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Every model's statistics: ``{name: float32 (n_models, n_audit)}``, one stored set at a time.

    ``ray_args`` (``ray.remote``'s options, e.g. ``{"num_cpus": 1}``): one Ray
    task per model, Ray already connected; None: in this process.
    """
    out = {name: np.empty((n_models, inputs.n_audit), dtype=np.float32) for name in names}
    if ray_args is None:
        rows = (model_statistics(store, paradigm, m, inputs, names) for m in range(n_models))
    else:
        import ray

        task = ray.remote(**ray_args)(_model_task)
        shared = ray.put(inputs)
        refs = [task.remote(store.uri, paradigm, m, shared, names) for m in range(n_models)]
        rows = (ray.get(ref) for ref in refs)  # in model order; each result is n_audit numbers per statistic
    for model_id, row in enumerate(rows):
        for name in names:
            out[name][model_id] = row[name]
    return out
