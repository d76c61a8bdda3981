"""Typed results: metrics.json's layout read and written in one place, unchanged, with malformed files named."""

import json

import pytest

from raypriv.errors import RayprivError
from raypriv.results import AttackMetrics, ParadigmMetrics, metrics_from_json, metrics_to_json

# A metrics.json entry as raypriv wrote it before these types existed (2026-12-01 layout), by hand.
STORED = {
    "real": {
        "test_acc": 0.97, "test_acc_std": 0.01, "n_models": 8, "synth_seconds_mean": 0.0, "train_seconds_mean": 1.5,
        "loss": {"auc": 0.9, "balanced_acc": 0.85, "tpr@0.1%fpr": 0.05, "tpr@1%fpr": 0.2, "n_in": 160, "n_out": 160,
                 "eps_lower_bound": 0.7},
        "lira_online": {"auc": 0.99, "balanced_acc": 0.95, "tpr@0.1%fpr": 0.5, "tpr@1%fpr": 0.8, "n_in": 160,
                        "n_out": 160, "eps_lower_bound": 1.9},
    },
    "dpsgd": {
        "test_acc": 0.6, "test_acc_std": 0.02, "n_models": 8, "synth_seconds_mean": 0.0, "train_seconds_mean": 3.0,
        "info": {"epsilon": 8.0, "delta": 1e-5},
        "loss": {"auc": 0.5, "balanced_acc": 0.5, "tpr@0.1%fpr": 0.0, "tpr@1%fpr": 0.01, "n_in": 160, "n_out": 160,
                 "eps_lower_bound": 0.0},
    },
}


def test_the_stored_layout_reads_typed_and_writes_back_byte_for_byte():
    metrics = metrics_from_json(STORED)
    real, dpsgd = metrics["real"], metrics["dpsgd"]
    assert list(metrics) == ["real", "dpsgd"] and list(real.attacks) == ["loss", "lira_online"]  # orders kept
    assert real.attacks["lira_online"].tpr["tpr@0.1%fpr"] == 0.5 and real.attacks["loss"].eps_lower_bound == 0.7
    assert real.attacks["loss"]["tpr@1%fpr"] == 0.2 and real.attacks["loss"].value("n_in") == 160
    assert dpsgd.delta == 1e-5 and real.delta == 0.0 and dpsgd.info["epsilon"] == 8.0
    assert json.dumps(metrics_to_json(metrics)) == json.dumps(STORED)


def test_numbers_a_newer_scorer_adds_survive_a_round_trip():
    raw = {**STORED["real"]["loss"], "eps_fdp": 1.2}
    metrics = AttackMetrics.from_json(raw)
    assert metrics.extra == {"eps_fdp": 1.2} and metrics.to_json() == raw


@pytest.mark.parametrize("broken, where", [
    ([], "holds list"),
    ({"real": []}, "real"),
    ({"real": {**STORED["real"], "test_acc": "high"}}, "real"),
    ({"real": {k: v for k, v in STORED["real"].items() if k != "n_models"}}, "real"),
    ({"real": {**STORED["real"], "loss": {"auc": 0.5}}}, "loss"),
    ({"real": {**STORED["real"], "loss": 0.5}}, "loss"),
])
def test_a_malformed_file_is_one_named_error(broken, where):
    with pytest.raises(RayprivError, match="metrics.json") as caught:
        metrics_from_json(broken)
    assert where in str(caught.value) and "rerun the audit" in str(caught.value)


def test_with_attacks_keeps_the_rows_part():
    entry = ParadigmMetrics(0.9, 0.01, 8, 1.0, 2.0, {"epsilon": 1.0, "delta": 1e-5})
    scored = entry.with_attacks({"loss": AttackMetrics.from_json(STORED["real"]["loss"])})
    assert scored.info == entry.info and scored.test_acc == 0.9 and list(scored.attacks) == ["loss"]
    assert entry.attacks == {}
