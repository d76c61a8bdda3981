import numpy as np
import pytest
import torch

from raypriv.config import DatasetConfig
from raypriv.config import from_dict as config_from_dict
from raypriv.data import load_dataset
from raypriv.driver import run_audit
from raypriv.errors import RayprivError
from raypriv.synth import LabeledSet, ShadowContext, build_options, make_paradigm
from raypriv.synth.coreset import forgetting_counts, herding_order, kcenter_greedy, most_forgotten
from raypriv.training import Normalizer
from tests.conftest import tiny_config_dict

# ------------------------------------------------------------ the algorithms


def test_herding_tracks_the_mean_greedily():
    # Mean 5.1.  Step 1: 5 (nearest).  Step 2: (5+x)/2 ~ 5.1 -> 4.  Step 3: (9+x)/3 -> 6.5.
    # Step 4: (15.5+x)/4 ~ 5.1 wants x = 4.9 -> 0 (off by 4.9), not 10 (off by 5.1), although
    # 10 is nearer the mean: herding balances the running mean, it does not rank by distance.
    features = torch.tensor([[0.0], [10.0], [4.0], [6.5], [5.0]])
    assert herding_order(features, 5).tolist() == [4, 2, 3, 0, 1]
    assert herding_order(features, 2).tolist() == [4, 2]


def test_herding_matches_brute_force_on_random_points():
    features = torch.randn(30, 3, generator=torch.Generator().manual_seed(0))
    target = features.mean(0)
    chosen: list[int] = []
    for _ in range(8):  # each step: try every remaining point, keep the best running mean
        best = min(
            (i for i in range(30) if i not in chosen),
            key=lambda i: float((features[chosen + [i]].mean(0) - target).norm()),
        )
        chosen.append(best)
    assert herding_order(features, 8).tolist() == chosen


def test_kcenter_adds_the_farthest_point_each_step():
    features = torch.tensor([[0.0], [1.0], [2.0], [10.0], [5.0]])
    # From 0: 10 is farthest; then 5 (5 from both centres); then 2 (2 from 0) over 1.
    assert kcenter_greedy(features, 4, first=0).tolist() == [0, 3, 4, 2]
    points = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0], [1.0, 0.0]])  # a duplicate of the first centre
    assert kcenter_greedy(points, 4, first=0).tolist() == [0, 2, 3, 1]


def test_forgetting_counts_correct_to_incorrect_transitions():
    correct = torch.tensor(
        [  # rows: epochs; columns: samples.  -1: not presented in that epoch.
            [1, 1, 0, 0, 1, 0],
            [1, 0, 0, 1, -1, 1],
            [1, 1, 0, 1, 0, -1],
            [1, 0, 0, 0, 1, 1],
        ],
        dtype=torch.int8,
    )
    counts = forgetting_counts(correct)
    assert counts[:2].tolist() == [0, 2] and counts[3:].tolist() == [1, 1, 0]
    assert torch.isinf(counts[2])  # never learned: the most forgettable
    rng = np.random.default_rng(0)
    top = most_forgotten(counts, 4, rng).tolist()
    assert top[:2] == [2, 1] and sorted(top[2:]) == [3, 4]


# ------------------------------------------------------- the paradigm on data


@pytest.fixture(scope="module")
def digits():
    data = load_dataset(DatasetConfig())
    rng = np.random.default_rng(0)
    index = rng.permutation(len(data.y_train))[:300]
    x = torch.tensor(data.x_train[index])
    y = torch.tensor(data.y_train[index])
    return LabeledSet(x, y), Normalizer.fit(data.x_train)


def _synthesize(tmp_path, private, normalizer, model_id=0, batch_size=256, **options):
    overrides = {f"paradigm_options.coreset.{k}": v for k, v in options.items()}
    overrides["train.batch_size"] = batch_size
    config = config_from_dict(tiny_config_dict(tmp_path / "run", paradigms=["coreset"], **overrides))
    context = ShadowContext(config, "coreset", model_id, 10, (1, 8, 8), normalizer, torch.device("cpu"))
    return make_paradigm(config, "coreset").synthesize(private, context), context


def _positions(private: LabeledSet, selected: LabeledSet) -> list[int]:
    """Where each selected sample sits in the private set (it must be there, with its label)."""
    flat = private.x.reshape(len(private), -1)
    positions = []
    for x, y in zip(selected.x.reshape(len(selected), -1), selected.y, strict=True):
        matches = torch.nonzero((flat == x).all(1) & (private.y == y)).flatten()
        assert len(matches) >= 1, "a selected sample is not a private sample"
        positions.append(int(matches[0]))
    return positions


@pytest.mark.parametrize("method", ["random", "herding", "kcenter", "forgetting"])
def test_selection_is_a_per_class_subset_of_the_private_set(tmp_path, digits, method):
    private, normalizer = digits
    selected, _ = _synthesize(tmp_path, private, normalizer, method=method, ipc=3, feature_epochs=2)
    assert selected.x.dtype == private.x.dtype and selected.y.dtype == torch.int64
    assert torch.bincount(selected.y, minlength=10).tolist() == [3] * 10
    assert len(set(_positions(private, selected))) == 30  # no sample twice
    again, _ = _synthesize(tmp_path, private, normalizer, method=method, ipc=3, feature_epochs=2)
    assert torch.equal(again.x, selected.x) and torch.equal(again.y, selected.y)  # seeded


def test_random_depends_on_the_model_id(tmp_path, digits):
    private, normalizer = digits
    a, _ = _synthesize(tmp_path, private, normalizer, model_id=0, method="random", ipc=5)
    b, _ = _synthesize(tmp_path, private, normalizer, model_id=1, method="random", ipc=5)
    assert not torch.equal(a.x, b.x)


def test_forgetting_picks_mislabeled_samples(tmp_path, digits):
    # Samples whose label is wrong are never learned, or learned and forgotten again: they
    # should fill the selection (about 3 per class; random would pick about 20 * 30/300 = 2).
    private, normalizer = digits
    y = private.y.clone()
    flipped = torch.arange(0, 300, 10)  # 30 samples, about 3 per class
    y[flipped] = (y[flipped] + 1) % 10
    noisy = LabeledSet(private.x, y)
    selected, context = _synthesize(
        tmp_path, noisy, normalizer, method="forgetting", ipc=2, feature_epochs=10, batch_size=32
    )
    picked = set(_positions(noisy, selected))
    assert len(picked & set(flipped.tolist())) >= 14
    assert context.info["never_learned"] >= 10


def test_too_large_a_budget_names_the_class_and_the_fix(tmp_path, digits):
    private, normalizer = digits
    smallest = int(torch.bincount(private.y).min())
    with pytest.raises(RayprivError, match=rf"ipc={smallest + 1}: class \d+ has only \d+ samples.*ipc <= {smallest}"):
        _synthesize(tmp_path, private, normalizer, method="random", ipc=smallest + 1)


@pytest.mark.parametrize(
    "field, value", [("ipc", 0), ("feature_epochs", 0), ("train_epochs", 0), ("method", "gradmatch")]
)
def test_bad_options_name_the_field(field, value):
    with pytest.raises(RayprivError, match=f"paradigm_options.coreset.{field}"):
        build_options("coreset", {field: value})


@pytest.mark.slow
def test_tiny_audit_end_to_end(tmp_path):
    raw = tiny_config_dict(
        tmp_path / "run",
        paradigms=["coreset"],
        **{
            "paradigm_options.coreset.ipc": 4,
            "paradigm_options.coreset.feature_epochs": 2,
            "paradigm_options.coreset.train_epochs": 20,
        },
    )
    result = run_audit(config_from_dict(raw), use_ray=False, show_progress=False)
    models = result.models
    assert len(models) == 8 and (models.synthetic_size == 40).all()
    saved = np.load(tmp_path / "run" / "synthetic" / "coreset" / "model-000000.npz")
    assert saved["x"].shape == (40, 1, 8, 8) and saved["x"].dtype == np.uint8
    assert np.bincount(saved["y"], minlength=10).tolist() == [4] * 10
    assert "lira_online" in result.metrics_json["coreset"]
