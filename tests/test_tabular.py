"""Tabular data: the embedded sets, user CSV/Parquet tables, adult's CSV formats, tabular models, and audits."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from raypriv.config import DatasetConfig, ModelConfig
from raypriv.config import from_dict as config_from_dict
from raypriv.data import DATASETS, load_dataset
from raypriv.driver import run_audit
from raypriv.errors import RayprivError
from raypriv.metrics import epsilon_lower_bound_from_scores
from raypriv.models import build_model
from raypriv.split import make_audit_split

LIRA = ["lira_online", "lira_offline", "lira_online_fixed", "lira_offline_fixed"]


@pytest.mark.parametrize("name, rows, features, classes", [("breast_cancer", 569, 30, 2), ("wine", 178, 13, 3)])
def test_embedded_tables_are_float32_features_with_a_held_out_test_set(name, rows, features, classes):
    dataset = load_dataset(DatasetConfig(name=name))
    assert dataset.x_train.dtype == np.float32 and dataset.x_train.shape[1:] == (features,)
    assert not dataset.is_image and dataset.input_shape == (features,)
    assert len(dataset.x_train) + len(dataset.x_test) == rows
    assert len(dataset.x_test) == math.ceil(0.2 * rows)
    assert dataset.num_classes == classes and set(np.unique(dataset.y_test)) == set(range(classes))
    again = load_dataset(DatasetConfig(name=name, test_fraction=0.2))
    np.testing.assert_array_equal(dataset.x_test, again.x_test)  # the split is a property of the dataset
    split = make_audit_split(dataset, 40, "mislabel", 8, seed=0)  # the audit protocol applies unchanged
    assert (split.audit_labels != split.true_labels).all() and (split.keep.sum(0) == 4).all()


def _user_table(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "height": rng.normal(170, 10, n).round(1),
        "colour": rng.choice(["red", "green", "blue"], n),
        "count": rng.integers(0, 5, n),
        "member": rng.random(n) < 0.5,
        "species": rng.choice(["setosa", "virginica"], n),
    })


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_user_table_one_hot_encodes_text_and_maps_class_names_to_ids(tmp_path, kind):
    frame = _user_table()
    path = tmp_path / f"table.{kind}"
    frame.to_csv(path, index=False) if kind == "csv" else frame.to_parquet(path)
    config = config_from_dict({"dataset": {"name": kind, "path": str(path), "label_column": "species"}}).dataset
    dataset = load_dataset(config)
    # height, colour as 3 one-hot columns, count, member (in the order of the file)
    assert dataset.x_train.dtype == np.float32 and dataset.input_shape == (6,)
    assert dataset.num_classes == 2 and len(dataset.x_train) + len(dataset.x_test) == 60
    x = np.concatenate([dataset.x_train, dataset.x_test])
    y = np.concatenate([dataset.y_train, dataset.y_test])
    assert sorted(np.round(x[:, 0], 1)) == sorted(frame.height)
    np.testing.assert_array_equal(x[:, 1:4].sum(1), np.ones(60))  # colour: blue, green, red, one per row
    # Class names map to ids in sorted order: setosa 0, virginica 1.
    assert (y == 1).sum() == (frame.species == "virginica").sum()


def test_integer_labels_with_gaps_and_whole_floats_map_to_consecutive_ids(tmp_path):
    frame = _user_table()
    frame["grade"] = np.where(frame.species == "setosa", 3.0, 7.0)  # whole numbers stored as floats
    path = tmp_path / "t.csv"
    frame.drop(columns=["species"]).to_csv(path, index=False)
    dataset = load_dataset(DatasetConfig(name="csv", path=str(path), label_column="grade"))
    assert dataset.num_classes == 2 and set(np.unique(dataset.y_train)) == {0, 1}


@pytest.mark.parametrize(
    "change, label, message",
    [
        (lambda f: f.assign(score=np.linspace(0.1, 0.9, len(f))), "score", "holds continuous float values (e.g. 0.1"),
        (lambda f: f.assign(note=[f"row {i}" for i in range(len(f))]), "note", "does not look like a class label"),
        (lambda f: f.assign(species="setosa"), "species", "holds a single class"),
        (lambda f: f.assign(species=f.species.where(f.index > 2)), "species", "has 3 rows without a label"),
        (lambda f: f, "genus", "there is no label column 'genus'"),
        (lambda f: f.assign(height=f.height.where(f.index > 0)), "species", "feature column 'height' has 1 missing"),
    ],
)
def test_bad_label_and_feature_columns_are_clear_errors(tmp_path, change, label, message):
    path = tmp_path / "t.csv"
    change(_user_table()).to_csv(path, index=False)
    config = DatasetConfig(name="csv", path=str(path), label_column=label)
    with pytest.raises(RayprivError, match=message.replace("(", r"\(")):
        load_dataset(config)


def test_free_text_feature_columns_and_missing_files_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("raypriv.data.tabular.MAX_CATEGORIES", 10)
    path = tmp_path / "t.csv"
    _user_table().assign(comment=[f"text {i}" for i in range(60)]).to_csv(path, index=False)
    with pytest.raises(RayprivError, match="categorical column 'comment' has 60 distinct values"):
        load_dataset(DatasetConfig(name="csv", path=str(path), label_column="species"))
    with pytest.raises(RayprivError, match="does not exist; set dataset.path to your .parquet file"):
        load_dataset(DatasetConfig(name="parquet", path=str(tmp_path / "nope.parquet"), label_column="y"))


@pytest.mark.parametrize(
    "dataset, message",
    [
        ({"name": "csv", "label_column": "y"}, "dataset.name is 'csv' but dataset.path is not set"),
        ({"name": "parquet", "path": "t.parquet"}, "dataset.label_column is not set"),
        ({"name": "digits", "label_column": "y"}, "it is for csv and parquet tables only"),
    ],
)
def test_config_requires_a_path_and_a_label_column_for_user_tables(dataset, message):
    with pytest.raises(RayprivError, match=message):
        config_from_dict({"dataset": dataset})


# One row a tuple, one line a field group: age, workclass, fnlwgt, education, education-num;
# marital-status, occupation, relationship, race, sex; capital-gain, capital-loss, hours-per-week, native-country, income.
ADULT_ROWS = [
    (
        39, "State-gov", 77516, "Bachelors", 13,
        "Never-married", "Adm-clerical", "Not-in-family", "White", "Male",
        2174, 0, 40, "United-States", "<=50K",
    ),
    (
        50, "Self-emp-not-inc", 83311, "Bachelors", 13,
        "Married-civ-spouse", "Exec-managerial", "Husband", "White", "Male",
        0, 0, 13, "United-States", ">50K",
    ),
    (
        38, "Private", 215646, "HS-grad", 9,
        "Divorced", "Handlers-cleaners", "Not-in-family", "White", "Male",
        0, 0, 40, "United-States", "<=50K",
    ),
    (
        53, "?", 234721, "11th", 7,
        "Married-civ-spouse", "?", "Husband", "Black", "Male",
        0, 0, 40, "United-States", ">50K",
    ),
    (
        28, "Private", 338409, "Bachelors", 13,
        "Married-civ-spouse", "Prof-specialty", "Wife", "Black", "Female",
        0, 0, 40, "Cuba", "<=50K",
    ),
]


def _adult_csv(path, header: bool, test_style: bool = False):
    """Adult rows in the UCI layout (", " separators, "?" for missing), optionally with a header."""
    lines = ["|1x3 Cross validator"] if test_style else []
    if header:  # Kaggle's export: dotted names, target "income"
        lines.append("age,workclass,fnlwgt,education,education.num,marital.status,occupation,relationship,race,sex,"
                     "capital.gain,capital.loss,hours.per.week,native.country,income")
    for i in range(8):
        for row in ADULT_ROWS:
            row = (row[0] + i, *row[1:-1], row[-1] + ("." if test_style else ""))
            lines.append(", ".join(map(str, row)))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("header, test_style", [(False, False), (True, False), (False, True)])
def test_adult_csv_is_one_hot_encoded_with_income_as_the_label(tmp_path, header, test_style):
    path = _adult_csv(tmp_path / "adult.csv", header, test_style)
    dataset = load_dataset(config_from_dict({"dataset": {"name": "adult", "path": str(path)}}).dataset)
    x = np.concatenate([dataset.x_train, dataset.x_test])
    y = np.concatenate([dataset.y_train, dataset.y_test])
    assert x.dtype == np.float32 and len(x) == 40 and dataset.num_classes == 2
    assert y.sum() == 16  # two of the five rows earn >50K
    # fnlwgt is dropped, and so are columns constant on the training pool (capital-loss is always 0 here):
    # age, education-num, capital-gain and hours-per-week stay numeric, the rest are one-hot levels.
    assert not np.isin(x, [77516, 83311]).any()
    numeric = [j for j in range(x.shape[1]) if not set(np.unique(x[:, j])) <= {0.0, 1.0}]
    assert len(numeric) == 4 and x.shape[1] > 12
    assert sorted(np.unique(x[:, numeric[0]]))[:2] == [28, 29]  # age first, as in the file


def test_adult_without_a_path_or_download_says_how_to_get_it(tmp_path):
    with pytest.raises(RayprivError, match="set dataset.path to a CSV of the adult data"):
        load_dataset(DatasetConfig(name="adult"))
    with pytest.raises(RayprivError, match="file .* does not exist"):
        load_dataset(DatasetConfig(name="adult", path=str(tmp_path / "adult.data")))
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(RayprivError, match="has 3 columns and no header"):
        load_dataset(DatasetConfig(name="adult", path=str(bad)))


def test_registry_has_the_tabular_sets():
    assert {"breast_cancer", "wine", "adult", "csv", "parquet"} <= set(DATASETS)


def test_logreg_is_one_linear_layer_and_stacks_with_torch_func():
    model = build_model(ModelConfig(arch="logreg"), (30,), 2)
    assert [type(m).__name__ for m in model.modules()] == ["LogisticRegression", "Linear"]
    assert model(torch.randn(5, 30)).shape == (5, 2)
    mlp = build_model(ModelConfig(arch="mlp", width=16, norm="none"), (30,), 3)
    assert mlp(torch.randn(5, 30)).shape == (5, 3)
    # Plain modules: several copies stack and run under vmap with functional_call.
    for arch in (model, mlp):
        copies = [build_model(ModelConfig(arch="logreg") if arch is model else ModelConfig(arch="mlp", width=16, norm="none"),
                              (30,), 2 if arch is model else 3) for _ in range(3)]
        params, buffers = torch.func.stack_module_state(copies)
        x = torch.randn(4, 30)
        # This iteration's copies and x, bound as defaults (vmap maps over p and b only).
        stacked = torch.vmap(lambda p, b, base=copies[0], x=x: torch.func.functional_call(base, (p, b), (x,)))(params, buffers)
        for i, copy in enumerate(copies):
            torch.testing.assert_close(stacked[i], copy(x))


def test_image_archs_refuse_tabular_inputs():
    with pytest.raises(RayprivError, match="use model.arch: mlp or logreg for tabular data"):
        build_model(ModelConfig(arch="cnn_small"), (30,), 2)


@pytest.mark.slow
def test_a_user_table_audit_runs_end_to_end_with_logreg(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    features = rng.normal(size=(n, 4))
    frame = pd.DataFrame(features, columns=list("abcd")).assign(
        kind=rng.choice(["x", "y"], n), target=np.where(features[:, 0] + features[:, 1] > 0, "yes", "no"))
    path = tmp_path / "data.parquet"
    frame.to_parquet(path)
    config = config_from_dict({
        "out_dir": str(tmp_path / "run"), "n_models": 8,
        "dataset": {"name": "parquet", "path": str(path), "label_column": "target"},
        "audit": {"n_audit": 30}, "model": {"arch": "logreg"}, "train": {"epochs": 20, "batch_size": 32},
    })
    result = run_audit(config, use_ray=False, show_progress=False)
    assert result.metrics_json["real"]["test_acc"] > 0.9  # a linear target
    assert result.models.synthetic_size.eq(result.models.private_size).all()


@pytest.mark.slow
def test_breast_cancer_audit_dp_generators_stay_within_their_accounted_epsilon(tmp_path):
    """real, dpgen-marginals at epsilon 1 and dpgen-llm over one keep matrix: the DP bound holds.

    For an (epsilon, delta)-DP training pipeline every attack has
    TPR <= e^epsilon FPR + delta; the Clopper-Pearson lower bound on epsilon
    from the attack's ROC counts must therefore not exceed the accounted
    epsilon.  The real-data baseline shows the audit has the power to
    measure leakage above that level.
    """
    config = config_from_dict({
        "out_dir": str(tmp_path / "run"), "n_models": 8,
        "paradigms": ["real", "dpgen-marginals@eps1", "dpgen-llm"],
        "paradigm_options": {
            "dpgen-marginals@eps1": {"epsilon": 1.0, "mechanism": "laplace"},
            "dpgen-llm": {"epsilon": 1.0, "groups": 8, "shots": 1, "n_records": 16},
        },
        "dataset": {"name": "breast_cancer"}, "audit": {"n_audit": 60},
        "model": {"arch": "mlp", "width": 64, "norm": "none"},
        "train": {"epochs": 60, "batch_size": 64},
    })
    metrics = run_audit(config, use_ray=False, show_progress=False).metrics_json
    # metrics.json's bound is the all-pairs bound (raypriv.epsilon); recomputed here from scores.parquet, it
    # must show real training's leakage and stay under each DP paradigm's accounted epsilon.
    scores = pd.read_parquet(tmp_path / "run" / "scores.parquet")

    def pair_bound(paradigm, attack):
        rows = scores[scores.paradigm == paradigm]
        return epsilon_lower_bound_from_scores(rows.is_in.to_numpy(), rows[attack].to_numpy())

    assert max(pair_bound("real", a) for a in LIRA) > 1.0  # leakage the audit can see
    for paradigm, delta in (("dpgen-marginals@eps1", 0.0), ("dpgen-llm", 1e-5)):
        entry = metrics[paradigm]
        accounted = entry["info"]["epsilon"]
        assert accounted == pytest.approx(1.0) and entry["info"]["delta"] == pytest.approx(delta)
        assert entry["info"]["noise_multiplier"] > 0
        attacks = [a for a, m in entry.items() if isinstance(m, dict) and "eps_lower_bound" in m]
        assert set(LIRA) <= set(attacks)
        for attack in attacks:
            assert entry[attack]["eps_lower_bound"] <= accounted, (paradigm, attack)
            assert pair_bound(paradigm, attack) <= accounted, (paradigm, attack)
    # Utility on real test data: the marginals generator at epsilon 1 still learns the task.
    assert metrics["dpgen-marginals@eps1"]["test_acc"] > 0.8


def test_label_columns_that_are_not_classes_are_refused_with_the_reason(tmp_path):
    frame = _user_table()
    path = tmp_path / "t.parquet"
    frame.assign(when=pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(60) % 3, unit="D")).to_parquet(path)
    with pytest.raises(RayprivError, match=r"label column 'when' has dtype datetime64.*cannot be read as classes"):
        load_dataset(DatasetConfig(name="parquet", path=str(path), label_column="when"))
    mixed = frame.assign(mixed=[("a" if i % 2 else 1) for i in range(60)])
    from raypriv.data import encode_table

    with pytest.raises(RayprivError, match=r"label column 'mixed' mixes value types \['int', 'str'\]"):
        encode_table(mixed, "mixed", "csv")
