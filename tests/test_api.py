"""The Python API: raypriv.audit(), raypriv.load_run(), AuditResult; the README example runs verbatim."""

import contextlib
import io
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import raypriv
from raypriv.errors import RayprivError
from raypriv.metrics import tpr_interval
from tests.conftest import tiny_config_dict

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "notebook_api.py"  # the README's "Audit your own method" example


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    """Run the README example verbatim, in a scratch directory holding the example script it names."""
    where = tmp_path_factory.mktemp("notebook")
    shutil.copytree(ROOT / "examples" / "external-command", where / "examples" / "external-command")
    before, out = os.getcwd(), io.StringIO()
    os.chdir(where)
    try:
        with contextlib.redirect_stdout(out):
            namespace = runpy.run_path(str(EXAMPLE), run_name="__main__")
    finally:
        os.chdir(before)
    return where, namespace, out.getvalue()


def test_the_readme_example_runs_verbatim(notebook):
    where, namespace, printed = notebook
    assert "auc" in printed and "external" in printed and "real" in printed
    assert (where / "runs" / "notebook" / "report" / "report.html").exists()
    scores = namespace["scores"]
    assert {"paradigm", "model_id", "sample_id", "is_in", "lira_online"} <= set(scores.columns)
    assert len(scores) == 2 * 8 * 40


def test_load_run_gives_the_same_result(notebook):
    where, namespace, _ = notebook
    result, again = namespace["result"], raypriv.load_run(where / "runs" / "notebook")
    pd.testing.assert_frame_equal(result.metrics, again.metrics)
    pd.testing.assert_frame_equal(result.models, again.models)
    assert again.summary == result.summary and again.wall_seconds is None


def test_tidy_metrics_and_their_intervals(notebook):
    metrics = notebook[1]["result"].metrics
    assert list(metrics.columns) == ["paradigm", "attack", "metric", "value", "ci_low", "ci_high"]
    raw = notebook[1]["result"].metrics_json
    for row in metrics.itertuples():
        if pd.isna(row.attack):
            assert np.isnan(row.ci_low)
            continue
        entry = raw[row.paradigm][row.attack]
        assert row.value == entry[row.metric]
        if row.metric.startswith("tpr@"):  # Clopper-Pearson on the TPR count
            assert (row.ci_low, row.ci_high) == tpr_interval(row.value, entry["n_in"])
            assert row.ci_low <= row.value <= row.ci_high
        else:
            assert np.isnan(row.ci_low) and np.isnan(row.ci_high)
    assert set(metrics.query("attack.isnull()", engine="python").metric) >= {"test_acc", "n_models"}


def test_audit_from_a_yaml_file_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config_dict(tmp_path / "run", attacks=["loss"])))
    result = raypriv.audit(path, use_ray=False, n_models=4, train__epochs=1)
    assert len(result.models) == 4 and set(result.metrics.attack.dropna()) == {"loss"}
    assert result.trained_now == 4


def test_bad_api_input_raises_the_cli_error(tmp_path):
    with pytest.raises(RayprivError, match="config must be a dict, a YAML path or None"):
        raypriv.audit(42)
    with pytest.raises(RayprivError, match="unknown field 'train.epoch'"):
        raypriv.audit({}, train__epoch=2)
    with pytest.raises(RayprivError, match="holds no raypriv run"):
        raypriv.load_run(tmp_path)


def test_the_api_loads_lazily_and_raypriv_audit_stays_callable():
    code = "import sys, raypriv; print(sorted(m for m in sys.modules if m.startswith('raypriv')), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT).stdout
    assert out.strip() == "['raypriv'] False"
    import raypriv.driver  # noqa: F401  (the driver module has its own name: raypriv.audit stays the API function)
    from raypriv.api import audit

    assert raypriv.audit is audit
    assert [p for p in raypriv.__all__ if p != "__version__"] == [
        "audit", "load_run", "AuditResult", "Paradigm", "ShadowContext", "LabeledSet", "register", "RayprivError",
    ]
