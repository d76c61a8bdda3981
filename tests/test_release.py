"""The release threat model (raypriv.release): statistics against independent implementations, the ground-truth
audits, the DP bound, the bad stored sets, old metrics files, and backend parity.

Ground truth (issue 22): a paradigm that releases its private set unchanged
is found perfectly; one that releases independent samples of the
population is at chance (AUC 0.5 inside its two-way bootstrap interval); a
``coreset@random`` release is found at low FPR for exactly the IN canaries
its stored sets contain, a fraction this test counts from the sets.  The two
plugins are classes of this module, referenced in the config as
``tests.test_release:<Class>``.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import raypriv
from raypriv.config import DatasetConfig
from raypriv.config import from_dict as config_from_dict
from raypriv.data import load_dataset
from raypriv.errors import RayprivError
from raypriv.metrics import bootstrap_roc_metrics, percentile_interval, two_way_bootstrap_weights
from raypriv.release import ReleaseInputs, log_kde, model_statistics, nearest_distances, release_attack_scores
from raypriv.results import AttackMetrics, metrics_from_json, metrics_to_json
from raypriv.run.format import synthetic_path
from raypriv.run.store import RunStore
from raypriv.synth import LabeledSet
from tests.conftest import tiny_config_dict

HERE = "tests.test_release"
PRIVATE = f"{HERE}:ReleasesPrivate"
POPULATION = f"{HERE}:ReleasesPopulation"


class ReleasesPrivate(raypriv.Paradigm):
    """Releases its private set unchanged: every IN audit sample is in the release."""

    name = "test-releases-private"

    def synthesize(self, private, context):
        return LabeledSet(private.x.clone(), private.y.clone())


class ReleasesPopulation(raypriv.Paradigm):
    """Releases 300 samples of the test split (the population), drawn independently of the private set."""

    name = "test-releases-population"

    def synthesize(self, private, context):
        data = load_dataset(DatasetConfig(name="digits"))
        pick = context.rng("population").choice(len(data.y_test), size=300, replace=False)
        return LabeledSet(torch.from_numpy(data.x_test[pick]).to(private.x.device),
                          torch.from_numpy(data.y_test[pick]).to(private.x.device))


# ------------------------------------------------------------------ the statistics, against independent code


def test_nearest_distances_match_scipy_cdist_class_by_class():
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(0)
    queries, records = rng.normal(size=(30, 5)), rng.normal(size=(50, 5))
    q_labels, r_labels = rng.integers(0, 3, 30), rng.integers(0, 2, 50)  # label 2: no record, so all records
    distance, index = nearest_distances(queries, records, q_labels, r_labels)
    full = cdist(queries, records)
    for i in range(30):
        allowed = np.flatnonzero(r_labels == q_labels[i]) if q_labels[i] < 2 else np.arange(50)
        assert distance[i] == pytest.approx(full[i, allowed].min(), rel=1e-12)
        assert index[i] == allowed[full[i, allowed].argmin()]
    # A released copy is at distance 0 exactly (differences, not the |a|^2 + |b|^2 - 2ab expansion).
    assert (nearest_distances(records[:7], records)[0] == 0).all()


def test_log_kde_matches_sklearn_kernel_density():
    from sklearn.neighbors import KernelDensity

    rng = np.random.default_rng(1)
    data, points = rng.normal(size=(80, 4)), rng.normal(size=(20, 4))
    expected = KernelDensity(bandwidth=0.7).fit(data).score_samples(points)
    np.testing.assert_allclose(log_kde(points, data, 0.7), expected, rtol=1e-10)


def test_calibrated_release_attacks_are_the_model_engines_on_the_statistic():
    """release_lira / release_rmia are LiRA online and RMIA (raypriv.attacks.reference, the whole-array versions) on
    the dcr statistic ``s``, RMIA with ``Pr(x|theta) = sigmoid(s)``."""
    from scipy.special import expit

    from raypriv.attacks.reference import lira_attack, rmia_attack

    rng = np.random.default_rng(2)
    keep = np.stack([rng.permutation(np.arange(8) < 4) for _ in range(12)], axis=1)  # (8, 12), balanced columns
    dcr = rng.normal(size=keep.shape).astype(np.float32) + keep
    ours = release_attack_scores({"dcr": dcr}, keep, ["release_lira", "release_rmia", "release_dcr"])
    s = dcr[:, :, None].astype(np.float64)
    np.testing.assert_allclose(ours["release_lira"], lira_attack(s, keep, online=True, fixed_variance=False),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours["release_rmia"], rmia_attack(expit(s), keep), atol=1e-6)
    np.testing.assert_array_equal(ours["release_dcr"], dcr)


# ------------------------------------------------------------------ bad stored sets


@pytest.fixture(scope="module")
def tabular_inputs():
    rng = np.random.default_rng(3)
    audit = rng.normal(size=(10, 6)).astype(np.float32)
    return ReleaseInputs.build(audit, rng.integers(0, 2, 10), rng.normal(size=(40, 6)).astype(np.float32)), audit


@pytest.mark.parametrize("x, y, problem", [
    (np.zeros((5, 7), np.float32), np.zeros(5, np.int64),
     r"has records of shape \(7,\), but the audit samples have shape \(6,\)"),
    (np.full((5, 6), np.nan, np.float32), np.zeros(5, np.int64), r"has 5 record\(s\) with NaN or infinite values"),
    (np.zeros((0, 6), np.float32), np.zeros(0, np.int64), r"is empty \(0 records\)"),
])
def test_a_bad_synthetic_set_is_one_named_error_for_its_model(tmp_path, tabular_inputs, x, y, problem):
    inputs, _ = tabular_inputs
    store = RunStore(str(tmp_path))
    store.write_npz(synthetic_path("coreset", 3), x=x, y=y)
    with pytest.raises(RayprivError, match=rf"model-000003\.npz: the synthetic set of model 3 of coreset {problem}, so "
                                           "no release attack is scored from it; delete it"):
        model_statistics(store, "coreset", 3, inputs, ("dcr", "density"))


def test_soft_labels_are_compared_by_their_argmax(tmp_path, tabular_inputs):
    inputs, audit = tabular_inputs
    store = RunStore(str(tmp_path))
    soft = np.eye(2, dtype=np.float32)[inputs.audit_labels] * 0.8 + 0.1
    store.write_npz(synthetic_path("dfkd", 0), x=audit, y=soft)
    stats = model_statistics(store, "dfkd", 0, inputs, ("dcr",))
    assert stats["dcr"] == pytest.approx(-np.log(1e-6))  # every audit record released with its own label


def test_old_metrics_files_read_as_the_model_threat_model():
    entry = {"auc": 0.6, "balanced_acc": 0.55, "tpr@0.1%fpr": 0.01, "tpr@1%fpr": 0.02, "n_in": 4, "n_out": 4,
             "eps_lower_bound": 0.0}
    assert AttackMetrics.from_json(entry).threat_model == "model"
    release = AttackMetrics.from_json({**entry, "threat_model": "release"})
    assert release.threat_model == "release" and release.to_json()["threat_model"] == "release"
    assert "threat_model" not in AttackMetrics.from_json(entry).to_json()  # model entries keep the old layout
    with pytest.raises(RayprivError, match="threat_model='weights' is not known"):
        AttackMetrics.from_json({**entry, "threat_model": "weights"})


def test_threat_models_config_is_checked():
    from raypriv.run.fingerprints import protocol_hash

    assert config_from_dict({}).audit.threat_models == ["model", "release"]
    # No model depends on it: runs made before it existed keep their hash and are rescored in place.
    assert protocol_hash(config_from_dict({"audit": {"threat_models": ["model"]}})) == protocol_hash(config_from_dict({}))
    with pytest.raises(RayprivError, match=r"audit.threat_models\[1\]='data' is not allowed"):
        config_from_dict({"audit": {"threat_models": ["model", "data"]}})
    with pytest.raises(RayprivError, match="must include 'model'"):
        config_from_dict({"audit": {"threat_models": ["release"]}})


# ------------------------------------------------------------------ the ground-truth audit


@pytest.fixture(scope="module")
def ground_truth(tmp_path_factory):
    """8 shadow pipelines of the two plugins and coreset@random on digits (1 epoch: the release needs no model)."""
    path = tmp_path_factory.mktemp("release") / "run"
    raw = tiny_config_dict(path, paradigms=[PRIVATE, POPULATION, "coreset@random"],
                           paradigm_options={"coreset@random": {"method": "random", "ipc": 10}},
                           train={"epochs": 1, "batch_size": 256})
    run = raypriv.audit(raw, use_ray=False, show_progress=False)
    return path, raw, run


@pytest.mark.slow
def test_a_released_private_set_is_found_perfectly_and_independent_samples_are_at_chance(ground_truth):
    _, _, run = ground_truth
    private = run.results[PRIVATE].attacks
    for name in ("release_dcr", "release_dcr_feature", "release_lira"):
        assert private[name].threat_model == "release"
        assert private[name].tpr["tpr@0.1%fpr"] == 1.0, name
    # DOMIAS's density ratio is a smooth estimate (Scott's bandwidth), not a copy detector: clearly above chance only.
    assert private["release_density"].auc > 0.75
    # RMIA's score is the share of z a sample beats within its target's row: every IN sample beats every OUT one
    # there (ratio > 1 against < 1), but rows with more OUT samples rank higher, so only each row separates perfectly.
    rows = run.scores(PRIVATE)
    for _, row in rows.groupby("model_id"):
        assert row.release_rmia[row.is_in].min() > row.release_rmia[~row.is_in].max()
    scores = run.scores(POPULATION)
    keep = scores.is_in.to_numpy().reshape(8, -1)
    model_w, sample_w = two_way_bootstrap_weights(8, keep.shape[1], 400, np.random.default_rng(0))
    for name in ("release_dcr", "release_density", "release_lira", "release_rmia"):
        score = scores[name].to_numpy().reshape(8, -1)
        low, high = percentile_interval(bootstrap_roc_metrics(keep, score, sample_w, model_weights=model_w)["auc"])
        assert low <= 0.5 <= high, (name, low, high)
        assert run.results[POPULATION].attacks[name].auc == pytest.approx(0.5, abs=0.2)


@pytest.mark.slow
def test_a_random_coreset_is_found_for_the_canaries_it_selects(ground_truth):
    path, _, run = ground_truth
    store, keep = RunStore(str(path)), run.keep
    data = load_dataset(DatasetConfig(name="digits"))
    audit = run.audit.sort_values("sample_id")
    audit_x = data.x_train[audit.dataset_index.to_numpy()]
    labels = audit.label.to_numpy()
    selected = 0
    for model_id in range(8):
        stored = store.read_npz(synthetic_path("coreset@random", model_id))
        records = {(x.tobytes(), int(y)) for x, y in zip(stored["x"], stored["y"], strict=True)}
        chosen = np.array([(audit_x[i].tobytes(), int(labels[i])) in records for i in range(len(labels))])
        assert not (chosen & ~keep[model_id]).any()  # only a private (IN) sample can be selected
        selected += int((chosen & keep[model_id]).sum())
    fraction = selected / keep.sum()
    assert 0 < fraction < 0.5
    for name in ("release_dcr", "release_dcr_feature"):
        tpr = run.results["coreset@random"].attacks[name].tpr["tpr@0.1%fpr"]
        # The selected IN canaries sit at distance 0; everything else is spread like the OUT samples.
        assert fraction <= tpr <= fraction + 0.05, (name, tpr, fraction)


@pytest.mark.slow
def test_release_rows_are_in_scores_and_the_tidy_table_and_not_for_the_real_paradigm(ground_truth, tiny_run):
    _, _, run = ground_truth
    tidy = run.metrics
    assert set(tidy.threat_model.dropna()) == {"model", "release"}
    assert (tidy[tidy.attack.fillna("").str.startswith("release_")].threat_model == "release").all()
    assert (tidy[tidy.attack == "lira_online"].threat_model == "model").all()
    scores = run.scores()
    assert scores[scores.paradigm == PRIVATE].release_dcr.notna().all()
    # real releases no synthetic set: no release rows, no release columns (no paradigm of that run releases one).
    assert all(m.threat_model == "model" for m in tiny_run.run.results["real"].attacks.values())
    assert not [c for c in tiny_run.run.scores().columns if c.startswith("release_")]


@pytest.mark.slow
def test_both_backends_give_identical_release_results(ground_truth, tmp_path, local_ray):
    path, raw, run = ground_truth
    copy = tmp_path / "run"
    shutil.copytree(path, copy)
    on_ray = raypriv.audit({**raw, "out_dir": str(copy), "scoring": {"backend": "ray"}}, use_ray=False,
                           show_progress=False)
    for paradigm, entry in run.results.items():
        for name, metrics in entry.attacks.items():
            if metrics.threat_model == "release":
                assert on_ray.results[paradigm].attacks[name] == metrics, (paradigm, name)
    columns = ["paradigm", "model_id", "sample_id", "release_dcr", "release_lira", "release_rmia", "release_density"]
    pd.testing.assert_frame_equal(on_ray.scores()[columns].reset_index(drop=True), run.scores()[columns])


@pytest.mark.slow
def test_dp_marginals_release_bound_stays_under_the_accounted_epsilon(tmp_path):
    """dpgen-marginals at ε = 1 on breast-cancer: every release attack's ε lower bound stays under ε = 1; the same
    audit finds a released private set (power to measure leakage above that level)."""
    private = f"{HERE}:ReleasesPrivate"
    config = config_from_dict({
        "out_dir": str(tmp_path / "run"), "n_models": 8, "paradigms": ["dpgen-marginals@eps1", private],
        "paradigm_options": {"dpgen-marginals@eps1": {"epsilon": 1.0, "mechanism": "laplace"}},
        "dataset": {"name": "breast_cancer"}, "audit": {"n_audit": 60},
        "model": {"arch": "logreg"}, "train": {"epochs": 1, "batch_size": 64},
    })
    results = raypriv.audit(config.to_dict(), use_ray=False, show_progress=False).results
    dp = results["dpgen-marginals@eps1"]
    release = {name: m for name, m in dp.attacks.items() if m.threat_model == "release"}
    assert set(release) == {"release_lira", "release_rmia", "release_density", "release_dcr"}  # no image features
    for name, metrics in release.items():
        assert metrics.eps_lower_bound <= dp.info["epsilon"] == pytest.approx(1.0), name
    assert results[private].attacks["release_dcr"].eps_lower_bound > 1.0
    assert metrics_from_json(metrics_to_json(results)) == results  # the threat model survives metrics.json


# ------------------------------------------------------------------ text records (release_ngram)


def test_ngram_log_likelihood_by_hand():
    """Order 2, alpha 1 on the line "ab": P(a|pad) = (1+1)/(1+V), P(b|a) = 2/(1+V), P(a|a) = 1/(1+V)."""
    from raypriv.release import NgramModel
    from raypriv.release.ngram import ALPHABET

    model = NgramModel(["ab"], order=2, alpha=1.0)
    vocabulary = len(ALPHABET | {"a", "b"})
    assert model.vocabulary == vocabulary
    assert model.log_likelihood("ab") == pytest.approx(2 * np.log(2 / (1 + vocabulary)))
    assert model.log_likelihood("aa") == pytest.approx(np.log(2 / (1 + vocabulary)) + np.log(1 / (1 + vocabulary)))


def test_stored_dpgen_llm_records_give_back_the_generated_lines():
    """dpgen-llm stores quantizer.sample(levels); re-binned, they serialise to the lines the model wrote."""
    from raypriv.release import RecordText
    from raypriv.synth.dpgen.common import Quantizer
    from raypriv.synth.dpgen.llm import serialize_record
    from raypriv.training import Normalizer

    data = load_dataset(DatasetConfig(name="breast_cancer"))
    quantizer = Quantizer.from_normalizer(Normalizer.fit(data.x_train), 10, 3.0)
    rng = np.random.default_rng(4)
    levels, labels = rng.integers(0, 10, size=(200, data.x_train.shape[1])), rng.integers(0, 2, 200)
    stored = quantizer.sample(levels, rng)
    lines = RecordText(quantizer, serialize_record).lines(stored, labels)
    assert lines == [serialize_record(row, label) for row, label in zip(levels, labels, strict=True)]


@pytest.mark.slow
def test_the_cli_names_a_bad_stored_set_in_one_error_line(ground_truth, tmp_path, capsys):
    from tests.conftest import cli_error

    path, _, _ = ground_truth
    copy = tmp_path / "run"
    shutil.copytree(path, copy)
    store = RunStore(str(copy))
    stored = store.read_npz(synthetic_path("coreset@random", 1))
    store.write_npz(synthetic_path("coreset@random", 1), x=stored["x"][:, :, :4], y=stored["y"])  # another shape
    before = (copy / "metrics.json").read_bytes()
    line = cli_error(capsys, ["audit", "--config", str(copy / "config.yaml"), "--out", str(copy), "--no-ray", "--quiet"])
    assert line.startswith(f"error: {copy}/synthetic/coreset@random/model-000001.npz: the synthetic set of model 1 of "
                           "coreset@random has records of shape (1, 4, 8), but the audit samples have shape (1, 8, 8)")
    assert (copy / "metrics.json").read_bytes() == before  # nothing was scored from it: the old metrics stand
