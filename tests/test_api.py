"""The Python API: raypriv.audit(), raypriv.load_run(), Run; the README example runs verbatim."""

import contextlib
import dataclasses
import io
import json
import logging
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
import raypriv.cli
from raypriv.errors import RayprivError
from raypriv.metrics import tpr_interval
from raypriv.results import AttackMetrics, ParadigmMetrics, metrics_to_json
from raypriv.run.fingerprints import Fingerprints
from tests.conftest import metric_values, tiny_config_dict

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


@pytest.mark.slow
def test_the_readme_example_runs_verbatim(notebook):
    where, namespace, printed = notebook
    assert "auc" in printed and "external" in printed and "real" in printed
    assert (where / "runs" / "notebook" / "report" / "report.html").exists()
    scores = namespace["scores"]
    assert {"paradigm", "model_id", "sample_id", "is_in", "lira_online"} <= set(scores.columns)
    assert len(scores) == 2 * 8 * 40


@pytest.mark.slow
def test_load_run_gives_the_same_result(notebook):
    where, namespace, _ = notebook
    result, again = namespace["result"], raypriv.load_run(where / "runs" / "notebook")
    assert isinstance(result, raypriv.Run) and isinstance(again, raypriv.Run)
    pd.testing.assert_frame_equal(result.metrics, again.metrics)
    pd.testing.assert_frame_equal(result.models, again.models)
    assert again.summary == result.summary and again.wall_seconds is None


@pytest.mark.slow
def test_tidy_metrics_and_their_intervals(notebook):
    metrics = notebook[1]["result"].metrics
    assert list(metrics.columns) == ["paradigm", "attack", "threat_model", "metric", "value", "ci_low", "ci_high"]
    result = notebook[1]["result"]
    typed = result.results
    assert list(typed) == ["real", "external"]
    assert all(isinstance(e, ParadigmMetrics) and all(isinstance(a, AttackMetrics) for a in e.attacks.values())
               for e in typed.values())
    stored = json.loads((Path(result.run_dir) / "metrics.json").read_text())
    assert metrics_to_json(typed) == stored == result.metrics_json  # the typed metrics are the file's, losslessly
    for row in metrics.itertuples():
        if pd.isna(row.attack):
            assert np.isnan(row.ci_low)
            continue
        entry = typed[row.paradigm].attacks[row.attack]
        assert row.value == entry[row.metric] == stored[row.paradigm][row.attack][row.metric]
        if row.metric.startswith("tpr@"):  # Clopper-Pearson on the TPR count
            assert (row.ci_low, row.ci_high) == tpr_interval(row.value, entry.n_in)
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
    with pytest.raises(RayprivError, match="config must be a mapping of fields, a YAML path or None, got int"):
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
        "audit", "load_run", "Run", "Paradigm", "ShadowContext", "LabeledSet", "register", "RayprivError",
    ]
    from raypriv.reader import Run

    assert raypriv.Run is Run
    with pytest.raises(AttributeError):
        raypriv.AuditResult  # noqa: B018  (replaced by raypriv.Run)


@pytest.mark.slow
def test_paradigm_selection_matches_the_cli(tmp_path):
    """``raypriv.audit(cfg, paradigms=[...])`` selects paradigms as ``raypriv audit --paradigms`` does.

    The config has options for a paradigm left out (coreset); both drop them, train the same recipe and give the
    same metrics.
    """
    raw = tiny_config_dict(tmp_path / "unused", paradigms=["real", "coreset"],
                           paradigm_options={"coreset": {"method": "random", "ipc": 10}})
    before = json.dumps(raw, sort_keys=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))

    api = raypriv.audit(raw, paradigms=["real"], use_ray=False, show_progress=False, out_dir=str(tmp_path / "api"))
    assert json.dumps(raw, sort_keys=True) == before  # the caller's mapping is never modified
    code = raypriv.cli.main(["audit", "--config", str(path), "--paradigms", "real", "--no-ray", "--quiet",
                             "--out", str(tmp_path / "cli")])
    assert code == 0
    cli = raypriv.load_run(tmp_path / "cli")

    assert api.config.paradigms == cli.config.paradigms == ["real"]
    assert api.config.paradigm_options == cli.config.paradigm_options and "coreset" not in api.config.paradigm_options
    assert dataclasses.replace(cli.config, out_dir=api.config.out_dir) == api.config
    fingerprints = Fingerprints.of(api.config)
    assert fingerprints.recipes == Fingerprints.of(cli.config).recipes and list(fingerprints.recipes) == ["real"]
    for run in (api, cli):
        assert set(run.models.paradigm) == {"real"} and len(run.models) == 8
        assert set(run.models.recipe_hash) == {fingerprints.recipes["real"]}
        assert list(run.results) == ["real"]
    assert metric_values(api.metrics_json) == metric_values(cli.metrics_json)
    assert metric_values(json.loads((tmp_path / "api" / "metrics.json").read_text())) == \
        metric_values(json.loads((tmp_path / "cli" / "metrics.json").read_text()))
    assert api.results["real"].attacks == cli.results["real"].attacks
    assert api.results["real"].test_acc == cli.results["real"].test_acc
    pd.testing.assert_series_equal(api.models.sort_values("model_id").test_acc.reset_index(drop=True),
                                   cli.models.sort_values("model_id").test_acc.reset_index(drop=True))


def test_the_api_prints_progress_by_default(tmp_path, capsys, monkeypatch):
    # As in a plain script or notebook: no logging handler anywhere.  Pytest's capture handlers join the root
    # logger when the test's call phase starts, after fixtures, so they are set aside here, in the test.
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    monkeypatch.setattr(logging.getLogger("raypriv"), "handlers", [])
    config = tiny_config_dict(tmp_path / "shown", attacks=["loss"], n_models=4)
    raypriv.audit(config, use_ray=False, train__epochs=1)
    shown = capsys.readouterr()
    assert "raypriv: shadow models: 4/4" in shown.err
    assert shown.err.count("raypriv: ") >= 2  # the first model's line and the last's, at least
    assert logging.getLogger("raypriv").handlers == []  # the handler it added for the call is gone

    raypriv.audit(tiny_config_dict(tmp_path / "quiet", attacks=["loss"], n_models=4), use_ray=False,
                  train__epochs=1, show_progress=False)
    quiet = capsys.readouterr()
    assert quiet.err == "" and quiet.out == ""
