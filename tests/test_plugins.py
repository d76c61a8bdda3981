"""Paradigms from outside raypriv: entry points, module:Class references, the catalogue, the public plugin API.

The example plugin (examples/plugin-mixup) is put on sys.path, and its entry
point is registered through a temporary ``*.dist-info`` directory (METADATA +
entry_points.txt) on sys.path: nothing is installed into the venv, so other
tests never see it.
"""

import dataclasses
import inspect
import json
import sys
from pathlib import Path

import pytest
import yaml

import raypriv
from raypriv.cli import main
from raypriv.config import from_dict as config_from_dict
from raypriv.driver import run_audit
from raypriv.errors import RayprivError
from raypriv.run.fingerprints import recipe_hash
from raypriv.synth import registry
from tests.conftest import tiny_config_dict

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "examples" / "plugin-mixup"
REFERENCE = "raypriv_mixup.paradigm:MixupSynth"


def _fast(out_dir, **overrides):
    return tiny_config_dict(out_dir, **{"train.epochs": 2, **overrides})


def _write_dist(site: Path, version: str, entry_points: dict[str, str]) -> None:
    for old in site.glob("raypriv_mixup-*.dist-info"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    info = site / f"raypriv_mixup-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: raypriv-mixup\nVersion: {version}\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[raypriv.paradigms]\n{lines}")


def _forget_plugins():
    registry._entry_points_loaded = False
    for name in list(registry.PLUGINS):
        registry.PLUGINS.pop(name)
        registry._REFERENCED.pop(name, None)
        if name not in registry.BUILTINS:
            registry.PARADIGMS.pop(name, None)


@pytest.fixture
def plugin_site(tmp_path, monkeypatch):
    """examples/plugin-mixup importable, and a site directory for fake distributions."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    monkeypatch.syspath_prepend(str(site))
    _forget_plugins()
    yield site
    _forget_plugins()


def test_the_public_plugin_api_keeps_its_shape():
    assert [p for p in inspect.signature(raypriv.Paradigm.synthesize).parameters] == ["self", "private", "context"]
    assert [p for p in inspect.signature(raypriv.Paradigm.train).parameters] == ["self", "training_set", "context"]
    assert raypriv.Paradigm.__abstractmethods__ == frozenset({"synthesize"})
    assert "name" in raypriv.Paradigm.__annotations__
    assert {"Options", "stores_training_set", "training_recipe", "separable_synthesis"} <= set(dir(raypriv.Paradigm))
    assert [f.name for f in dataclasses.fields(raypriv.LabeledSet)] == ["x", "y"]
    assert [f.name for f in dataclasses.fields(raypriv.ShadowContext)] == [
        "config", "paradigm", "model_id", "num_classes", "input_shape", "normalizer", "device", "info",
    ]
    assert {"seed", "rng", "generator", "build_model", "train_classifier"} <= set(dir(raypriv.ShadowContext))
    assert list(inspect.signature(raypriv.register).parameters) == ["cls"]
    assert raypriv.RayprivError is RayprivError


@pytest.mark.slow
def test_entry_point_and_module_class_plugins_are_audited_next_to_real(plugin_site, tmp_path, capsys):
    _write_dist(plugin_site, "0.1.0", {"mixup": REFERENCE})
    raw = _fast(
        tmp_path / "run",
        paradigms=["real", "mixup@strong", REFERENCE],
        paradigm_options={"mixup@strong": {"alpha": 2.0}, REFERENCE: {"n_synthetic": 200}},
    )
    config = config_from_dict(raw)
    result = run_audit(config, use_ray=False, show_progress=False)
    metrics = result.metrics
    assert set(metrics.paradigm) == {"real", "mixup@strong", REFERENCE}
    assert (metrics.query("metric == 'auc'").value.between(0, 1)).all()
    models = result.models
    assert sorted(models.synthetic_size[models.paradigm == REFERENCE].unique()) == [200]
    assert json.loads(models["info"][models.paradigm == "mixup@strong"].iloc[0])["plugin"] == (
        "raypriv_mixup.paradigm.MixupSynth raypriv-mixup 0.1.0"
    )

    # The catalogue lists the entry point with its source and options.
    assert main(["paradigms"]) == 0
    listing = capsys.readouterr().out
    assert "mixup [entry point, raypriv_mixup.paradigm.MixupSynth (raypriv-mixup 0.1.0)]: Mixup of private" in listing
    assert "    alpha: float = 0.4" in listing and "external [built-in]" in listing
    assert main(["paradigms", "mixup"]) == 0
    assert "mixup: train on convex mixes" in capsys.readouterr().out  # the docstring as plain text

    # A new plugin version is a new recipe: its old models are not mixed in, and the error says why.
    before = recipe_hash(config, "mixup@strong")
    _write_dist(plugin_site, "0.2.0", {"mixup": REFERENCE})
    _forget_plugins()
    upgraded = config_from_dict(raw)
    assert recipe_hash(upgraded, "mixup@strong") != before
    assert recipe_hash(upgraded, "real") == recipe_hash(config, "real")
    with pytest.raises(RayprivError, match=r"made by raypriv_mixup.paradigm.MixupSynth raypriv-mixup 0.1.0, "
                                           r"this config runs raypriv_mixup.paradigm.MixupSynth raypriv-mixup 0.2.0"):
        run_audit(upgraded, use_ray=False, show_progress=False)


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_bad_plugins_get_one_error_line(plugin_site, tmp_path, capsys):
    def audit_error(paradigm):
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(_fast(tmp_path / "run", paradigms=["real", paradigm])))
        return _cli_error(capsys, ["audit", "--config", str(path), "--no-ray", "--quiet"])

    err = audit_error("no_such_pkg.mod:Thing")
    assert "module 'no_such_pkg.mod' does not import (ModuleNotFoundError: No module named 'no_such_pkg')" in err
    assert "is not a subclass of raypriv.Paradigm" in audit_error("raypriv_mixup.paradigm:MixupOptions")
    assert "has no attribute 'Nope'" in audit_error("raypriv_mixup.paradigm:Nope")
    assert not (tmp_path / "run").exists()  # refused before anything was written

    _write_dist(plugin_site, "0.1.0", {"real": REFERENCE})
    _forget_plugins()
    err = _cli_error(capsys, ["paradigms"])
    assert "entry point 'real'" in err and "collides with the built-in paradigm 'real'" in err


@pytest.mark.slow
def test_ray_job_runs_the_entrypoint_and_ships_a_plugin(tmp_path, monkeypatch, ray_jobs_head):
    """`ray job submit` of jobs/audit.py with the repository as working_dir, and a plugin only in py_modules."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the head runs without token authentication
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(_fast(tmp_path / "run", paradigms=["real", REFERENCE])))
    logs = ray_jobs_head(f"{sys.executable} jobs/audit.py --config {config} --quiet", {
        "working_dir": str(ROOT), "excludes": [".venv", ".git", "runs", "*.pyc", "examples"],
        "py_modules": [str(PLUGIN_DIR / "raypriv_mixup")],  # the plugin exists only in the job
    })
    assert "lira_online" in logs  # the summary table reached the job's logs
    result = raypriv.load_run(tmp_path / "run")
    assert set(result.metrics.paradigm) == {"real", REFERENCE} and len(result.models) == 16
    assert set(result.metrics.attack) >= {"loss", "lira_online", "lira_offline"}
    assert result.metrics.query("attack == 'lira_online' and metric == 'auc'").value.between(0, 1).all()
