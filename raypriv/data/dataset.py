"""The :class:`Dataset` every loader returns, the test share held out of a set without one, and the final checks.

Every dataset is loaded into a :class:`Dataset` of NumPy arrays: images as
``uint8`` of shape ``(N, C, H, W)``, tabular features as ``float32`` of shape
``(N, D)``, labels as ``int64``.  A set without an official test split gets
one from :func:`split_off_test`, the same for every run; :func:`check_dataset`
refuses data no audit can use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raypriv.errors import RayprivError

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


def split_off_test(name: str, x: np.ndarray, y: np.ndarray, test_fraction: float, num_classes: int) -> Dataset:
    """A :class:`Dataset` from ``x``, ``y`` with a stratified ``test_fraction`` held out (a fixed seed: every run the same)."""
    from sklearn.model_selection import train_test_split

    try:
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=test_fraction, random_state=_DATASET_SPLIT_SEED, stratify=y
        )
    except ValueError as exc:  # too few rows, or a class with one row, for a stratified split
        raise RayprivError(
            f"dataset {name}: cannot hold out a stratified test share of {test_fraction} from {len(x)} rows ({exc}); "
            "give more rows (at least 2 per class), or x_test and y_test"
        ) from None
    return Dataset(name, x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64), num_classes)


MIN_TRAIN_ROWS = 10  # below this no shadow model can hold out anything


def check_dataset(dataset: Dataset) -> Dataset:
    """Refuse data no audit can use: non-finite features, too few rows, a single class."""
    for split, x in (("x_train", dataset.x_train), ("x_test", dataset.x_test)):
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).reshape(len(x), -1).any(axis=1).sum())
            raise RayprivError(
                f"dataset {dataset.name}: {split} has {bad} rows with NaN or infinite features; drop or impute them"
            )
    if len(dataset.x_train) < MIN_TRAIN_ROWS or len(dataset.x_test) < 1:
        raise RayprivError(
            f"dataset {dataset.name}: {len(dataset.x_train)} training and {len(dataset.x_test)} test rows; an audit "
            f"needs at least {MIN_TRAIN_ROWS} training rows and 1 test row"
        )
    classes = np.unique(dataset.y_train)
    if len(classes) < 2:
        raise RayprivError(f"dataset {dataset.name}: the training labels hold a single class ({classes[0]}); membership "
                           "of a one-class classifier cannot be audited, give data with at least 2 classes")
    return dataset
