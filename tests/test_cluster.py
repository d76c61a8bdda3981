"""Ray on a real (local) cluster: losing a node mid-run, the synthesis pool, status (`ray job submit`: test_plugins.py)."""

import logging
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from raypriv.config import from_dict as config_from_dict
from raypriv.driver import run_audit
from raypriv.run.directory import RunDirectory
from tests.conftest import metric_values, stop_cluster, tiny_config_dict

ROOT = Path(__file__).resolve().parents[1]



@pytest.mark.slow
def test_losing_a_worker_node_mid_run_loses_and_duplicates_nothing(tmp_path, caplog, own_ray):
    import ray
    from ray.cluster_utils import Cluster

    raw = tiny_config_dict(tmp_path / "run", n_models=16, **{"train.epochs": 4})
    reference = run_audit(config_from_dict(tiny_config_dict(tmp_path / "ref", n_models=16, **{"train.epochs": 4})),
                          use_ray=False, show_progress=False)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level=logging.WARNING)
    rows = tmp_path / "run" / "models" / "real"
    removed = threading.Event()

    def remove_a_node_once_work_is_under_way():
        deadline = time.time() + 120
        while time.time() < deadline and len(list(rows.glob("model-*.parquet"))) < 3:
            time.sleep(0.05)
        cluster.remove_node(workers[1], allow_graceful=False)
        removed.set()

    killer = threading.Thread(target=remove_a_node_once_work_is_under_way, daemon=True)
    try:
        killer.start()
        with caplog.at_level(logging.WARNING, logger="raypriv"):
            result = run_audit(config_from_dict(raw), use_ray=True, show_progress=False)
    finally:
        killer.join(timeout=5)
        ray.shutdown()
        stop_cluster(cluster)
    assert removed.is_set()
    assert "worker lost on real" in caplog.text  # the requeue path really ran
    models = pd.read_parquet(tmp_path / "run" / "models.parquet")
    assert sorted(models.model_id) == list(range(16))  # every model exactly once
    assert len(list(rows.glob("model-*.parquet"))) == 16
    assert not list((tmp_path / "run").rglob(".tmp-*"))
    assert metric_values(result.metrics_json) == metric_values(reference.metrics_json)


# `ray job submit` through the Jobs API runs in tests/test_plugins.py::test_ray_job_runs_the_entrypoint_and_ships_a_plugin:
# one job checks the entrypoint and a py_modules plugin (a job costs most of a minute here).


@pytest.mark.slow
def test_status_reports_complete_missing_and_mismatch(tmp_path):
    config = config_from_dict(tiny_config_dict(tmp_path / "run", **{"train.epochs": 1}))
    run_audit(config, use_ray=False, show_progress=False)
    for model_id in (2, 3, 6):
        (tmp_path / "run" / "models" / "real" / f"model-{model_id:06d}.parquet").unlink()
    report = RunDirectory(str(tmp_path / "run")).status()
    assert "  real           5/8 complete; missing: 2-3, 6" in report
    assert "3 models missing: rerun `raypriv audit --config" in report
    other = config_from_dict(tiny_config_dict(tmp_path / "run", **{"train.epochs": 2}))
    assert "DOES NOT MATCH this run (differences: train.epochs: 1 -> 2)" in RunDirectory(str(tmp_path / "run")).status(other)


def _pipeline_config(out_dir, **ray_options):
    return config_from_dict(
        tiny_config_dict(
            out_dir,
            paradigms=["real", "coreset"],
            paradigm_options={"coreset": {"method": "random", "ipc": 2, "train_epochs": 5}},
            ray=ray_options,
        )
    )


@pytest.mark.slow
def test_synthesis_pool_feeds_the_shadow_model_pool(tmp_path, local_ray):
    reference = run_audit(_pipeline_config(tmp_path / "ref"), use_ray=False, show_progress=False)
    split = run_audit(
        _pipeline_config(tmp_path / "run", num_synthesis_workers=1, num_actors=1), use_ray=True, show_progress=False
    )
    assert metric_values(split.metrics_json) == metric_values(reference.metrics_json)
    records = sorted((tmp_path / "run" / "synthetic" / "coreset").glob("model-*.json"))
    assert len(records) == 8 and not list((tmp_path / "run" / "synthetic").glob("real"))

    # Resume trains from the stored set: it is not synthesized again.
    stored = tmp_path / "run" / "synthetic" / "coreset" / "model-000003.npz"
    before = stored.stat().st_mtime_ns
    (tmp_path / "run" / "models" / "coreset" / "model-000003.parquet").unlink()
    resumed = run_audit(_pipeline_config(tmp_path / "run"), use_ray=False, show_progress=False)
    assert resumed.trained_now == 1 and stored.stat().st_mtime_ns == before
    assert metric_values(resumed.metrics_json) == metric_values(reference.metrics_json)
