"""End-to-end audits: outputs, resume, Ray against in-process, the CLI and its errors."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from raypriv.cli import main
from raypriv.config import from_dict as config_from_dict
from raypriv.config import load as load_config
from raypriv.driver import run_audit
from raypriv.errors import RayprivError
from raypriv.run.format import logits_path, model_row_path
from tests.conftest import metric_values, tiny_config_dict

ATTACKS = ["loss", "lira_online", "lira_offline", "lira_online_fixed", "lira_offline_fixed"]



@pytest.fixture(scope="module")
def reference(tiny_run):
    """One uninterrupted in-process run of the tiny config (the session's ``tiny_run``), shared by the tests below."""
    return tiny_run.run


def test_run_directory_holds_every_output(reference):
    run = Path(reference.run_dir)
    for name in ("run.json", "config.yaml", "keep.npy", "audit.parquet", "models.parquet", "scores.parquet",
                 "metrics.json", "metrics.csv", "roc.png", "summary.txt"):
        assert (run / name).is_file(), name
    assert (run / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"real"} and set(ATTACKS) <= set(metrics["real"])
    assert 0.0 <= metrics["real"]["test_acc"] <= 1.0
    for attack in ATTACKS:
        assert {"auc", "tpr@0.1%fpr", "tpr@1%fpr", "balanced_acc"} <= set(metrics["real"][attack])

    keep = np.load(run / "keep.npy")
    models = pd.read_parquet(run / "models.parquet")
    assert sorted(models.model_id) == list(range(8)) and (models.status == "ok").all()
    np.testing.assert_array_equal(models.sort_values("model_id").in_count, keep.sum(axis=1))
    logits = pd.read_parquet(run / "logits")
    assert len(logits) == 8 * 40 and set(logits.paradigm) == {"real"}
    scores = pd.read_parquet(run / "scores.parquet")
    assert len(scores) == 8 * 40 and set(ATTACKS) <= set(scores.columns)
    np.testing.assert_array_equal(scores.is_in.to_numpy().reshape(8, 40), keep)
    audit = pd.read_parquet(run / "audit.parquet")
    assert audit.canary.all() and (audit.label != audit.true_label).all()
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["n_models"] == 8 and resolved["train"]["epochs"] == 3
    assert "lira_online" in reference.summary and "TPR@0.1%FPR" in reference.summary


def test_resume_after_lost_models_gives_the_same_metrics(reference, tmp_path):
    config = config_from_dict(tiny_config_dict(tmp_path / "run"))
    shutil.copytree(reference.run_dir, tmp_path / "run")  # the same run, trained once for the session
    run = tmp_path / "run"
    # As if the run had been killed: model 5 wrote its logits but not its row, 6 and 7 never ran.
    (run / model_row_path("real", 5)).unlink()
    for model_id in (6, 7):
        (run / model_row_path("real", model_id)).unlink()
        (run / logits_path("real", model_id)).unlink()
    (run / "metrics.json").unlink()
    resumed = run_audit(config, use_ray=False, show_progress=False)
    assert resumed.trained_now == 3
    assert metric_values(resumed.metrics_json) == metric_values(reference.metrics_json)


def test_a_different_config_is_refused_in_the_same_directory(reference, tmp_path):
    shutil.copytree(reference.run_dir, tmp_path / "run")  # the shared run stays untouched (the refusal takes its lease)
    changed = tiny_config_dict(tmp_path / "run", **{"train.epochs": 4})
    with pytest.raises(RayprivError) as error:
        run_audit(config_from_dict(changed), use_ray=False)
    assert "holds a run of a different config" in str(error.value)
    assert "train.epochs: 3 -> 4" in str(error.value)


@pytest.mark.slow
def test_ray_actors_reproduce_the_in_process_run(reference, tmp_path, local_ray):
    ray_run = run_audit(config_from_dict(tiny_config_dict(tmp_path / "run")), use_ray=True, show_progress=False)
    assert metric_values(ray_run.metrics_json) == metric_values(reference.metrics_json)
    assert set(pd.read_parquet(Path(ray_run.run_dir) / "models.parquet").device) == {"cpu"}


# ---------------------------------------------------------------- the CLI


def raypriv(*args, cwd, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "raypriv.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )


def write_config(path, **overrides):
    raw = tiny_config_dict(path.parent / "run", **overrides)
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    "overrides, args, message",
    [
        ({"dataset.name": "imagenet"}, [], "dataset.name='imagenet' is not a known dataset"),
        ({}, ["--paradigms", "real,magic"], "paradigm 'magic' is not known"),
        ({}, ["--models", "7"], "n_models=7: it must be even"),
        ({}, ["--models", "4"], "n_models=4 is too few for LiRA"),
        ({"audit.n_audit": 100000}, [], "audit.n_audit=100000 is larger than the training pool"),
    ],
)
def test_cli_bad_input_is_one_clear_line(tmp_path, overrides, args, message, monkeypatch, capsys):
    # In process (the CLI's main, as the console script calls it): a subprocess would spend ~5 s per case
    # importing torch.  The test below runs the real entry point in a subprocess.
    config = write_config(tmp_path / "c.yaml", **overrides)
    monkeypatch.chdir(tmp_path)
    assert main(["audit", "--config", str(config), *args]) == 2
    stderr = capsys.readouterr().err
    assert message in stderr and "Traceback" not in stderr
    assert stderr.startswith("error: ") and len(stderr.strip().splitlines()) == 1


def test_cli_refuses_a_missing_config_and_a_foreign_directory(tmp_path):
    missing = raypriv("audit", "--config", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    foreign = raypriv("audit", "--out", str(tmp_path / "occupied"), cwd=tmp_path)
    assert foreign.returncode == 2 and "holds no raypriv run" in foreign.stderr


def test_cli_recovers_from_a_truncated_parquet(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference.run_dir, run)
    broken = run / logits_path("real", 2)
    broken.write_bytes(broken.read_bytes()[:100])
    config = write_config(tmp_path / "c.yaml")
    result = raypriv("audit", "--config", str(config), "--no-ray", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"discarding a stored result: {broken}" in result.stderr and "Traceback" not in result.stderr
    assert metric_values(json.loads((run / "metrics.json").read_text())) == metric_values(reference.metrics_json)


@pytest.mark.slow
def test_interrupt_then_resume_matches_an_uninterrupted_run(tmp_path):
    config = write_config(tmp_path / "c.yaml", n_models=8, **{"train.epochs": 6})
    process = subprocess.Popen(
        [sys.executable, "-m", "raypriv.cli", "audit", "--config", str(config)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        # A background job (nohup, `&`) ignores SIGINT and its children inherit that: give Ctrl-C back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    rows = tmp_path / "run" / "models" / "real"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(rows.glob("model-*.parquet"))) < 3:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Rerun the same command to resume" in stderr and "Traceback" not in stderr
    done_before = len(list(rows.glob("model-*.parquet")))
    assert 3 <= done_before < 8

    resumed = raypriv("audit", "--config", str(config), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{done_before} models already complete" in resumed.stderr
    fresh = run_audit(load_config(config, {"out_dir": str(tmp_path / "fresh")}), use_ray=False, show_progress=False)
    assert metric_values(json.loads((tmp_path / "run" / "metrics.json").read_text())) == metric_values(fresh.metrics_json)


@pytest.mark.slow
def test_default_digits_audit_shows_clear_leakage(tmp_path):
    """The default recipe at 32 models (the README reports the full 64-model run)."""
    config = load_config(None, {"out_dir": str(tmp_path / "run"), "n_models": 32})
    metrics = run_audit(config, use_ray=False, show_progress=False).metrics_json["real"]
    assert metrics["test_acc"] > 0.9
    assert metrics["lira_online"]["auc"] > 0.9
    assert metrics["lira_online"]["tpr@1%fpr"] > 0.2  # chance is 0.01
    assert metrics["lira_online"]["tpr@0.1%fpr"] > 2 * metrics["loss"]["tpr@0.1%fpr"]
