"""Datasets, the audit split and the membership matrix.

Every dataset is loaded into a :class:`Dataset` of NumPy arrays: images as
``uint8`` of shape ``(N, C, H, W)``, tabular features as ``float32`` of shape
``(N, D)``, labels as ``int64``.  The registry :data:`DATASETS` maps a config
name to its loader.

The audit protocol (Carlini et al. 2022; "Does Training with Synthetic Data
Truly Protect Privacy?", ICLR 2025):

* ``n_audit`` samples are drawn from the training pool; with
  ``canary: mislabel`` each gets a fixed wrong label (the worst case);
* every other training sample is IN for every model;
* ``keep[m, i]`` says whether audit sample ``i`` is IN for model ``m``; each
  column holds exactly ``n_models / 2`` Trues, built as in the reference LiRA
  code (argsort of uniform draws down each column).

Everything here is deterministic from the experiment seed (see
:mod:`raypriv.seeding`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from raypriv.config import DatasetConfig
from raypriv.errors import RayprivError
from raypriv.seeding import numpy_rng

# The train/test split of datasets without an official one is a property of
# the dataset, not of the experiment, so runs with different seeds share it.
_DATASET_SPLIT_SEED = 20_250_401


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def is_image(self) -> bool:
        return self.x_train.ndim == 4

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def __post_init__(self) -> None:
        self.x_train, self.x_test = _standard_layout(self.x_train), _standard_layout(self.x_test)
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if len(x) != len(y):
                raise RayprivError(f"dataset {self.name}: x_{split} has {len(x)} rows but y_{split} has {len(y)}")
            if x.ndim not in (2, 4):
                raise RayprivError(
                    f"dataset {self.name}: x_{split} has shape {x.shape}; expected (N, C, H, W) images "
                    "or (N, D) tabular features"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise RayprivError(
                f"dataset {self.name}: train inputs have shape {self.x_train.shape[1:]} but test inputs "
                f"have {self.x_test.shape[1:]}"
            )
        labels = np.concatenate([self.y_train, self.y_test])
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise RayprivError(
                f"dataset {self.name}: labels must lie in 0..{self.num_classes - 1}, found "
                f"{labels.min()}..{labels.max()}"
            )


def _standard_layout(array: np.ndarray) -> np.ndarray:
    """``array`` with plain C strides, copying only if needed.

    Size-1 axes may carry any stride: ``images[:, None]`` gives a 1-channel
    batch strides that PyTorch reads as channels_last and convolves with other
    kernels (other rounding) than the same values with C strides.  Ray's
    serializer normalises strides, so without this a model trained on a Ray
    actor would differ from the same model trained in-process.
    """
    standard, step = [], array.itemsize
    for size in reversed(array.shape):
        standard.append(step)
        step *= size
    if array.flags.c_contiguous and tuple(reversed(standard)) == array.strides:
        return array
    return np.array(array, order="C", copy=True)


def _split_off_test(name: str, x: np.ndarray, y: np.ndarray, test_fraction: float, num_classes: int) -> Dataset:
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=_DATASET_SPLIT_SEED, stratify=y
    )
    return Dataset(name, x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64), num_classes)


def load_digits_dataset(config: DatasetConfig) -> Dataset:
    """scikit-learn's embedded 8x8 digits (1,797 images, 10 classes)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16; store them as 0..255 bytes like every other image set.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    return _split_off_test("digits", images, digits.target, config.test_fraction, 10)


def _torchvision_loader(class_name: str, expected_files: str) -> Callable[[DatasetConfig], Dataset]:
    def load(config: DatasetConfig) -> Dataset:
        import torchvision.datasets as tvd

        cls = getattr(tvd, class_name)
        root = os.path.expanduser(config.root)
        try:
            if class_name == "SVHN":
                train = cls(root, split="train", download=config.download)
                test = cls(root, split="test", download=config.download)
            else:
                train = cls(root, train=True, download=config.download)
                test = cls(root, train=False, download=config.download)
        except RuntimeError as exc:
            hint = (
                f"set dataset.download: true on a machine with network access, or point dataset.root at a "
                f"folder holding {expected_files}"
            )
            raise RayprivError(f"dataset {config.name}: could not load it from {root} ({exc}); {hint}") from None
        x_train, y_train = _torchvision_arrays(train)
        x_test, y_test = _torchvision_arrays(test)
        num_classes = int(max(y_train.max(), y_test.max()) + 1)
        return Dataset(config.name, x_train, y_train, x_test, y_test, num_classes)

    return load


def _torchvision_arrays(ds) -> tuple[np.ndarray, np.ndarray]:
    """Pull (uint8 NCHW images, int64 labels) out of a torchvision dataset object."""
    data = np.asarray(ds.data)
    labels = np.asarray(getattr(ds, "targets", None) if hasattr(ds, "targets") else ds.labels)
    if data.ndim == 3:  # MNIST-style (N, H, W)
        data = data[:, None]
    elif data.shape[-1] == 3:  # CIFAR-style (N, H, W, C)
        data = data.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(data, dtype=np.uint8), labels.astype(np.int64)


def load_npz_dataset(config: DatasetConfig) -> Dataset:
    """A user's own arrays: ``x_train``, ``y_train`` and optionally ``x_test``, ``y_test``.

    Images may be ``(N, H, W)``, ``(N, C, H, W)`` (uint8 0..255, or floats in
    0..1); 2-D arrays are tabular features.  Without a test split one is held
    out with ``dataset.test_fraction``.
    """
    path = Path(os.path.expanduser(config.path or ""))
    if not path.is_file():
        raise RayprivError(f"dataset npz: file {path} does not exist; set dataset.path to your .npz file")
    try:
        arrays = dict(np.load(path, allow_pickle=False))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user problem
        raise RayprivError(f"dataset npz: cannot read {path} as .npz ({exc}); save it with numpy.savez") from None
    missing = [k for k in ("x_train", "y_train") if k not in arrays]
    if missing:
        raise RayprivError(f"dataset npz: {path} lacks {missing}; it must hold x_train and y_train (x_test, y_test optional)")
    has_test = "x_test" in arrays and "y_test" in arrays

    def images(x: np.ndarray) -> np.ndarray:
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim == 4 and x.dtype != np.uint8:
            x = np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
        if x.ndim == 2:
            x = x.astype(np.float32)
        return x

    def labels(y: np.ndarray, key: str) -> np.ndarray:
        if not np.issubdtype(y.dtype, np.integer):
            raise RayprivError(f"dataset npz: {key} must hold integer class labels 0..K-1, found dtype {y.dtype}")
        return y.astype(np.int64)

    x_train, y_train = images(arrays["x_train"]), labels(arrays["y_train"], "y_train")
    num_classes = int(y_train.max() + 1)
    if not has_test:
        return _split_off_test("npz", x_train, y_train, config.test_fraction, num_classes)
    x_test, y_test = images(arrays["x_test"]), labels(arrays["y_test"], "y_test")
    num_classes = int(max(num_classes, y_test.max() + 1))
    return Dataset("npz", x_train, y_train, x_test, y_test, num_classes)


DATASETS: dict[str, Callable[[DatasetConfig], Dataset]] = {
    "digits": load_digits_dataset,
    "cifar10": _torchvision_loader("CIFAR10", "cifar-10-batches-py/"),
    "cifar100": _torchvision_loader("CIFAR100", "cifar-100-python/"),
    "mnist": _torchvision_loader("MNIST", "MNIST/raw/"),
    "fashionmnist": _torchvision_loader("FashionMNIST", "FashionMNIST/raw/"),
    "svhn": _torchvision_loader("SVHN", "train_32x32.mat and test_32x32.mat"),
    "npz": load_npz_dataset,
}


def load_dataset(config: DatasetConfig) -> Dataset:
    """Load the dataset a config names."""
    if config.name not in DATASETS:
        raise RayprivError(f"dataset {config.name!r} is not known; choose one of {sorted(DATASETS)}")
    return DATASETS[config.name](config)


# ------------------------------------------------------------------ audit split


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


def make_audit_split(dataset: Dataset, n_audit: int, canary: str, n_models: int, seed: int) -> AuditSplit:
    """Draw the audit samples, their canary labels and the keep matrix."""
    n_pool = len(dataset.y_train)
    if n_audit > n_pool:
        raise RayprivError(
            f"audit.n_audit={n_audit} is larger than the training pool of {dataset.name} ({n_pool} samples); "
            f"choose n_audit <= {n_pool}"
        )
    audit_index = np.sort(numpy_rng(seed, "audit").choice(n_pool, size=n_audit, replace=False)).astype(np.int64)
    true_labels = dataset.y_train[audit_index].astype(np.int64)
    labels = dataset.y_train.astype(np.int64).copy()
    if canary == "mislabel":
        if dataset.num_classes < 2:
            raise RayprivError("audit.canary=mislabel needs at least 2 classes")
        shift = numpy_rng(seed, "canary").integers(1, dataset.num_classes, size=n_audit)
        labels[audit_index] = (true_labels + shift) % dataset.num_classes
    elif canary != "none":
        raise RayprivError(f"audit.canary={canary!r} is not known; choose 'none' or 'mislabel'")
    return AuditSplit(audit_index, true_labels, labels, balanced_keep(n_models, n_audit, seed))
