"""Image datasets: scikit-learn's 8x8 digits, the torchvision sets, and a user's own arrays (``npz``).

Images are stored as ``uint8`` of shape ``(N, C, H, W)``, 0..255.
torchvision is imported by a loader when it runs, never by importing
:mod:`raypriv.data`: its datasets are read from ``dataset.root`` (and
downloaded there with ``dataset.download: true``).  An ``npz`` holds arrays
(``x_train``, ``y_train``, optionally ``x_test``, ``y_test``); 2-D arrays are
tabular features rather than images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from raypriv.config import DatasetConfig
from raypriv.data.dataset import Dataset, split_off_test
from raypriv.errors import RayprivError


def load_digits_dataset(config: DatasetConfig) -> Dataset:
    """scikit-learn's embedded 8x8 digits (1,797 images, 10 classes)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16; store them as 0..255 bytes like every other image set.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    return split_off_test("digits", images, digits.target, config.test_fraction, 10)


def torchvision_loader(class_name: str, expected_files: str) -> Callable[[DatasetConfig], Dataset]:
    """The loader of torchvision's ``class_name`` set from ``dataset.root`` (``expected_files``: what a user must put there)."""
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

    for key in [k for k in ("x_train", "x_test") if k in arrays and arrays[k].dtype.kind == "f"]:
        if not np.isfinite(arrays[key]).all():  # checked here: images() would turn NaN into a pixel value
            raise RayprivError(f"dataset npz: {key} in {path} holds NaN or infinite values; drop or impute them")
    x_train, y_train = images(arrays["x_train"]), labels(arrays["y_train"], "y_train")
    num_classes = int(y_train.max() + 1)
    if not has_test:
        return split_off_test("npz", x_train, y_train, config.test_fraction, num_classes)
    x_test, y_test = images(arrays["x_test"]), labels(arrays["y_test"], "y_test")
    num_classes = int(max(num_classes, y_test.max() + 1))
    return Dataset("npz", x_train, y_train, x_test, y_test, num_classes)
