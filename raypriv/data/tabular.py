"""Tabular datasets: ``breast_cancer`` and ``wine`` (embedded in scikit-learn), ``adult``, and a user's ``csv`` or ``parquet``.

Tabular sets are float32 features (N, D) and int64 labels.  Categorical
columns are one-hot encoded here (:func:`encode_table`); standardisation is
left to :class:`raypriv.training.Normalizer`, fitted on the training pool
like for images.  ``adult`` comes from OpenML or a CSV; a user's table names
its label column (``dataset.label_column``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from raypriv.config import DatasetConfig
from raypriv.data.dataset import Dataset, split_off_test
from raypriv.errors import RayprivError


def load_breast_cancer_dataset(config: DatasetConfig) -> Dataset:
    """scikit-learn's embedded Wisconsin breast cancer set (569 rows, 30 features, 2 classes)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return split_off_test("breast_cancer", data.data.astype(np.float32), data.target, config.test_fraction, 2)


def load_wine_dataset(config: DatasetConfig) -> Dataset:
    """scikit-learn's embedded wine recognition set (178 rows, 13 features, 3 classes)."""
    from sklearn.datasets import load_wine

    data = load_wine()
    return split_off_test("wine", data.data.astype(np.float32), data.target, config.test_fraction, 3)


# A categorical feature with more levels than this is almost surely an identifier or free
# text; one-hot encoding it would add a column per row and carry nothing a model can use.
MAX_CATEGORIES = 200


def _encode_labels(values, name: str, column: str) -> tuple[np.ndarray, list]:
    """Class ids 0..K-1 for a label column, and the class each id stands for.

    Class names (strings, booleans) and integer ids map to ids in sorted order;
    floats are accepted only when every value is a whole number (``1.0``,
    as CSV readers make of an integer column with a gap).  A continuous target,
    missing labels, or a column with a class per row are refused: raypriv
    audits classifiers.
    """
    import pandas as pd

    series = pd.Series(values)
    where = f"dataset {name}: label column {column!r}"
    missing = int(series.isna().sum())
    if missing:
        raise RayprivError(f"{where} has {missing} rows without a label; drop or fill them before auditing")
    if pd.api.types.is_bool_dtype(series):
        series = series.astype(np.int64)
    elif pd.api.types.is_float_dtype(series):
        as_float = series.to_numpy(dtype=np.float64)
        if not np.all(np.isfinite(as_float)) or not np.all(as_float == np.round(as_float)):
            example = float(next((v for v in as_float if not (np.isfinite(v) and v == round(v))), as_float[0]))
            raise RayprivError(
                f"{where} holds continuous float values (e.g. {example:g}), not classes; raypriv audits "
                "classifiers: give a column of class ids or class names, or bin the target into classes first"
            )
        series = series.astype(np.int64)
    elif pd.api.types.is_integer_dtype(series):
        pass
    elif (pd.api.types.is_object_dtype(series) or isinstance(series.dtype, pd.CategoricalDtype)
          or pd.api.types.is_string_dtype(series)):
        kinds = {type(v) for v in series}
        if not kinds <= {str}:
            raise RayprivError(
                f"{where} mixes value types {sorted(k.__name__ for k in kinds)}; give one kind of class label "
                "(all class names or all integer class ids)"
            )
        series = series.astype(str).str.strip()
    else:
        raise RayprivError(
            f"{where} has dtype {series.dtype}, which cannot be read as classes; give integer class ids or "
            "class names"
        )
    classes, ids = np.unique(series.to_numpy(), return_inverse=True)
    if len(classes) < 2:
        raise RayprivError(f"{where} holds a single class ({classes[0]}); a classifier needs at least 2")
    counts = np.bincount(ids)
    if len(classes) > len(series) // 2 or counts.min() < 2:
        rare = str(classes[int(counts.argmin())])
        raise RayprivError(
            f"{where} has {len(classes)} distinct values in {len(series)} rows and class {rare!r} occurs "
            f"{counts.min()} time(s): it does not look like a class label (an identifier, free text or a "
            "continuous value?). Choose the column holding the class, with at least 2 rows per class"
        )
    return ids.astype(np.int64), [c.item() if hasattr(c, "item") else c for c in classes]


def encode_table(frame, label_column: str, name: str) -> tuple[np.ndarray, np.ndarray, list[str], list]:
    """Split a pandas table into float32 features, int64 class ids, feature names and class names.

    Numeric and boolean columns are kept as they are; text and categorical
    columns are one-hot encoded (one column per level, levels sorted, a
    missing value its own level ``<missing>``).  Missing numbers are an error:
    imputing them would be a modelling choice raypriv should not make silently.
    """
    import pandas as pd

    if label_column not in frame.columns:
        raise RayprivError(
            f"dataset {name}: there is no label column {label_column!r}; the table has columns "
            f"{list(map(str, frame.columns))[:30]}. Set dataset.label_column to one of them"
        )
    y, classes = _encode_labels(frame[label_column], name, label_column)
    blocks, names = [], []
    for column in frame.columns:
        if column == label_column:
            continue
        values = frame[column]
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            missing = int(values.isna().sum())
            if missing:
                raise RayprivError(
                    f"dataset {name}: feature column {column!r} has {missing} missing values; fill or drop them "
                    "before auditing"
                )
            blocks.append(values.to_numpy(dtype=np.float32)[:, None])
            names.append(str(column))
            continue
        if not (pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values)
                or isinstance(values.dtype, pd.CategoricalDtype)):
            raise RayprivError(
                f"dataset {name}: feature column {column!r} has dtype {values.dtype}, which is neither numeric nor "
                "categorical; convert it (e.g. a date to a number) or drop it"
            )
        levels = values.astype(object).where(values.notna(), "<missing>").astype(str).str.strip()
        categories = np.unique(levels.to_numpy())
        if len(categories) > MAX_CATEGORIES:
            raise RayprivError(
                f"dataset {name}: categorical column {column!r} has {len(categories)} distinct values (more than "
                f"{MAX_CATEGORIES}); it looks like an identifier or free text. Drop it or encode it numerically"
            )
        blocks.append((levels.to_numpy()[:, None] == categories[None, :]).astype(np.float32))
        names += [f"{column}={c}" for c in categories]
    if not blocks:
        raise RayprivError(f"dataset {name}: the table has no feature columns besides the label {label_column!r}")
    return np.ascontiguousarray(np.concatenate(blocks, axis=1)), y, names, classes


def _tabular_dataset(name: str, x: np.ndarray, y: np.ndarray, test_fraction: float) -> Dataset:
    """Split off a test set and drop the features constant on the training pool.

    A constant column carries nothing to learn, and its standard deviation is
    zero: the Normalizer would blow a test row holding a rare level (present
    only in the test split) up to ~1e6.
    """
    dataset = split_off_test(name, x, y, test_fraction, int(y.max() + 1))
    varying = dataset.x_train.min(axis=0) < dataset.x_train.max(axis=0)
    if not varying.all():
        dataset = Dataset(name, dataset.x_train[:, varying], dataset.y_train, dataset.x_test[:, varying],
                          dataset.y_test, dataset.num_classes)
    return dataset


def _read_table(path: Path, kind: str, name: str):
    import pandas as pd

    if not path.is_file():
        raise RayprivError(f"dataset {name}: file {path} does not exist; set dataset.path to your .{kind} file")
    try:
        return pd.read_csv(path, skipinitialspace=True) if kind == "csv" else pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user problem
        raise RayprivError(f"dataset {name}: cannot read {path} as {kind} ({exc})") from None


def load_table_dataset(config: DatasetConfig) -> Dataset:
    """A user's table (``csv`` or ``parquet`` at ``dataset.path``) with the class in ``dataset.label_column``.

    Every other column is a feature (see :func:`encode_table`); a test set is
    held out with ``dataset.test_fraction``, stratified by class.
    """
    if not config.path:
        raise RayprivError(f"dataset {config.name}: set dataset.path to the .{config.name} file")
    if not config.label_column:
        raise RayprivError(f"dataset {config.name}: set dataset.label_column to the column holding the class")
    path = Path(os.path.expanduser(config.path))
    frame = _read_table(path, config.name, config.name)
    if len(frame) < 4:
        raise RayprivError(f"dataset {config.name}: {path} has {len(frame)} rows; an audit needs many more")
    x, y, _, _ = encode_table(frame, config.label_column, config.name)
    return _tabular_dataset(config.name, x, y, config.test_fraction)


# The UCI adult columns (adult.data has no header); OpenML's "adult" (version 2) uses the same names.
ADULT_COLUMNS = (
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation", "relationship",
    "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country", "class",
)


def _adult_frame(config: DatasetConfig):
    """The adult table as OpenML names it, from ``dataset.path`` (CSV) or OpenML."""
    import pandas as pd

    if config.path:
        path = Path(os.path.expanduser(config.path))
        if not path.is_file():
            raise RayprivError(f"dataset adult: file {path} does not exist; set dataset.path to the adult CSV")
        try:
            frame = pd.read_csv(path, header=None, skipinitialspace=True, na_values=["?"], dtype=str,
                                comment="|")  # adult.test starts with a "|1x3 Cross validator" line
        except Exception as exc:  # noqa: BLE001
            raise RayprivError(f"dataset adult: cannot read {path} as CSV ({exc})") from None
        first = [str(v).strip().lower().replace(".", "-").replace("_", "-") for v in frame.iloc[0]]
        if "age" in first:  # a header row (OpenML/Kaggle exports; Kaggle's target is "income")
            frame = frame.iloc[1:].reset_index(drop=True)
            frame.columns = ["class" if c == "income" else c for c in first]
        elif frame.shape[1] == len(ADULT_COLUMNS):
            frame.columns = list(ADULT_COLUMNS)
        else:
            raise RayprivError(
                f"dataset adult: {path} has {frame.shape[1]} columns and no header; expected the "
                f"{len(ADULT_COLUMNS)} UCI adult columns {list(ADULT_COLUMNS)}"
            )
        absent = [c for c in ADULT_COLUMNS if c not in frame.columns]
        if absent:
            raise RayprivError(f"dataset adult: {path} lacks the adult columns {absent}")
        frame = frame[list(ADULT_COLUMNS)]
        numeric = ["age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"]
        for column in numeric:
            converted = pd.to_numeric(frame[column], errors="coerce")
            bad = frame[column][converted.isna() & frame[column].notna()]
            if len(bad):
                raise RayprivError(f"dataset adult: column {column!r} holds non-numbers, e.g. {bad.iloc[0]!r}")
            frame[column] = converted
        return frame
    if not config.download:
        raise RayprivError(
            "dataset adult: set dataset.path to a CSV of the adult data (UCI adult.data, or an export with a "
            "header), or dataset.download: true to fetch it from OpenML (cached under dataset.root)"
        )
    from sklearn.datasets import fetch_openml

    try:
        bunch = fetch_openml("adult", version=2, as_frame=True, data_home=os.path.expanduser(config.root))
    except Exception as exc:  # noqa: BLE001 - network, cache and parse errors alike
        raise RayprivError(
            f"dataset adult: could not fetch it from OpenML ({exc}); set dataset.path to a local CSV instead"
        ) from None
    frame = bunch.frame.copy()
    frame.columns = [str(c) for c in frame.columns]
    return frame


def load_adult_dataset(config: DatasetConfig) -> Dataset:
    """UCI Adult census income (48,842 rows; >50K a year or not), from OpenML or a CSV.

    ``fnlwgt`` (a census sampling weight, not a property of the person) is
    dropped; the 8 categorical columns are one-hot encoded, ``?`` being its
    own ``<missing>`` level.  Label: 1 for ``>50K``, 0 for ``<=50K`` (the
    trailing ``.`` of ``adult.test`` is ignored).
    """
    frame = _adult_frame(config).drop(columns=["fnlwgt"])
    label = frame["class"].astype(str).str.strip().str.rstrip(".")
    unknown = sorted(set(label) - {"<=50K", ">50K"})
    if unknown:
        raise RayprivError(f"dataset adult: the class column holds {unknown[:5]}; expected '<=50K' and '>50K'")
    frame = frame.assign(**{"class": (label == ">50K").astype(np.int64)})
    x, y, _, _ = encode_table(frame, "class", "adult")
    return _tabular_dataset("adult", x, y, config.test_fraction)
