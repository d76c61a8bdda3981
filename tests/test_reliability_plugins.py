"""Reliability, parts 3 and 4 of "Nothing silently wrong": Python plugins are checked like ``external`` output,
diverged models are failures, and sizes the data cannot carry are refused before training.

Each test reproduces one probe of the issue and fails without its fix.  The
bad plugins are classes of this module, referenced in the config as
``tests.test_reliability_plugins:<Class>``.  Most probes run one shadow
pipeline (:class:`raypriv.pipeline.ShadowTrainer`) on two models; one whole
audit per kind of failure checks the CLI's single ``error:`` line, exit 2,
no traceback, the other paradigm's models stored, and the rerun.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import raypriv
from raypriv.cli import main
from raypriv.config import DatasetConfig
from raypriv.config import from_dict as config_from_dict
from raypriv.data import load_dataset
from raypriv.pipeline import ShadowTrainer
from raypriv.run.format import logits_path, model_row_path
from raypriv.run.store import RunStore
from raypriv.split import make_audit_split
from raypriv.synth import LabeledSet
from raypriv.synth.validation import check_info, check_training_set
from tests.conftest import tiny_config_dict

HERE = "tests.test_reliability_plugins"


# ------------------------------------------------------------------ the bad plugins


class _Plugin(raypriv.Paradigm):
    """A plugin that trains on (a changed copy of) the private set."""

    name = "test-plugin"

    def synthesize(self, private, context):
        return LabeledSet(*self.change(private.x.clone(), private.y.clone(), context))

    def change(self, x, y, context):
        return x, y


class RaisesInInit(_Plugin):
    def __init__(self, options=None):
        raise ValueError("a long explanation\nthat ends on this line: the plugin cannot start")


class RaisesInSynthesize(_Plugin):
    def synthesize(self, private, context):
        raise RuntimeError("first line\nsynthesis blew up")


class ReturnsNone(_Plugin):
    def synthesize(self, private, context):
        return None


class NaNImages(_Plugin):
    def change(self, x, y, context):
        x = x.float() / 255.0
        x[0, 0, 0, 0] = float("nan")
        return x, y


class WrongShape(_Plugin):
    def change(self, x, y, context):
        return x[:, :, :4], y


class LabelsOutOfRange(_Plugin):
    def change(self, x, y, context):
        return x, y + 10


class EmptySet(_Plugin):
    def change(self, x, y, context):
        return x[:0], y[:0]


class LengthMismatch(_Plugin):
    def change(self, x, y, context):
        return x, y[:-1]


class EpsilonWithoutDelta(_Plugin):
    def change(self, x, y, context):
        context.info["epsilon"] = 1.0
        return x, y


class FloatImagesAndInt32Labels(_Plugin):
    """A valid set in other dtypes: float64 images in [0, 1], int32 labels (normalised, not refused)."""

    def change(self, x, y, context):
        return x.double() / 255.0, y.int()


# ------------------------------------------------------------------ one pipeline, two models


@pytest.fixture(scope="module")
def data_and_split():
    data = load_dataset(DatasetConfig())
    return data, make_audit_split(data, 40, "mislabel", 8, 0)


def _records(tmp_path, data_and_split, paradigm: str, model_ids=(0, 1), **overrides):
    data, split = data_and_split
    config = config_from_dict(tiny_config_dict(tmp_path / "run", paradigms=[paradigm], **{"train.epochs": 1, **overrides}))
    trainer = ShadowTrainer(config.to_dict(), str(tmp_path / "run"), data, split)
    return trainer.run_group(paradigm, list(model_ids)), RunStore(str(tmp_path / "run"))


@pytest.mark.parametrize("plugin, message", [
    ("RaisesInInit", r"raised in __init__: ValueError: that ends on this line: the plugin cannot start$"),
    ("RaisesInSynthesize", r"raised in synthesize\(\): RuntimeError: synthesis blew up$"),
    ("ReturnsNone", r"synthesize\(\) returned NoneType, not a raypriv.LabeledSet"),
    ("NaNImages", r"malformed training set: x holds NaN or infinite values"),
    ("WrongShape", r"malformed training set: x has shape \(\d+, 1, 4, 8\); expected \(N, 1, 8, 8\)"),
    ("LabelsOutOfRange", r"malformed training set: y holds classes 10\.\.19, outside \[0, 10\)"),
    ("EmptySet", r"malformed training set: x has shape \(0, 1, 8, 8\) \(the set is empty\)"),
    ("LengthMismatch", r"malformed training set: y has \d+ rows but x has \d+"),
    ("EpsilonWithoutDelta", r"malformed info: context.info has 'epsilon' but no 'delta'"),
])
def test_3_a_bad_plugin_fails_its_models_with_one_named_error(tmp_path, data_and_split, plugin, message):
    paradigm = f"{HERE}:{plugin}"
    records, store = _records(tmp_path, data_and_split, paradigm)
    assert [r["status"] for r in records] == ["failed", "failed"]
    assert sorted(r["model_id"] for r in records) == [0, 1]
    for record in records:
        assert "Traceback" not in record["error"] and "\n" not in record["error"]
        assert re.search(message, record["error"]), record["error"]
        assert not store.exists(model_row_path(paradigm, record["model_id"]))
        assert not store.exists(logits_path(paradigm, record["model_id"]))


def test_3_a_valid_plugin_set_in_other_dtypes_is_normalised(tmp_path, data_and_split):
    records, _ = _records(tmp_path, data_and_split, f"{HERE}:FloatImagesAndInt32Labels", model_ids=(0,))
    assert records[0]["status"] == "ok"


def test_3_the_checks_are_the_externals():
    shape = dict(feature_shape=(1, 8, 8), num_classes=10, image=True)
    x, y = np.zeros((3, 1, 8, 8), np.float64), np.array([0, 1, 2], np.int32)
    x_out, y_out = check_training_set(x, y, **shape)
    assert x_out.dtype == np.float32 and y_out.dtype == np.int64
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        check_training_set(x + 2, y, **shape)
    check_training_set(x + 2, y, **shape, strict=False)  # built-ins: no range policy
    with pytest.raises(ValueError, match="NaN"):
        check_training_set(np.full_like(x, np.nan), y, **shape, strict=False)
    for info in ({"epsilon": 1.0, "delta": float("nan")}, {"epsilon": float("inf"), "delta": 1e-5},
                 {"delta": 1e-5}, {"epsilon": -1.0, "delta": 0.0}, {"epsilon": 1.0, "delta": 1.0},
                 {"epsilon": np.float32(1.0), "delta": 0.0}):
        with pytest.raises(ValueError):
            check_info(info)
    check_info({"epsilon": 1.0, "delta": 0.0, "plugin": "x"})


def test_4_a_diverged_model_is_a_failure_never_stored(tmp_path, data_and_split):
    records, store = _records(tmp_path, data_and_split, "real", **{"train.lr": 1e10})
    assert [r["status"] for r in records] == ["failed", "failed"]
    for record in records:
        assert record["error"].startswith("training diverged (non-finite weights or logits; train.lr=1e+10): lower train.lr")
        assert not store.exists(model_row_path("real", record["model_id"]))


@pytest.mark.skipif(not hasattr(torch, "func"), reason="the ensemble engine needs torch.func")
def test_4_the_ensemble_engine_checks_divergence_too(tmp_path, data_and_split):
    records, store = _records(tmp_path, data_and_split, "real", **{"train.lr": 1e10, "train.engine": "ensemble"})
    assert [r["status"] for r in records] == ["failed", "failed"]
    assert all("training diverged" in r["error"] for r in records)
    assert not store.exists(model_row_path("real", 0))


# ------------------------------------------------------------------ whole audits through the CLI


def _audit(capsys, tmp_path: Path, raw: dict) -> tuple[int, str]:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    code = main(["audit", "--config", str(path), "--no-ray", "--quiet"])
    return code, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def _stored(run_dir: Path, paradigm: str, n: int = 8) -> list[int]:
    store = RunStore(str(run_dir))
    return [m for m in range(n) if store.exists(model_row_path(paradigm, m)) and store.exists(logits_path(paradigm, m))]


@pytest.mark.parametrize("plugin, message", [
    ("RaisesInSynthesize", "the plugin paradigm '{bad}' raised in synthesize(): RuntimeError: synthesis blew up"),
    ("RaisesInInit", "the plugin paradigm '{bad}' raised in __init__: ValueError: that ends on this line"),
    ("NaNImages", "paradigm '{bad}' made a malformed training set: x holds NaN or infinite values"),
])
def test_3_a_bad_plugin_fails_only_its_models_and_the_audit_says_which(tmp_path, capsys, plugin, message):
    bad = f"{HERE}:{plugin}"
    raw = tiny_config_dict(tmp_path / "run", paradigms=["real", bad], **{"train.epochs": 2})
    code, err = _audit(capsys, tmp_path, raw)
    assert code == 2
    assert "8 of the 16 models trained now failed" in _one_error_line(err)
    assert f"{bad} #0: " + message.format(bad=bad) in err
    assert _stored(tmp_path / "run", "real") == list(range(8))  # the other paradigm's models are stored
    assert _stored(tmp_path / "run", bad) == []
    # The rerun retries only the failed models, and fails the same way: one line, no traceback.
    code, err = _audit(capsys, tmp_path, raw)
    assert code == 2 and "8 of the 8 models trained now failed" in _one_error_line(err)


def test_4_lr_1e10_fails_every_model_and_the_rerun_is_no_traceback(tmp_path, capsys):
    raw = tiny_config_dict(tmp_path / "run", **{"train.epochs": 2, "train.lr": 1e10})
    code, err = _audit(capsys, tmp_path, raw)
    assert code == 2 and "8 of the 8 models trained now failed" in _one_error_line(err)
    assert "real #0: training diverged" in err and "lower train.lr" in err and "new --out" in err
    assert _stored(tmp_path / "run", "real") == []  # none stored as complete
    code, err = _audit(capsys, tmp_path, raw)
    assert code == 2 and "training diverged" in err and _one_error_line(err)


@pytest.mark.parametrize("override, message", [
    ({"train.lr": 1e300}, r"error: config: train.lr=1e\+300 is above 1e\+30"),
    ({"train.weight_decay": 1e300}, r"error: config: train.weight_decay=1e\+300 is above 1e\+30"),
    ({"train.crop_padding": 3000, "train.augment": "crop"},
     r"error: config: train.crop_padding=3000 is not below the images' side \(8 pixels"),
    ({"model.width": 100000}, r"error: config: model.width=100000 makes a cnn_small of 9e\+11 parameters"),
])
def test_4_sizes_the_data_cannot_carry_are_one_error_line(tmp_path, capsys, override, message):
    code, err = _audit(capsys, tmp_path, tiny_config_dict(tmp_path / "run", **override))
    assert code == 2
    assert re.match(message, _one_error_line(err)), err
    assert _stored(tmp_path / "run", "real") == []  # refused before any model trained


def test_4_a_batch_larger_than_the_set_is_clipped(tmp_path, data_and_split):
    records, _ = _records(tmp_path, data_and_split, "real", model_ids=(0,),
                          **{"train.batch_size": 2**31 - 1, "train.eval_batch_size": 2**31 - 1})
    assert records[0]["status"] == "ok"
