"""Reliability: each test reproduces one probe of issue 16 (a hostile new user) and fails without its fix.

Tiny digits audits (8 models × 40 audit samples, 3 epochs) without Ray, except
where Ray is the point.  ``finished`` is one finished run, copied by the tests
that change it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from raypriv.cli import main
from raypriv.config import DatasetConfig
from raypriv.config import from_dict as config_from_dict
from raypriv.data import load_dataset
from raypriv.driver import run_audit
from raypriv.errors import RayprivError
from raypriv.run.directory import LOCK_FILE, RunDirectory
from raypriv.run.fingerprints import Fingerprints
from raypriv.run.format import logits_path, model_row_path
from raypriv.run.store import RunStore
from raypriv.synth import PARADIGMS, build_options
from tests.conftest import cli_error, metric_values, stop_cluster, tiny_config_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished(tiny_run):
    """One finished tiny run (the session's ``tiny_run``): (its directory, its raw config, its metrics)."""
    return tiny_run.path, tiny_run.raw, metric_values(tiny_run.run.metrics_json)


def _copy(finished, destination: Path) -> tuple[Path, dict]:
    source, raw, _ = finished
    shutil.copytree(source, destination)
    return destination, {**raw, "out_dir": str(destination)}


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns) for p in directory.rglob("*") if p.is_file()}


def _write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


# 1. One writer per run directory; one atomic commit per model.


@pytest.mark.slow
def test_1_two_audits_on_one_directory_one_gets_the_lock_error(tmp_path):
    out = tmp_path / "run"
    config = _write_config(tmp_path / "c.yaml", tiny_config_dict(out, n_models=16))
    command = [sys.executable, "-m", "raypriv.cli", "audit", "--config", str(config), "--no-ray", "--quiet"]
    # Both start at once: whichever takes the lease trains; the other must refuse, not train beside it.
    first, second = (subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(2))
    outputs = [(p.wait(timeout=300), *p.communicate()) for p in (first, second)]
    codes = sorted(code for code, _, _ in outputs)
    assert codes == [0, 2], outputs
    winner = next(o for o in outputs if o[0] == 0)
    loser = next(o for o in outputs if o[0] == 2)
    assert "is in use by another raypriv audit" in loser[2] and "--force-unlock" in loser[2]
    assert loser[2].count("error: ") == 1 and "Traceback" not in loser[2]
    # The winner's results are intact: what it printed is what the directory holds, every model once.
    assert (out / "summary.txt").read_text() in winner[1]
    models = pq.read_table(out / "models.parquet").to_pandas()
    assert sorted(models.model_id) == list(range(16))
    assert not (out / LOCK_FILE).exists() and not list(out.rglob(".tmp-*"))


def test_1_a_model_row_commits_exactly_its_own_logits_file(finished, tmp_path):
    out, raw = _copy(finished, tmp_path / "run")
    # Another write (e.g. another recipe's worker) replaced model 3's logits after its row was written.
    shutil.copy(out / logits_path("real", 2), out / logits_path("real", 3))
    config = config_from_dict(raw)
    complete, discarded = RunDirectory(str(out)).completed(config, Fingerprints.of(config))
    assert ("real", 3) not in complete and len(complete) == 7
    assert any("model 3 of real will be retrained" in d and "sha256" in d for d in discarded)


def test_1_a_stale_lease_of_a_dead_process_is_taken_over_and_force_unlock_breaks_a_live_one(finished, tmp_path):
    out, raw = _copy(finished, tmp_path / "run")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_FILE).write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout), "heartbeat": time.time()}))
    run_audit(config_from_dict(raw), use_ray=False, show_progress=False)  # kill -9 left it: resumes
    holder = {"host": "elsewhere", "pid": 1, "heartbeat": time.time()}
    (out / LOCK_FILE).write_text(json.dumps(holder))
    with pytest.raises(RayprivError, match="in use by another raypriv audit .elsewhere pid 1"):
        run_audit(config_from_dict(raw), use_ray=False, show_progress=False)
    run_audit(config_from_dict(raw), use_ray=False, show_progress=False, force_unlock=True)
    assert not (out / LOCK_FILE).exists()


# 2. A refused resume changes nothing.


@pytest.mark.slow
def test_2_a_refused_resume_leaves_the_run_directory_unchanged(tmp_path):
    out = tmp_path / "run"
    options = {"paradigms": ["coreset"], "train.epochs": 2}
    run_audit(config_from_dict(tiny_config_dict(out, paradigm_options={"coreset": {"method": "random", "ipc": 3}}, **options)),
              use_ray=False, show_progress=False)
    before = _snapshot(out)
    changed = config_from_dict(tiny_config_dict(out, paradigm_options={"coreset": {"method": "random", "ipc": 2}}, **options))
    with pytest.raises(RayprivError, match="holds coreset models of another recipe"):
        run_audit(changed, use_ray=False, show_progress=False)
    assert _snapshot(out) == before
    assert "8/8 complete" in RunDirectory(str(out)).status()


# 3. Corrupt results are detected at resume, deleted and retrained.


def test_3_bytes_flipped_inside_a_logits_file_are_retrained_to_the_same_metrics(finished, tmp_path):
    out, raw = _copy(finished, tmp_path / "run")
    target = out / logits_path("real", 3)
    data = bytearray(target.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])  # footer intact
    target.write_bytes(bytes(data))
    result = run_audit(config_from_dict(raw), use_ray=False, show_progress=False)
    assert result.trained_now == 1
    assert any("model-000003" in d and "sha256" in d for d in result.discarded)
    assert metric_values(result.metrics_json) == finished[2]  # bit-identical after the retrain


def test_3_rows_written_before_checksums_still_resume(finished, tmp_path):
    out, raw = _copy(finished, tmp_path / "run")
    for model_id in range(8):  # the rows of an older run directory: no logits_sha256 or row_sha256 column
        path = out / model_row_path("real", model_id)
        pq.write_table(pq.read_table(path).drop(["logits_sha256", "row_sha256"]), path)
    result = run_audit(config_from_dict(raw), use_ray=False, show_progress=False)
    assert result.trained_now == 0 and metric_values(result.metrics_json) == finished[2]


# 4. A relative out_dir inside a Ray job.


def test_4_a_relative_out_dir_inside_a_ray_job_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"metadata": {"job_submission_id": "raysubmit_1"}}))
    with pytest.raises(RayprivError, match="out_dir='runs/x' is a relative path.*Ray job.*absolute path or a URI"):
        run_audit(config_from_dict(tiny_config_dict("runs/x")), use_ray=False, show_progress=False)
    assert not (tmp_path / "runs").exists()


# 5. Non-finite numbers.


@pytest.mark.parametrize("field", ["train.lr", "train.momentum", "train.weight_decay", "dataset.test_fraction"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_5_non_finite_config_numbers_are_refused(tmp_path, field, value):
    with pytest.raises(RayprivError, match=f"config: {field}=.* is not a finite number"):
        config_from_dict(tiny_config_dict(tmp_path, **{field: value}))


def test_5_every_paradigms_float_options_are_checked_for_finiteness():
    import dataclasses
    import typing

    checked = 0
    for name, cls in PARADIGMS.items():
        hints = typing.get_type_hints(cls.Options)
        for option in dataclasses.fields(cls.Options):
            if hints[option.name] in (float, float | None):
                with pytest.raises(RayprivError, match=f"paradigm_options.{name}.{option.name}=inf is not a finite"):
                    build_options(name, {option.name: float("inf")})
                checked += 1
    assert checked >= 10  # dpsgd.epsilon, the dpgen epsilons and deltas, learning rates, ...


def test_5_an_npz_with_nan_features_is_refused_at_load(tmp_path):
    x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    x[7, 2] = np.nan
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(60) % 2)
    with pytest.raises(RayprivError, match="x_train in .* holds NaN or infinite values"):
        load_dataset(DatasetConfig(name="npz", path=str(tmp_path / "d.npz")))


# 6. Limits that crashed: each a bounded range, stated in the error.


def test_6_out_of_range_sizes_and_seeds_are_errors_naming_the_bound(finished, tmp_path, capsys):
    with pytest.raises(RayprivError, match=r"seed=1180591620717411303424 is out of range; integers must lie within ±2147483647"):
        config_from_dict(tiny_config_dict(tmp_path, seed=2**70))
    with pytest.raises(RayprivError, match="n_models=100000000 is above the limit of 100000"):
        config_from_dict(tiny_config_dict(tmp_path, n_models=10**8))
    np.savez(tmp_path / "three.npz", x_train=np.eye(3, dtype=np.float32), y_train=np.array([0, 1, 0]))
    with pytest.raises(RayprivError, match="dataset npz: .*3 rows"):
        load_dataset(DatasetConfig(name="npz", path=str(tmp_path / "three.npz")))
    run = str(finished[0])
    for flags, bound in ((["--bootstrap", "100000000"], "100..10000"), (["--top", "0"], "1..1000"), (["--top", "-3"], "1..1000")):
        assert bound in cli_error(capsys, ["report", run, "--out", str(tmp_path / "r"), *flags])


# 7. A Ray request no node can fit.


@pytest.mark.slow
def test_7_a_request_no_local_node_can_fit_is_an_error_not_a_hang(tmp_path):
    config = _write_config(tmp_path / "c.yaml", tiny_config_dict(tmp_path / "run", **{"ray.num_cpus_per_actor": 1024}))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-m", "raypriv.cli", "audit", "--config", str(config), "--quiet"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "a shadow-model actor asks for 1024 CPUs" in done.stderr and "largest of the cluster's 1 nodes has" in done.stderr


@pytest.mark.slow
def test_7_on_a_fixed_size_cluster_the_same_request_is_an_error(tmp_path, own_ray):
    """A two-node cluster started by hand (no autoscaler node types): refused at once, nothing trained."""
    import ray
    from ray.cluster_utils import Cluster

    from raypriv.cluster import cluster_can_add_nodes

    # Token authentication stays on: this process caches Ray's auth mode, and later tests start token-auth GCSes.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, logging_level="ERROR")
        deadline = time.time() + 30
        while cluster_can_add_nodes() is None and time.time() < deadline:  # the monitor's first status
            time.sleep(0.5)
        assert cluster_can_add_nodes() is False
        config = config_from_dict(tiny_config_dict(tmp_path / "run", **{"ray.num_cpus_per_actor": 4,
                                                                         "ray.address": cluster.address}))
        started = time.time()
        with pytest.raises(RayprivError, match="fixed size .* can never run it") as refused:
            run_audit(config, use_ray=True, show_progress=False)
        assert time.time() - started < 60  # not the autoscaling warning's wait
        assert "a shadow-model actor asks for 4 CPUs" in str(refused.value)
        assert "cluster's 2 nodes has 1 CPUs" in str(refused.value)
        assert not list((tmp_path / "run" / "models").rglob("model-*.parquet"))
    finally:
        ray.shutdown()
        stop_cluster(cluster)


@pytest.mark.parametrize("mapping, pending, groups, expected", [
    ({"ab12": "node_ab12", "cd34": "node_cd34"}, {}, None, False),  # read-only provider: the nodes themselves
    ({"10.0.0.1": "head", "10.0.0.2": "gpu-workers"}, {}, None, True),  # cluster launcher / KubeRay node types
    ({"ab12": "node_ab12"}, {"gpu-workers": 1}, None, True),  # a launch is under way
    ({}, {}, None, None),  # no status yet: cannot tell
    ({"ab12": "node_ab12"}, {}, [(0, -1)], True),  # autoscaler v2 config: an unbounded group
    ({"ab12": "node_ab12"}, {}, [(2, 2)], False),  # v2 config with fixed groups, read-only status
])
def test_7_the_fixed_size_rule_reads_the_autoscalers_state(monkeypatch, mapping, pending, groups, expected):
    import ray
    from ray.core.generated import autoscaler_pb2

    from raypriv import cluster

    status = {"autoscaler_report": {"node_type_mapping": mapping, "pending_launches": pending, "pending_nodes": []}}
    config = None if groups is None else autoscaler_pb2.ClusterConfig(node_group_configs=[
        autoscaler_pb2.NodeGroupConfig(name=f"g{i}", min_count=lo, max_count=hi, resources={"CPU": 8})
        for i, (lo, hi) in enumerate(groups)])
    monkeypatch.setattr(ray._private.state.state, "get_cluster_config", lambda: config)
    monkeypatch.setattr("ray.experimental.internal_kv._internal_kv_get",
                        lambda key: json.dumps(status).encode() if mapping else None)
    assert cluster.cluster_can_add_nodes() is expected


# 8. Environment problems: one error line each, never a traceback.


class _FailingFS:
    """A LocalFileSystem stand-in whose writes fail with ``code`` (after ``after`` successful files)."""

    def __init__(self, fs, code: int, after: int = 0):
        self.fs, self.code, self.after = fs, code, after

    def __getattr__(self, name):
        return getattr(self.fs, name)

    def open_output_stream(self, path):
        if self.after > 0:
            self.after -= 1
            return self.fs.open_output_stream(path)
        stream = self.fs.open_output_stream(path)  # the temporary exists, half-written: it must not be left behind
        stream.write(b"partial")
        stream.close()
        raise OSError(self.code, os.strerror(self.code), path)


def _failing_store(monkeypatch, code: int, after: int = 0) -> None:
    original = RunStore.__init__
    budget = {"after": after}

    def init(self, uri):
        original(self, uri)
        self.fs = _FailingFS(self.fs, code, budget["after"])
        budget["after"] = 0

    monkeypatch.setattr(RunStore, "__init__", init)


def test_8_config_files_that_are_not_utf8_are_one_error_line(tmp_path, capsys):
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_text("n_models: 8\n", encoding="utf-16")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert "is UTF-16 encoded; save it as UTF-8" in cli_error(capsys, ["audit", "--config", str(utf16)])
    assert "is not UTF-8 text" in cli_error(capsys, ["audit", "--config", str(latin)])


def test_8_an_out_that_is_a_file_or_lies_under_one_is_one_error_line(tmp_path, capsys):
    config = _write_config(tmp_path / "c.yaml", tiny_config_dict(tmp_path / "unused"))
    (tmp_path / "afile").write_text("x")
    out_file = str(tmp_path / "afile")
    assert "is a file, not a folder" in cli_error(capsys, ["audit", "--config", str(config), "--out", out_file, "--no-ray"])
    under = str(tmp_path / "afile" / "run")
    assert "which is a file" in cli_error(capsys, ["audit", "--config", str(config), "--out", under, "--no-ray"])
    assert (tmp_path / "afile").read_text() == "x"


def test_8_a_read_only_out_is_one_error_line(tmp_path, capsys, monkeypatch):
    config = _write_config(tmp_path / "c.yaml", tiny_config_dict(tmp_path / "run"))
    _failing_store(monkeypatch, errno.EROFS)
    line = cli_error(capsys, ["audit", "--config", str(config), "--no-ray", "--quiet"])
    assert "read-only; choose a writable --out" in line


@pytest.mark.slow
def test_8_a_full_disk_mid_run_is_one_error_line_and_leaves_no_temporary(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    config = _write_config(tmp_path / "c.yaml", tiny_config_dict(out))
    _failing_store(monkeypatch, errno.ENOSPC, after=6)  # lock, config, run.json, keep, audit, first logits
    line = cli_error(capsys, ["audit", "--config", str(config), "--no-ray", "--quiet"])
    assert "the disk is full" in line and "rerun to resume" in line
    assert not list(out.rglob(".tmp-*")) and not (out / LOCK_FILE).exists()
    monkeypatch.undo()
    assert main(["audit", "--config", str(config), "--no-ray", "--quiet"]) == 0  # and it resumes


def test_8_a_damaged_config_yaml_a_file_as_report_out_and_a_dollar_run_name(finished, tmp_path, capsys, caplog):
    dollar, _ = _copy(finished, tmp_path / "r$\\x$")
    assert main(["report", str(dollar), "--bootstrap", "100"]) == 0  # no mathtext in plot labels
    capsys.readouterr()
    (tmp_path / "report-file").write_text("x")
    assert "choose an --out that is a folder" in cli_error(
        capsys, ["report", str(dollar), "--out", str(tmp_path / "report-file"), "--bootstrap", "100"])
    (dollar / "config.yaml").write_text("name: [unclosed\n")
    # run.json keeps a copy of the config: status and report read it, with a warning naming config.yaml.
    for argv in (["status", str(dollar)], ["report", str(dollar), "--bootstrap", "100"]):
        caplog.clear()
        assert main(argv) == 0
        assert any("config.yaml" in r.getMessage() and "read the copy in run.json" in r.getMessage() for r in caplog.records)
    # A run from before run.json kept that copy: one error line naming the damaged file.
    manifest = json.loads((dollar / "run.json").read_text())
    del manifest["config"]
    RunDirectory(str(dollar)).write_manifest(manifest)
    for argv in (["status", str(dollar)], ["report", str(dollar), "--bootstrap", "100"]):
        assert "config.yaml is not valid YAML" in cli_error(capsys, argv)


# 9. Minor: duplicate keys, a single class, keep.npy's hash, report.md escapes the run name.


def test_9_duplicate_yaml_keys_are_an_error(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("n_models: 8\nn_models: 16\n")
    assert "duplicate key 'n_models'" in cli_error(capsys, ["audit", "--config", str(config)])


def test_9_a_single_class_dataset_is_an_error(tmp_path):
    np.savez(tmp_path / "one.npz", x_train=np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32),
             y_train=np.zeros(50, dtype=np.int64), x_test=np.zeros((5, 3), np.float32), y_test=np.zeros(5, np.int64))
    with pytest.raises(RayprivError, match="single class"):
        load_dataset(DatasetConfig(name="npz", path=str(tmp_path / "one.npz")))


def test_9_a_flipped_bit_in_keep_npy_is_caught_by_report_and_rebuilt_by_audit(finished, tmp_path, capsys):
    out, raw = _copy(finished, tmp_path / "run")
    keep = out / "keep.npy"
    data = bytearray(keep.read_bytes())
    data[-1] ^= 1  # the last membership entry
    keep.write_bytes(bytes(data))
    assert "keep.npy is corrupt" in cli_error(capsys, ["report", str(out), "--bootstrap", "100"])
    result = run_audit(config_from_dict(raw), use_ray=False, show_progress=False)
    assert result.trained_now == 0 and metric_values(result.metrics_json) == finished[2]
    assert np.array_equal(np.load(keep), np.load(finished[0] / "keep.npy"))


def test_9_report_md_escapes_the_run_name(finished, tmp_path):
    run, _ = _copy(finished, tmp_path / "<img src=x onerror=alert(1)>")
    assert main(["report", str(run), "--bootstrap", "100", "--out", str(tmp_path / "report")]) == 0
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "<img src=x" not in markdown and "&lt;img src=x onerror=alert(1)>" in markdown
