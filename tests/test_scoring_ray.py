"""scoring.backend: ray gives the local backend's files: on a local Ray, on a 3-node cluster, with a node lost, on bad input."""

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import ray
import ray.data
from ray.cluster_utils import Cluster

import raypriv.scoring.ray_data
from raypriv.config import from_dict as config_from_dict
from raypriv.data import load_dataset
from raypriv.driver import run_audit
from raypriv.errors import RayprivError
from raypriv.run.directory import RunDirectory
from raypriv.run.fingerprints import config_hash, protocol_hash
from raypriv.run.format import logits_path
from raypriv.run.store import RunStore
from raypriv.scoring import ScoringPlan, score_run
from raypriv.scoring.logits_dataset import logits_dataset
from raypriv.split import make_audit_split
from tests.conftest import stop_cluster, stop_shared_ray, tiny_config_dict

RUNS = {"default": {"train.epochs": 2}, "paradigms": {"train.epochs": 2, "paradigms": ["real", "coreset"]},
        "population": {"train.epochs": 2, "audit.n_population": 25},  # RMIA's z from a population set
        # RMIA's own tempered channels, a vote over two queries, z from a population set, the reference code's read-out
        "rmia-options": {"train.epochs": 2, "queries": ["identity", "hflip"], "audit.n_population": 25,
                         "rmia.temperature": 2.0, "rmia.gamma": 2.0, "audit.tpr_readout": "below"}}
CLUSTER_RUNS = ("default", "paradigms")  # the two runs


def config(out_dir, name, backend="local"):
    return config_from_dict(tiny_config_dict(out_dir, **RUNS[name], **{"scoring.backend": backend}))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each run trained once (no Ray) and scored by the local backend: the reference files."""
    root = tmp_path_factory.mktemp("scoring-ray")
    for name in RUNS:
        run_audit(config(root / name, name), use_ray=False, show_progress=False)
    return root


def split_of(cfg):
    return make_audit_split(load_dataset(cfg.dataset), cfg.audit.n_audit, cfg.audit.canary, cfg.n_models, cfg.seed,
                            n_population=cfg.audit.n_population)


def inputs(cfg):
    """score_run's arguments for a finished run directory, as the audit builds them."""
    store = RunStore(cfg.out_dir)
    plan = ScoringPlan.from_config(cfg, split_of(cfg), store_uri=store.uri)
    return plan, store, pd.read_parquet(f"{cfg.out_dir}/models.parquet")


def backend_of(cfg, store):
    """The backend a plan resolves ``scoring.backend`` to (no fingerprints needed for that)."""
    return ScoringPlan.from_config(cfg, split_of(cfg), recipe_hashes={}, store_uri=store.uri).backend


def local_gb(cfg):
    return ScoringPlan.from_config(cfg, split_of(cfg), recipe_hashes={}).local_gb()


def rescore(runs, name, dest, **kwargs):
    """A copy of the run with its scores deleted, scored again by the Ray backend."""
    shutil.copytree(runs / name, dest)
    for written in ("metrics.json", "scores.parquet", "metrics.csv"):
        (dest / written).unlink()
    cfg = config(dest, name, "ray")
    score_run(*inputs(cfg), **kwargs)
    return dest


def assert_same_files(reference, other):
    assert (other / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()
    assert (other / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()
    assert (other / "scores.parquet").is_dir() and not (reference / "scores.parquet").is_dir()  # Ray Data's write_parquet
    pd.testing.assert_frame_equal(pd.read_parquet(other / "scores.parquet"), pd.read_parquet(reference / "scores.parquet"))


@pytest.mark.slow
def test_a_ray_scores_folder_reads_as_the_local_file(runs, tmp_path):
    """The report's and the Python API's readers take scores.parquet as a file or a folder, schema version included."""
    import pyarrow.dataset as pads

    from raypriv import load_run
    from raypriv.reader import Run
    from raypriv.report.build import load_scores

    local = runs / "paradigms" / "scores.parquet"
    folder = tmp_path / "run"
    shutil.copytree(runs / "paradigms", folder)
    (folder / "scores.parquet").unlink()
    (folder / "scores.parquet").mkdir()
    table = pq.read_table(local)
    for part, (start, stop) in enumerate([(0, 100), (100, len(table))]):  # two files, as write_parquet's tasks leave them
        pq.write_table(table.slice(start, stop - start), folder / "scores.parquet" / f"part-000-{part:06d}-x-0.parquet")
    RunDirectory(str(folder)).record_outputs()  # the folder's sha256 in run.json, as the Ray backend's audit records it
    pd.testing.assert_frame_equal(load_run(folder).scores(), load_run(runs / "paradigms").scores())
    attacks = ["loss", "rmia"]
    for got, expected in zip(load_scores(Run.open(str(folder)), "coreset", attacks),
                             load_scores(Run.open(str(runs / "paradigms")), "coreset", attacks), strict=True):
        np.testing.assert_array_equal(got, expected) if isinstance(got, np.ndarray) else \
            [np.testing.assert_array_equal(got[a], expected[a]) for a in attacks]
    assert pads.dataset(folder / "scores.parquet").schema.names == table.schema.names


def test_backend_choice_and_hashes(tmp_path):
    local, ray_cfg = config(tmp_path, "default"), config(tmp_path, "default", "ray")
    assert config_hash(local) == config_hash(ray_cfg) and protocol_hash(local) == protocol_hash(ray_cfg)
    store = RunStore(str(tmp_path))
    assert backend_of(local, store) == "local" and backend_of(ray_cfg, store) == "ray"
    auto = config_from_dict(tiny_config_dict(tmp_path, **{"scoring.backend": "auto"}))
    assert backend_of(auto, store) == "local"  # 8 x 40 scores
    auto.scoring.driver_memory_gb = 1e-6
    assert backend_of(auto, store) == "ray"
    # What the local backend holds: 8 x 40 x Q float32 LiRA scores, then per pair the loss input, a float32
    # output per attack and a float64 staging per RMIA variant.
    n_rmia = sum(a.startswith("rmia") for a in auto.attacks)
    expected = 8 * 40 * len(auto.queries) * 4 + 8 * 40 * (4 + 4 * len(auto.attacks) + 8 * n_rmia)
    assert n_rmia == 2 and local_gb(auto) * 2**30 == expected
    auto.scoring.driver_memory_gb = local_gb(auto)
    assert backend_of(auto, store) == "local"  # at the threshold, not above it
    with pytest.raises(RayprivError, match="scoring.num_cpus"):
        config_from_dict(tiny_config_dict(tmp_path, **{"scoring.num_cpus": 0}))


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")  # the session's local Ray (conftest)
class TestLocalRay:
    @pytest.mark.parametrize("name", list(RUNS))
    def test_same_files_as_the_local_backend(self, runs, tmp_path, name):
        dest = rescore(runs, name, tmp_path / name)
        assert_same_files(runs / name, dest)
        written = pq.read_schema(next((dest / "scores.parquet").iterdir()))
        assert written.metadata[b"raypriv_schema_version"] == b"2"  # the store's version, as the local file has

    def test_audit_with_backend_ray_scores_on_ray(self, runs, tmp_path, monkeypatch, caplog):
        """The audit's scoring runs on Ray with the audit's progress: Ray Data's bars, and the metrics tasks' count."""
        dest = tmp_path / "run"
        shutil.copytree(runs / "default", dest)
        (dest / "metrics.json").unlink()
        called = []
        configure = raypriv.scoring.ray_data.ray_data_settings
        monkeypatch.setattr("raypriv.scoring.ray_data.ray_data_settings", lambda show: (called.append(show), configure(show))[1])
        caplog.set_level(logging.INFO, logger="raypriv")
        context = ray.data.DataContext.get_current()
        before = (context.shuffle_strategy, context.enable_progress_bars, context.execution_options.preserve_order)
        run_audit(config(dest, "default", "ray"), use_ray=False, show_progress=True)
        assert called == [True] and (dest / "metrics.json").read_bytes() == (runs / "default" / "metrics.json").read_bytes()
        after = (context.shuffle_strategy, context.enable_progress_bars, context.execution_options.preserve_order)
        assert after == before and before[2] is False  # the user's own Ray Data settings, back as they were
        counts = [re.fullmatch(r"scoring real: metrics: (\d+)/(\d+) \([\d.]+ tasks/min, ETA \d+s\)", r.getMessage())
                  for r in caplog.records if r.getMessage().startswith("scoring real: metrics:")]
        assert counts and all(counts) and counts[-1][1] == counts[-1][2]  # the last line: every task done

    def test_corrupt_logits_give_the_local_error(self, runs, tmp_path):
        shutil.copytree(runs / "default", tmp_path / "run")
        broken = tmp_path / "run" / logits_path("real", 3)
        broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
        errors = {}
        for backend in ("local", "ray"):
            cfg = config(tmp_path / "run", "default", backend)
            with pytest.raises(RayprivError) as caught:
                score_run(*inputs(cfg))
            errors[backend] = caught.value
        assert type(errors["ray"]) is RayprivError and str(errors["ray"]) == str(errors["local"])
        assert str(broken) in str(errors["ray"]) and "Traceback" not in str(errors["ray"])

    def test_logits_dataset_and_the_analysis_script(self, runs, tmp_path):
        dataset = logits_dataset(str(runs / "paradigms"))
        frame = dataset.to_pandas()
        assert sorted(frame.paradigm.unique()) == ["coreset", "real"] and len(frame) == 2 * 8 * 40
        script = Path(__file__).parents[1] / "analysis" / "cluster_canary_confidence.py"
        env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}  # this test's Ray, as a user's cluster
        done = subprocess.run([sys.executable, str(script), str(runs / "paradigms"), str(tmp_path)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        table = pd.read_csv(tmp_path / "canary_confidence.csv")
        # The same statistic with pandas on the raw rows.
        keep = np.load(runs / "paradigms" / "keep.npy")
        logits = np.stack(frame.logits.to_numpy()).astype(np.float64)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        frame["confidence"] = (p / p.sum(axis=1, keepdims=True))[np.arange(len(frame)), frame.label.to_numpy()]
        frame["is_in"] = keep[frame.model_id, frame.sample_id]
        expected = frame.groupby(["paradigm", "sample_id", "is_in"]).confidence.mean().unstack()
        got = table.set_index(["paradigm", "sample_id"])
        np.testing.assert_allclose(got.conf_in, expected[True].loc[got.index], rtol=1e-12)
        np.testing.assert_allclose(got.conf_out, expected[False].loc[got.index], rtol=1e-12)


@pytest.mark.slow
class TestCluster:
    @pytest.fixture(scope="class")
    def cluster(self):
        """A head with no CPUs (as the cluster configs start it) and two 1-CPU worker nodes."""
        stop_shared_ray()  # this process joins the cluster instead
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        yield cluster, workers
        ray.shutdown()
        stop_cluster(cluster)

    def test_same_files_on_a_cluster_with_a_cpu_less_head(self, cluster, runs, tmp_path):
        for name in CLUSTER_RUNS:
            assert_same_files(runs / name, rescore(runs, name, tmp_path / name))

    @pytest.mark.parametrize("when", ["blocks", "attacks"])
    def test_a_worker_node_removed_mid_scoring(self, cluster, runs, tmp_path, when):
        """After the sample blocks (then: the per-target rows the metrics and write_parquet read) are
        materialized, half of them on the node removed; Ray rebuilds them from their lineage."""
        cluster, workers = cluster
        workers.append(cluster.add_node(num_cpus=1))  # replaces the node this test removes
        cluster.wait_for_nodes()
        removed = []

        def remove_a_worker(stage):
            if stage == when and not removed:
                cluster.remove_node(workers.pop(0))
                removed.append(stage)

        assert_same_files(runs / "paradigms", rescore(runs, "paradigms", tmp_path / "run", on_stage=remove_a_worker))
        assert removed
