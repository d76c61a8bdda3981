"""The ``external`` paradigm: a user's command per shadow model, its validation, its failures and its security."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from raypriv.config import from_dict as config_from_dict
from raypriv.driver import run_audit
from raypriv.errors import ModelFailed, RayprivError
from raypriv.synth import LabeledSet, ShadowContext, make_paradigm
from raypriv.training import Normalizer
from tests.conftest import tiny_config_dict

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "examples" / "external-command" / "noisy_copies.py")


def _config(tmp_path, command, **options):
    return config_from_dict(tiny_config_dict(
        tmp_path / "run", paradigms=["external"], paradigm_options={"external": {"command": command, **options}},
    ))


def _synthesize(config, model_id=0):
    """Run the paradigm's synthesis on a small uint8 image set, outside any audit."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (30, 1, 8, 8), dtype=np.uint8))
    y = torch.from_numpy(rng.integers(0, 10, 30).astype(np.int64))
    context = ShadowContext(config, "external", model_id, 10, (1, 8, 8), Normalizer.fit(x.numpy()), torch.device("cpu"))
    return make_paradigm(config, "external").synthesize(LabeledSet(x, y), context)


def _writer(code: str) -> list[str]:
    """A command that loads the private set as ``d`` and runs ``code`` to write ``sys.argv[2]``."""
    return [sys.executable, "-c", f"import sys, numpy as np; d = np.load(sys.argv[1]); {code}", "{private}", "{output}"]


def test_the_example_script_makes_a_valid_set(tmp_path):
    out = _synthesize(_config(tmp_path, [sys.executable, SCRIPT, "{private}", "{output}", "{seed}", "{model_id}"]))
    assert out.x.dtype == torch.float32 and out.x.shape == (30, 1, 8, 8) and 0 <= out.x.min() <= out.x.max() <= 1
    assert out.y.dtype == torch.int64 and len(out.y) == 30


@pytest.mark.parametrize("code, message", [
    ("np.savez(sys.argv[2], x=d['x'][:, :, :4], y=d['y'])", r"x has shape \(30, 1, 4, 8\); expected \(N, 1, 8, 8\)"),
    ("np.savez(sys.argv[2], x=d['x'], y=d['y'] + 10)", r"y holds classes 10\.\.19, outside \[0, 10\)"),
    ("np.savez(sys.argv[2], x=np.full(d['x'].shape, np.nan, np.float32), y=d['y'])", "x holds NaN"),
    ("np.savez(sys.argv[2], x=d['x'] * 2.0, y=d['y'])", r"outside \[0, 1\]"),
    ("np.savez(sys.argv[2], x=d['x'])", r"lacks the array\(s\) \['y'\]"),
    ("print('boom', file=sys.stderr); sys.exit(3)", "exited with status 3; stderr tail: boom"),
    ("pass", "wrote no"),
])
def test_a_malformed_output_or_a_failed_command_fails_the_model(tmp_path, code, message):
    with pytest.raises(ModelFailed, match=message):
        _synthesize(_config(tmp_path, _writer(code)))


def test_a_command_past_its_timeout_is_killed(tmp_path):
    with pytest.raises(ModelFailed, match=r"timed out after 1s"):
        _synthesize(_config(tmp_path, [sys.executable, "-c", "import time; time.sleep(60)"], timeout_s=1))


@pytest.mark.parametrize("command, message", [
    ("python3 synth.py {private} {output}", r"command is the string .*; give an argv list instead"),
    (["no-such-program-xyz", "{private}"], r"program 'no-such-program-xyz' is not found on PATH"),
    ([sys.executable, "--out={output}"], r"embeds a placeholder; placeholders are replaced only as whole arguments"),
    ([], "command is not set"),
])
def test_bad_commands_are_refused_when_the_config_loads(tmp_path, command, message):
    with pytest.raises(RayprivError, match=message):
        _config(tmp_path, command)


def test_placeholder_values_with_shell_syntax_are_passed_literally(tmp_path, monkeypatch):
    scratch = tmp_path / "a;b $(touch pwned) `touch pwned2`"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))  # the per-model workdir lives under it
    record = tmp_path / "argv.json"
    code = (f"import json; json.dump(sys.argv[1:], open({str(record)!r}, 'w')); "
            "np.savez(sys.argv[2], x=d['x'], y=d['y'])")
    command = [*_writer(code), "{workdir}", "$(touch pwned3); echo hi", "{model_id}"]
    _synthesize(_config(tmp_path, command), model_id=5)
    private, output, workdir, literal, model_id = json.loads(record.read_text())
    assert workdir.startswith(str(scratch)) and private == f"{workdir}/private.npz" and output == f"{workdir}/synthetic.npz"
    assert (literal, model_id) == ("$(touch pwned3); echo hi", "5")
    assert not list(tmp_path.rglob("pwned*")) and not list(Path.cwd().glob("pwned*"))


@pytest.mark.slow
def test_external_on_ray_a_failing_model_is_reported_and_only_it_is_retried(tmp_path, local_ray):
    marker = tmp_path / "fail-model-3"
    marker.touch()
    raw = tiny_config_dict(
        tmp_path / "run", paradigms=["external"], ray={"num_actors": 2}, **{"train.epochs": 2},
        paradigm_options={"external": {"command": [
            sys.executable, SCRIPT, "{private}", "{output}", "{seed}", "{model_id}",
            "--fail-model", "3", "--fail-while", str(marker),
        ]}},
    )
    # One local Ray (the session's, local_ray) for both runs.
    with pytest.raises(RayprivError) as error:
        run_audit(config_from_dict(raw), use_ray=True, show_progress=False)
    stored = sorted(p.name for p in (tmp_path / "run" / "models" / "external").glob("*.parquet"))
    assert len(stored) == 7 and "model-000003.parquet" not in stored  # the others finished
    assert not (tmp_path / "run" / "metrics.json").exists()
    marker.unlink()
    result = run_audit(config_from_dict(raw), use_ray=True, show_progress=False)
    message = str(error.value)
    assert message.startswith("1 of the 8 models trained now failed, so the run is not scored")
    assert "external #3: external model 3: the external command" in message
    assert "failing on purpose while" in message  # the stderr tail
    assert result.trained_now == 1  # the rerun retried only the failed model
    assert set(result.metrics.paradigm) == {"external"} and sorted(result.models.model_id) == list(range(8))
