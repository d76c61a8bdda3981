from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from raypriv.errors import RayprivError
from raypriv.run.directory import RunDirectory
from raypriv.run.format import logits_path, model_row_path
from raypriv.run.store import RunStore, write_model_result
from raypriv.scoring.read import read_logits


def row(model_id, recipe_hash="abc"):
    return {
        "paradigm": "real", "model_id": model_id, "seed": 0, "recipe_hash": recipe_hash, "in_count": 2,
        "private_size": 10, "synthetic_size": 10, "test_acc": 0.5, "synth_seconds": 0.0, "train_seconds": 1.0,
        "device": "cpu", "info": "{}", "status": "ok", "finished_at": datetime.now(timezone.utc),
    }


def test_logits_round_trip_and_pandas(tmp_path):
    store = RunStore(str(tmp_path))
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 2, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1])
    for m in range(2):
        write_model_result(store, row(m), logits[m], labels)
    np.testing.assert_array_equal(read_logits(store, "real", 2, 5, 2), logits)
    frame = pd.read_parquet(tmp_path / "logits")
    assert set(frame.columns) == {"model_id", "sample_id", "query_id", "label", "logits", "paradigm"}
    assert len(frame) == 2 * 5 * 2 and set(frame.paradigm) == {"real"}
    models = pd.read_parquet(tmp_path / "models")
    assert sorted(models.model_id) == [0, 1]
    assert not list(tmp_path.rglob(".tmp-*"))  # atomic writes leave no temporaries


def test_corrupt_parquet_names_the_file_and_the_fix(tmp_path):
    store = RunStore(str(tmp_path))
    write_model_result(store, row(0), np.zeros((4, 1, 3), np.float32), np.zeros(4, np.int64))
    path = tmp_path / logits_path("real", 0)
    path.write_bytes(path.read_bytes()[:40])  # truncate
    with pytest.raises(RayprivError) as error:
        read_logits(store, "real", 1, 4, 1)
    assert str(path) in str(error.value) and "corrupt or truncated" in str(error.value)
    assert "rerun `raypriv audit`" in str(error.value)


def test_resume_scan_discards_bad_results(tmp_path):
    store = RunStore(str(tmp_path))
    for m in range(4):
        write_model_result(store, row(m), np.zeros((4, 1, 3), np.float32), np.zeros(4, np.int64))
    (tmp_path / logits_path("real", 1)).write_bytes(b"PAR1 garbage")
    (tmp_path / logits_path("real", 2)).unlink()
    (tmp_path / model_row_path("real", 3)).write_bytes(b"")
    scan = RunDirectory(store.uri).scan("real", "abc", expected_rows=4)
    assert sorted(scan.complete) == [0]
    assert len(scan.discarded) == 3
    assert not (tmp_path / logits_path("real", 1)).exists()  # removed so the model is retrained
    with pytest.raises(RayprivError, match="holds real models of another recipe"):
        RunDirectory(store.uri).scan("real", "other-hash", 4)


def test_store_works_through_a_pyarrow_uri(tmp_path):
    store = RunStore(f"file://{tmp_path}/run")
    write_model_result(store, row(0), np.ones((3, 2, 4), np.float32), np.zeros(3, np.int64))
    assert store.list_files("models", ".parquet") == ["models/real/model-000000.parquet"]
    np.testing.assert_array_equal(read_logits(store, "real", 1, 3, 2), np.ones((1, 3, 2, 4), np.float32))
    assert (tmp_path / "run" / "logits" / "paradigm=real" / "model-000000.parquet").is_file()
    with pytest.raises(RayprivError, match="cannot open run directory"):
        RunStore("nosuchscheme://bucket/run")


@pytest.mark.slow
def test_a_version_1_run_resumes_and_is_upgraded(tmp_path):
    """Version 1 differs only in scores.parquet, which scoring rewrites: old runs keep their models."""
    import json

    from raypriv.config import from_dict as config_from_dict
    from raypriv.driver import run_audit
    from raypriv.run.directory import RunDirectory
    from tests.conftest import tiny_config_dict

    config = config_from_dict(tiny_config_dict(tmp_path / "run", attacks=["loss"]))
    first = run_audit(config, use_ray=False, show_progress=False)
    manifest_path = tmp_path / "run" / "run.json"
    manifest = json.loads(manifest_path.read_text())
    # A version-1 run.json, as that raypriv wrote it: without the checksum fields added since.
    version_1 = {k: v for k, v in manifest.items() if k not in ("manifest_sha256", "outputs_sha256", "config")}
    manifest_path.write_text(json.dumps({**version_1, "schema_version": 1}))
    again = run_audit(config, use_ray=False, show_progress=False)
    assert again.trained_now == 0 and again.metrics_json["real"]["loss"] == first.metrics_json["real"]["loss"]
    assert json.loads(manifest_path.read_text())["schema_version"] == 2
    # A run of a newer raypriv (schema 99), its run.json intact: refused, not rebuilt.
    RunDirectory(str(tmp_path / "run")).write_manifest({**manifest, "schema_version": 99})
    with pytest.raises(RayprivError, match="store schema 99"):
        run_audit(config, use_ray=False, show_progress=False)
