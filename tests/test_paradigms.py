"""Paradigms audited side by side over one keep matrix: is the ordering sane?"""

import numpy as np
import pandas as pd
import pytest

from raypriv.config import load as load_config
from raypriv.driver import run_audit
from raypriv.errors import RayprivError
from raypriv.synth import PARADIGMS

LIRA = ["lira_online", "lira_offline", "lira_online_fixed", "lira_offline_fixed"]


def test_every_paradigm_of_the_mission_is_registered():
    assert {"real", "coreset", "distill", "dfkd", "diffusion", "dpsgd"} <= set(PARADIGMS)


def test_unknown_paradigm_options_are_refused():
    with pytest.raises(RayprivError, match="unknown field 'paradigm_options.coreset.budget'"):
        load_config(None, {"paradigms": "real,coreset", "paradigm_options.coreset.budget": 3})
    with pytest.raises(RayprivError, match="paradigm_options has options for 'dpsgd', which is not in paradigms"):
        load_config(None, {"paradigm_options.dpsgd.epsilon": 1.0})


@pytest.mark.slow
def test_real_leaks_coreset_leaks_dpsgd_at_epsilon_1_stays_within_its_bound(tmp_path, local_ray):
    config = load_config(
        None,
        {
            "out_dir": str(tmp_path / "run"),
            "n_models": 16,
            "paradigms": "real,coreset,dpsgd",
            "paradigm_options.coreset.method": "random",
            "paradigm_options.dpsgd.epsilon": 1.0,
            # 10 of DP-SGD's 30 epochs (suite time): the accountant calibrates the noise to ε=1 for them.
            "paradigm_options.dpsgd.epochs": 10,
        },
    )
    metrics = run_audit(config, use_ray=True, show_progress=False).metrics_json
    real, coreset, dpsgd = metrics["real"], metrics["coreset"], metrics["dpsgd"]

    # Real-data training memorises its mislabeled canaries.
    assert real["lira_online_fixed"]["auc"] > 0.85
    assert real["lira_online_fixed"]["tpr@1%fpr"] > 0.2

    # A coreset trains on private samples: the canaries it happens to select leak.
    assert max(coreset[a]["tpr@1%fpr"] for a in LIRA) > 0.03  # chance: 0.01

    # DP-SGD at epsilon 1: near chance, and no attack beats the bound the accountant allows.
    accounted = dpsgd["info"]["epsilon"]
    assert 0 < accounted <= 1.0 + 1e-6
    for attack in ["loss", *LIRA]:
        assert abs(dpsgd[attack]["auc"] - 0.5) < 0.1, attack
        assert dpsgd[attack]["eps_lower_bound"] <= accounted, attack
    assert dpsgd["test_acc"] > 0.3  # it still learned something

    # Paired: the three paradigms were audited on the same models' keep matrix.
    scores = pd.read_parquet(tmp_path / "run" / "scores.parquet")
    per_paradigm = [group.sort_values(["model_id", "sample_id"]).is_in.to_numpy() for _, group in scores.groupby("paradigm")]
    assert all(np.array_equal(per_paradigm[0], other) for other in per_paradigm[1:])
