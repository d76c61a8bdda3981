import pickle

import numpy as np
import pytest

from raypriv.config import DatasetConfig
from raypriv.data import load_dataset
from raypriv.errors import RayprivError
from raypriv.split import balanced_keep, make_audit_split


def test_digits_is_embedded_and_split():
    data = load_dataset(DatasetConfig())
    assert data.x_train.dtype == np.uint8 and data.x_train.shape[1:] == (1, 8, 8)
    assert len(data.x_train) + len(data.x_test) == 1797
    assert data.num_classes == 10 and data.x_train.max() == 255


@pytest.mark.parametrize("n_models", [2, 8, 64])
def test_keep_matrix_is_balanced_and_deterministic(n_models):
    keep = balanced_keep(n_models, 300, seed=5)
    assert keep.shape == (n_models, 300)
    assert (keep.sum(axis=0) == n_models // 2).all()
    np.testing.assert_array_equal(keep, balanced_keep(n_models, 300, seed=5))
    assert not np.array_equal(keep, balanced_keep(n_models, 300, seed=6))


def test_audit_split_mislabels_and_builds_private_sets():
    data = load_dataset(DatasetConfig())
    split = make_audit_split(data, n_audit=100, canary="mislabel", n_models=8, seed=1)
    assert len(np.unique(split.audit_index)) == 100
    assert (split.audit_labels != split.true_labels).all()
    assert (split.audit_labels >= 0).all() and (split.audit_labels < 10).all()
    others = np.setdiff1d(np.arange(len(data.y_train)), split.audit_index)
    np.testing.assert_array_equal(split.labels[others], data.y_train[others])
    for model_id in range(8):
        private = split.private_indices(model_id)
        assert np.isin(others, private).all()  # everything else is always IN
        audit_in = np.isin(split.audit_index, private)
        np.testing.assert_array_equal(audit_in, split.keep[model_id])
    again = make_audit_split(data, n_audit=100, canary="mislabel", n_models=8, seed=1)
    np.testing.assert_array_equal(again.labels, split.labels)
    clean = make_audit_split(data, n_audit=100, canary="none", n_models=8, seed=1)
    np.testing.assert_array_equal(clean.audit_labels, clean.true_labels)


def test_n_audit_larger_than_pool_is_refused():
    data = load_dataset(DatasetConfig())
    with pytest.raises(RayprivError, match=r"audit.n_audit=5000 is larger than the training pool of digits \(1437 samples\)"):
        make_audit_split(data, 5000, "mislabel", 8, 0)


def test_npz_dataset(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=rng.integers(0, 255, (50, 3, 4, 4), dtype=np.uint8), y_train=rng.integers(0, 3, 50))
    data = load_dataset(DatasetConfig(name="npz", path=str(path)))
    assert data.x_train.shape[1:] == (3, 4, 4) and len(data.x_train) + len(data.x_test) == 50
    np.savez(path, x_train=rng.normal(size=(20, 5)), y_train=rng.normal(size=20))
    with pytest.raises(RayprivError, match="y_train must hold integer class labels"):
        load_dataset(DatasetConfig(name="npz", path=str(path)))
    np.savez(path, x=np.zeros(3))
    with pytest.raises(RayprivError, match="lacks"):
        load_dataset(DatasetConfig(name="npz", path=str(path)))
    with pytest.raises(RayprivError, match="does not exist"):
        load_dataset(DatasetConfig(name="npz", path=str(tmp_path / "missing.npz")))


def _write_cifar10(root, n_per_batch=6):
    """A tiny archive in the on-disk format of cifar-10-batches-py."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            "data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            "labels": list(rng.integers(0, 10, n_per_batch)),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return folder


def test_cifar10_loader_reads_the_torchvision_format(tmp_path, monkeypatch):
    import torchvision.datasets.cifar

    folder = _write_cifar10(tmp_path)
    # torchvision checks the official files' md5 sums, which a tiny archive cannot match.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    data = load_dataset(DatasetConfig(name="cifar10", root=str(tmp_path)))
    assert data.x_train.shape == (30, 3, 32, 32) and data.x_test.shape == (6, 3, 32, 32)
    assert data.x_train.dtype == np.uint8
    with open(folder / "data_batch_1", "rb") as f:
        first = pickle.load(f)["data"][0].reshape(3, 32, 32)
    np.testing.assert_array_equal(data.x_train[0], first)  # CHW, not HWC


def _write_idx(path, array):
    dims = array.shape
    magic = {1: 0x00000801, 3: 0x00000803}[len(dims)]
    with open(path, "wb") as f:
        f.write(magic.to_bytes(4, "big"))
        for d in dims:
            f.write(int(d).to_bytes(4, "big"))
        f.write(array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashionmnist", "FashionMNIST")])
def test_mnist_style_loaders_read_idx_files(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", 12), ("t10k", 4)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    data = load_dataset(DatasetConfig(name=name, root=str(tmp_path)))
    assert data.x_train.shape == (12, 1, 28, 28) and data.y_test.tolist() == [0, 1, 2, 3]


def test_missing_torchvision_files_say_how_to_fix(tmp_path):
    with pytest.raises(RayprivError, match="set dataset.download: true"):
        load_dataset(DatasetConfig(name="cifar10", root=str(tmp_path)))


def test_images_get_plain_c_strides():
    # A 1-channel batch made with [:, None] has strides PyTorch reads as channels_last.
    data = load_dataset(DatasetConfig())
    assert data.x_train.strides == (64, 64, 8, 1)
    import pickle as p

    np.testing.assert_array_equal(p.loads(p.dumps(data)).x_train.strides, data.x_train.strides)
