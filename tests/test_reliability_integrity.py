"""Nothing silently wrong, part 1 (files a run reads): each test reproduces one probe and fails without its fix.

The tiny session run (``tiny_run`` in conftest.py), copied before it is damaged.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

import raypriv
from raypriv.cli import main
from raypriv.config import from_dict
from raypriv.driver import run_audit
from raypriv.errors import RayprivError
from raypriv.run.directory import RunDirectory
from raypriv.run.format import logits_path, model_row_path
from raypriv.run.store import RunStore, write_model_result
from tests.conftest import cli_error, metric_values


def _copy(tiny_run, destination):
    shutil.copytree(tiny_run.path, destination)
    return destination, {**tiny_run.raw, "out_dir": str(destination)}


def test_a_stray_copy_of_a_model_row_is_ignored_with_a_warning(tiny_run, tmp_path, capsys, caplog):
    """Probe: a stray ``models/real/model-000003 (1).parquet`` gave a traceback in status and audit."""
    out, raw = _copy(tiny_run, tmp_path / "run")
    stray = out / "models" / "real" / "model-000003 (1).parquet"
    shutil.copy(out / model_row_path("real", 3), stray)
    assert main(["status", str(out)]) == 0
    assert "8/8 complete" in capsys.readouterr().out
    result = run_audit(from_dict(raw), use_ray=False, show_progress=False)
    assert result.trained_now == 0 and metric_values(result.metrics_json) == metric_values(tiny_run.run.metrics_json)
    assert any("model-000003 (1).parquet" in r.getMessage() and "not a file raypriv writes" in r.getMessage()
               for r in caplog.records)
    assert stray.exists()  # ignored, never deleted: it is the user's file


def test_a_model_row_naming_another_paradigm_is_retrained(tiny_run, tmp_path):
    """Probe: a flipped bit turned ``real`` into ``ream`` in a row, and metrics.json said n_models 7."""
    out, raw = _copy(tiny_run, tmp_path / "run")
    path = out / model_row_path("real", 5)
    table = pq.read_table(path).drop(["row_sha256"])  # a row of an older run: no checksum of its own to catch it
    pq.write_table(table.set_column(table.schema.get_field_index("paradigm"), "paradigm", pa.array(["ream"])), path)
    result = run_audit(from_dict(raw), use_ray=False, show_progress=False)
    assert result.trained_now == 1
    assert any("model 5 of real will be retrained" in d and "'ream'" in d for d in result.discarded)
    assert result.results["real"].n_models == 8
    assert metric_values(result.metrics_json) == metric_values(tiny_run.run.metrics_json)  # retrained bit for bit


def test_report_refuses_scores_whose_membership_disagrees_with_keep(tiny_run, tmp_path, capsys):
    """Probe: scores.parquet with is_in inverted (or another run's) gave a report with an AUC outside its interval."""
    out, _ = _copy(tiny_run, tmp_path / "run")
    table = pq.read_table(out / "scores.parquet")
    column = table.schema.get_field_index("is_in")
    pq.write_table(table.set_column(column, "is_in", pc.invert(table.column("is_in"))), out / "scores.parquet")
    assert main(["report", str(out), "--bootstrap", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scores.parquet differ from the sha256 run.json records" in err[0]
    # A run written before run.json recorded its outputs' checksums: the membership check still refuses it.
    manifest = json.loads((out / "run.json").read_text())
    del manifest["outputs_sha256"]
    RunDirectory(str(out)).write_manifest(manifest)
    assert main(["report", str(out), "--bootstrap", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "disagrees with keep.npy" in err[0]
    assert "rerun `raypriv audit`" in err[0]


def _flip_row_field(path, field, value):
    table = pq.read_table(path)
    column = table.schema.get_field_index(field)
    pq.write_table(table.set_column(column, field, pa.array([value], table.schema.field(field).type)), path)


def test_a_flipped_bit_in_a_rows_test_acc_is_retrained_not_reported(tiny_run, tmp_path):
    """Probe: one flipped bit in a row's test_acc gave "test acc 0.941 ± 0.273" with exit 0."""
    out, raw = _copy(tiny_run, tmp_path / "run")
    path = out / model_row_path("real", 2)
    test_acc = pq.read_table(path).column("test_acc")[0].as_py()
    _flip_row_field(path, "test_acc", test_acc + 2.0**-3)  # one bit of the float's mantissa, roughly
    result = run_audit(from_dict(raw), use_ray=False, show_progress=False)
    assert result.trained_now == 1 and any("row's own sha256" in d for d in result.discarded)
    assert metric_values(result.metrics_json) == metric_values(tiny_run.run.metrics_json)


def test_a_flipped_byte_in_a_rows_recipe_hash_is_retrained_not_blamed_on_the_options(tiny_run, tmp_path):
    """Probe: a flipped bit in one row's recipe_hash blamed "paradigm_options changed" and advised deleting every model."""
    out, raw = _copy(tiny_run, tmp_path / "run")
    path = out / model_row_path("real", 6)
    recipe = pq.read_table(path).column("recipe_hash")[0].as_py()
    _flip_row_field(path, "recipe_hash", ("0" if recipe[0] != "0" else "1") + recipe[1:])
    result = run_audit(from_dict(raw), use_ray=False, show_progress=False)
    assert result.trained_now == 1 and any("model 6 of real will be retrained" in d for d in result.discarded)
    assert metric_values(result.metrics_json) == metric_values(tiny_run.run.metrics_json)


def test_a_flipped_bit_in_metrics_json_is_refused_by_report_flagged_by_status_and_rebuilt_by_audit(tiny_run, tmp_path,
                                                                                                    capsys):
    """Probe: metrics.json with AUC 0.562 turned into 0.162 was reported without complaint; status said "written"."""
    out, raw = _copy(tiny_run, tmp_path / "run")
    path = out / "metrics.json"
    path.write_text(path.read_text().replace('"auc": 0.', '"auc": 1.', 1))
    assert main(["report", str(out), "--bootstrap", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metrics.json differ from the sha256 run.json records" in err[0]
    assert main(["status", str(out)]) == 0
    assert "metrics.json differ from the sha256 run.json records (damaged)" in capsys.readouterr().out
    result = run_audit(from_dict(raw), use_ray=False, show_progress=False)  # rescoring rebuilds it
    assert result.trained_now == 0 and path.read_bytes() == (tiny_run.path / "metrics.json").read_bytes()
    assert main(["report", str(out), "--bootstrap", "100", "--out", str(tmp_path / "report")]) == 0


def test_another_runs_audit_parquet_is_rebuilt_from_the_seed(tiny_run, tmp_path):
    """Probe: another run's audit.parquet gave a wrong vulnerable-samples section."""
    out, raw = _copy(tiny_run, tmp_path / "run")
    table = pq.read_table(out / "audit.parquet")
    labels = table.column("label").to_numpy()
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", pa.array((labels + 1) % 10)),
                   out / "audit.parquet")
    with pytest.raises(RayprivError, match="audit.parquet differ from the sha256"):
        raypriv.load_run(out)
    run_audit(from_dict(raw), use_ray=False, show_progress=False)
    assert (out / "audit.parquet").read_bytes() == (tiny_run.path / "audit.parquet").read_bytes()
    raypriv.load_run(out)  # intact again


@pytest.mark.parametrize("content", [b"[]", b"garbage{", b"{}", b"", b'{"schema_version": "\xe5"}'])
def test_a_damaged_run_json_is_one_error_line_and_audit_rebuilds_it(tiny_run, tmp_path, capsys, content):
    """Probes: run.json holding [] gave a traceback; a garbage one said "delete it and rerun", after which the run
    was refused for good instead of rebuilt."""
    out, raw = _copy(tiny_run, tmp_path / "run")
    (out / "run.json").write_bytes(content)
    for argv in (["status", str(out)], ["report", str(out), "--bootstrap", "100"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "run.json" in err[0], err
    result = run_audit(from_dict(raw), use_ray=False, show_progress=False)
    assert result.trained_now == 0 and metric_values(result.metrics_json) == metric_values(tiny_run.run.metrics_json)
    assert json.loads((out / "run.json").read_text())["protocol_hash"] == result.manifest["protocol_hash"]
    assert main(["status", str(out)]) == 0 and "metrics.json is written" in capsys.readouterr().out


def test_an_empty_keep_npy_is_refused_by_report_and_rebuilt_by_audit(tiny_run, tmp_path, capsys):
    """Probe: an empty keep.npy bypassed the hash check with a traceback."""
    out, raw = _copy(tiny_run, tmp_path / "run")
    (out / "keep.npy").write_bytes(b"")
    assert main(["report", str(out), "--bootstrap", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "keep.npy is corrupt" in err[0]
    run_audit(from_dict(raw), use_ray=False, show_progress=False)
    assert (out / "keep.npy").read_bytes() == (tiny_run.path / "keep.npy").read_bytes()


@pytest.mark.parametrize("damage", ["delete", "empty"])
def test_a_missing_or_empty_config_yaml_is_read_from_run_json_and_rewritten(tiny_run, tmp_path, capsys, damage):
    """Probe: an empty or deleted config.yaml made status report "0/64 complete" (the defaults)."""
    out, raw = _copy(tiny_run, tmp_path / "run")
    if damage == "delete":
        (out / "config.yaml").unlink()
    else:
        (out / "config.yaml").write_text("")
    assert main(["status", str(out)]) == 0
    assert "8/8 complete" in capsys.readouterr().out
    run_audit(from_dict(raw), use_ray=False, show_progress=False)
    rewritten, original = (yaml.safe_load((path / "config.yaml").read_text()) for path in (out, tiny_run.path))
    assert {**rewritten, "out_dir": None} == {**original, "out_dir": None} and rewritten["out_dir"] == str(out)


def test_a_flipped_bit_in_run_json_is_damage_that_audit_rebuilds_not_another_protocol(tiny_run, tmp_path, capsys):
    """A bit flipped inside a valid run.json (here in its protocol hash) must not read as another run's protocol."""
    out, raw = _copy(tiny_run, tmp_path / "run")
    text = (out / "run.json").read_text()
    protocol = json.loads(text)["protocol_hash"]
    (out / "run.json").write_text(text.replace(protocol, ("0" if protocol[0] != "0" else "1") + protocol[1:]))
    assert main(["status", str(out)]) == 2
    assert "its own sha256 differs" in capsys.readouterr().err
    result = run_audit(from_dict(raw), use_ray=False, show_progress=False)
    assert result.trained_now == 0 and json.loads((out / "run.json").read_text())["protocol_hash"] == protocol


def test_a_run_refused_for_its_data_changes_nothing_in_the_run_directory(tiny_run, tmp_path, capsys):
    """Probe: ``paradigms: [dpgen-marginals]`` on digits was refused only after config.yaml and run.json were rewritten."""
    out, raw = _copy(tiny_run, tmp_path / "run")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**raw, "paradigms": ["real", "dpgen-marginals"]}))
    assert main(["audit", "--config", str(config), "--no-ray", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dpgen-marginals generates tabular records" in err[0]
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_stored_model_with_non_finite_logits_is_one_error_line_not_a_traceback(tiny_run, tmp_path, capsys):
    """Probe: NaN logits stored as a complete model (before divergence was refused) crashed scoring on every rerun."""
    out, raw = _copy(tiny_run, tmp_path / "run")
    store = RunStore(str(out))
    row = pq.read_table(out / model_row_path("real", 4)).to_pylist()[0]
    logits = pq.read_table(out / logits_path("real", 4))
    n_audit, n_queries = raw["audit"]["n_audit"], len(tiny_run.run.manifest["queries"])
    nan = np.full((n_audit, n_queries, 10), np.nan, dtype=np.float32)
    labels = np.asarray(logits.column("label").to_numpy()[::n_queries][:n_audit])
    write_model_result(store, row, nan, labels)  # what an older raypriv stored for a diverged model
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["audit", "--config", str(config), "--no-ray", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite logits (model 4 of real diverged" in err[0] and "model-000004.parquet" in err[0]


def test_unknown_files_in_the_run_directory_are_ignored_with_a_warning(tiny_run, tmp_path, caplog):
    out, raw = _copy(tiny_run, tmp_path / "run")
    (out / "notes.txt").write_text("my notes")
    (out / "scores (copy).parquet").write_bytes((out / "scores.parquet").read_bytes())
    result = run_audit(from_dict(raw), use_ray=False, show_progress=False)
    assert result.trained_now == 0 and metric_values(result.metrics_json) == metric_values(tiny_run.run.metrics_json)
    warned = [r.getMessage() for r in caplog.records if "not a file raypriv writes" in r.getMessage()]
    assert any("notes.txt" in w for w in warned) and any("scores (copy).parquet" in w for w in warned)
    assert (out / "notes.txt").read_text() == "my notes"  # the user's file, never deleted


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_an_empty_or_truncated_scores_parquet_of_an_older_run_is_one_error_line(tiny_run, tmp_path, capsys, damage):
    """Probe: an empty or truncated scores.parquet gave report a traceback (here a run from before output checksums)."""
    out, _ = _copy(tiny_run, tmp_path / "run")
    directory = RunDirectory(str(out))
    manifest = directory.manifest()
    del manifest["outputs_sha256"]
    directory.write_manifest(manifest)
    data = (out / "scores.parquet").read_bytes()
    (out / "scores.parquet").write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    assert "scores.parquet is corrupt or truncated" in cli_error(capsys, ["report", str(out), "--bootstrap", "100"])
