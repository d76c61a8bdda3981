"""The audit split: which samples are audited, their canary labels, and the membership matrix.

The audit protocol (Carlini et al. 2022; "Does Training with Synthetic Data
Truly Protect Privacy?", ICLR 2025):

* ``n_audit`` samples are drawn from the training pool; with
  ``canary: mislabel`` each gets a fixed wrong label (the worst case);
* every other training sample is IN for every model;
* ``n_population`` held-out samples of the *test* split form the population
  set (RMIA's ``z``): no model trains on them, and they keep their own labels;
* ``keep[m, i]`` says whether audit sample ``i`` is IN for model ``m``; each
  column holds exactly ``n_models / 2`` Trues, built as in the reference LiRA
  code (argsort of uniform draws down each column).  An until-decided audit
  (``budget.until: decided``) draws it in balanced blocks of ``budget.round``
  models instead (:func:`block_balanced_keep`), so that every prefix of whole
  rounds, where the audit may stop, is balanced too.

Everything here is deterministic from the experiment seed (see
:mod:`raypriv.seeding`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from raypriv.data import Dataset
from raypriv.errors import RayprivError
from raypriv.seeding import numpy_rng


@dataclass
class AuditSplit:
    """Which pool samples are audited, their audit labels, and who holds them.

    ``audit_index[i]`` is the training-pool index of audit sample ``i`` (its
    ``sample_id``).  ``labels`` is the training-pool label vector with the
    canary labels written in; models train on these labels and the attacks
    score against them.
    """

    audit_index: np.ndarray  # (n_audit,) int64
    true_labels: np.ndarray  # (n_audit,) int64, the dataset's own labels
    labels: np.ndarray  # (n_pool,) int64, with canary labels at audit_index
    keep: np.ndarray  # (n_models, n_audit) bool
    population_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # test-split indices
    population_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def audit_labels(self) -> np.ndarray:
        return self.labels[self.audit_index]

    @property
    def n_models(self) -> int:
        return int(self.keep.shape[0])

    def private_indices(self, model_id: int) -> np.ndarray:
        """Pool indices of model ``model_id``'s private training set."""
        member = np.ones(len(self.labels), dtype=bool)
        member[self.audit_index[~self.keep[model_id]]] = False
        return np.flatnonzero(member)


def balanced_keep(n_models: int, n_audit: int, seed: int) -> np.ndarray:
    """``keep[m, i]``: each audit sample is IN for exactly half the models.

    As in the reference LiRA code: draw uniforms, argsort down each column,
    and mark the rows whose rank is below ``n_models / 2``.
    """
    if n_models % 2:
        raise RayprivError(f"n_models={n_models} must be even for a balanced membership matrix")
    uniform = numpy_rng(seed, "keep").uniform(size=(n_models, n_audit))
    order = uniform.argsort(axis=0)
    return order < n_models // 2


def block_balanced_keep(n_models: int, n_audit: int, seed: int, block: int) -> np.ndarray:
    """``keep[m, i]`` in balanced blocks: in each block of ``block`` consecutive models, every audit sample is IN
    for exactly ``block / 2`` of them.

    Each block is drawn as :func:`balanced_keep` draws a whole matrix, from
    its own stream (``"keep-block"``, keyed by the block's index), so the
    first blocks do not depend on how many follow, and the first ``r·block``
    rows put every sample IN for exactly ``r·block / 2`` models.
    """
    if block < 2 or block % 2:
        raise RayprivError(f"a keep block of {block} models cannot be balanced; give an even round of at least 2")
    if n_models % block:
        raise RayprivError(f"n_models={n_models} is not a whole number of keep blocks of {block} models")
    blocks = [
        numpy_rng(seed, "keep-block", index).uniform(size=(block, n_audit)).argsort(axis=0) < block // 2
        for index in range(n_models // block)
    ]
    return np.concatenate(blocks, axis=0) if blocks else np.zeros((0, n_audit), dtype=bool)


def _draw(seed: int, stream: str, available: int, size: int, field_name: str, where: str) -> np.ndarray:
    """``size`` sorted indices out of ``available``, drawn from ``stream``; too many is a RayprivError."""
    if size > available:
        raise RayprivError(
            f"audit.{field_name}={size} is larger than {where} ({available} samples); choose {field_name} <= {available}"
        )
    return np.sort(numpy_rng(seed, stream).choice(available, size=size, replace=False)).astype(np.int64)


def make_audit_split(dataset: Dataset, n_audit: int, canary: str, n_models: int, seed: int, n_population: int = 0,
                     keep_block: int | None = None) -> AuditSplit:
    """Draw the audit samples, their canary labels, the keep matrix and the population set.

    ``keep_block``: draw the keep matrix in balanced blocks of this many
    models (:func:`block_balanced_keep`, for until-decided audits); None (fixed
    budgets): :func:`balanced_keep`, as every run before blocks existed.
    """
    audit_index = _draw(seed, "audit", len(dataset.y_train), n_audit, "n_audit", f"the training pool of {dataset.name}")
    true_labels = dataset.y_train[audit_index].astype(np.int64)
    labels = dataset.y_train.astype(np.int64).copy()
    if canary == "mislabel":
        if dataset.num_classes < 2:
            raise RayprivError("audit.canary=mislabel needs at least 2 classes")
        shift = numpy_rng(seed, "canary").integers(1, dataset.num_classes, size=n_audit)
        labels[audit_index] = (true_labels + shift) % dataset.num_classes
    elif canary != "none":
        raise RayprivError(f"audit.canary={canary!r} is not known; choose 'none' or 'mislabel'")
    population = _draw(seed, "population", len(dataset.y_test), n_population, "n_population", f"the test split of {dataset.name}")
    keep = (balanced_keep(n_models, n_audit, seed) if keep_block is None
            else block_balanced_keep(n_models, n_audit, seed, keep_block))
    return AuditSplit(audit_index, true_labels, labels, keep, population,
                      dataset.y_test[population].astype(np.int64))


def keep_digest(keep: np.ndarray) -> str:
    """sha256 of a membership matrix (shape and values), recorded in run.json to detect a corrupt keep.npy."""
    keep = np.ascontiguousarray(keep, dtype=bool)
    return hashlib.sha256(f"{keep.shape}".encode() + keep.tobytes()).hexdigest()
