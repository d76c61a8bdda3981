"""Ray on a real (local) cluster: losing a node mid-run, and `ray job submit` through the Jobs API."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from raypriv.experiment import config_from_dict
from raypriv.driver import run_audit
from raypriv.rundir import RunDirectory
from tests.conftest import metric_values, tiny_config_dict

ROOT = Path(__file__).resolve().parents[1]



@pytest.mark.slow
def test_losing_a_worker_node_mid_run_loses_and_duplicates_nothing(tmp_path, caplog):
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
        cluster.shutdown()
    assert removed.is_set()
    assert "worker lost on real" in caplog.text  # the requeue path really ran
    models = pd.read_parquet(tmp_path / "run" / "models.parquet")
    assert sorted(models.model_id) == list(range(16))  # every model exactly once
    assert len(list(rows.glob("model-*.parquet"))) == 16
    assert not list((tmp_path / "run").rglob(".tmp-*"))
    assert metric_values(result.metrics_json) == metric_values(reference.metrics_json)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def submit_job_to_a_fresh_head(tmp_path: Path, entrypoint: str, runtime_env: dict) -> str:
    """Start a throwaway Ray head on loopback, run one job through the Jobs API, and return its logs once it succeeded."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    dashboard = _free_port()
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={_free_port()}",
         "--num-cpus=2", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--disable-usage-stats"],
        stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy(),
    )
    try:
        client, deadline = None, time.time() + 90
        while client is None:
            try:
                client = JobSubmissionClient(f"http://127.0.0.1:{dashboard}")
            except Exception:  # noqa: BLE001 - the head is still starting
                if time.time() > deadline or head.poll() is not None:
                    raise AssertionError((tmp_path / "head.log").read_text()) from None
                time.sleep(1)
        job, deadline = None, time.time() + 120
        while job is None:  # on a loaded machine the head's job agent can take a while to come up
            try:
                job = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            except RuntimeError:
                if time.time() > deadline:
                    raise
                time.sleep(2)
        deadline = time.time() + 300
        while client.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            assert time.time() < deadline, client.get_job_logs(job)
            time.sleep(1)
        logs = client.get_job_logs(job)
        assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs
        return logs
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=60)


@pytest.mark.slow
def test_ray_job_submit_runs_the_audit_entrypoint(tmp_path, monkeypatch):
    # A throwaway head on loopback, without token authentication.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "run")))
    logs = submit_job_to_a_fresh_head(
        tmp_path, f"{sys.executable} jobs/audit.py --config {config} --quiet",
        {"working_dir": str(ROOT), "excludes": [".venv", ".git", "runs", "*.pyc"]},
    )
    assert "lira_online" in logs  # the summary table reached the job's logs
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["real"]) >= {"loss", "lira_online", "lira_offline"}
    assert len(pd.read_parquet(tmp_path / "run" / "models.parquet")) == 8


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
def test_synthesis_pool_feeds_the_shadow_model_pool(tmp_path):
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
