import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch

from raypriv.config import from_dict as config_from_dict

# Ray's local instance must not try to reach the network or grab every core for the dashboard.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Tests that call paradigms directly share 2 cores with Ray workers; oversubscribed
# small convolutions run many times slower, and one thread is deterministic.
torch.set_num_threads(1)


def tiny_config_dict(out_dir, **overrides):
    """A digits audit small enough to train in seconds."""
    raw = {
        "name": "tiny",
        "out_dir": str(out_dir),
        "n_models": 8,
        "audit": {"n_audit": 40, "canary": "mislabel"},
        "model": {"arch": "cnn_small", "width": 8},
        "train": {"epochs": 3, "batch_size": 256},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
            continue
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return raw


def cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI in process; it must exit 2 with exactly one ``error:`` line on stderr (and no traceback)."""
    from raypriv.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


def metric_values(metrics):
    """Every number of a metrics.json, keyed (paradigm, attack, metric), for exact comparisons."""
    return {(p, a, k): v for p, e in metrics.items() for a, m in e.items() if isinstance(m, dict) for k, v in m.items()}


@pytest.fixture
def tiny_config(tmp_path):
    return config_from_dict(tiny_config_dict(tmp_path / "run"))


def build_once(tmp_path_factory, name: str, build) -> Path:
    """``build(path)`` once per test session, shared by every pytest-xdist worker; returns ``path``.

    Each xdist worker is a session of its own: the first to take the lock builds
    under the workers' common base temp, the others wait for it and reuse the
    result (the pattern of pytest-xdist's docs).  A build that failed is retried
    from scratch by the next caller.  Callers only read the result; a test that
    changes it works on a copy (``shutil.copytree``).
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    path, done = base / name, base / f"{name}.done"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            if path.exists():
                shutil.rmtree(path)
            build(path)
            done.touch()
    return path


class TinyRun(NamedTuple):
    path: Path  # the finished run directory: read it, or copy it to change it
    raw: dict[str, Any]  # its config: tiny_config_dict(path)
    run: Any  # raypriv.load_run(path)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """The tiny audit (``tiny_config_dict`` as it is: 8 models, no Ray), trained once for the whole session.

    Read-only: a test that changes the run copies it first, e.g.
    ``shutil.copytree(tiny_run.path, tmp_path / "run")`` with ``{**tiny_run.raw, "out_dir": ...}``.
    """
    import raypriv
    from raypriv.driver import run_audit

    def build(root):
        run_audit(config_from_dict(tiny_config_dict(root / "run")), use_ray=False, show_progress=False)

    path = build_once(tmp_path_factory, "tiny-run", build) / "run"
    return TinyRun(path, tiny_config_dict(path), raypriv.load_run(path))


def distill_paradigm(options: dict):
    """The ``distill`` paradigm with ``options`` on the tiny config (the pack tests' single runs and packs)."""
    from raypriv.synth import make_paradigm

    config = config_from_dict(tiny_config_dict("/tmp/unused", paradigms=["distill"], paradigm_options={"distill": options}))
    return make_paradigm(config, "distill")


def overlapping_privates(digits_private, count: int, stride: int = 40) -> list:
    """``count`` private sets of 200 digits from the ``digits_private`` fixture, pipeline p's starting at ``stride * p``
    (overlapping, as shadow models' private sets do); the pack tests' K pipelines."""
    from raypriv.synth import LabeledSet

    private, _ = digits_private
    return [LabeledSet(private.x[stride * p : stride * p + 200], private.y[stride * p : stride * p + 200])
            for p in range(count)]


def check_a_missing_class_fails_alone(paradigm, digits_private, synthesize_pack) -> None:
    """Pipeline 1 of a pack of three loses class 3: ``synthesize_pack(privates, contexts)`` must return the single
    run's error for it, and for pipelines 0 and 2 their single runs' sets (to 1e-5)."""
    from raypriv.errors import RayprivError
    from raypriv.synth import LabeledSet

    _, make_context = digits_private
    privates = overlapping_privates(digits_private, 3)
    keep = privates[1].y != 3
    privates[1] = LabeledSet(privates[1].x[keep], privates[1].y[keep])
    packed = synthesize_pack(privates, [make_context(m) for m in (0, 1, 2)])
    assert isinstance(packed[1], RayprivError) and "no samples of class 3" in str(packed[1])
    with pytest.raises(RayprivError, match="no samples of class 3"):
        paradigm.synthesize(privates[1], make_context(1))
    for p in (0, 2):
        alone = paradigm.synthesize(privates[p], make_context(p))
        assert (alone.x - packed[p].x).abs().max() <= 1e-5


@pytest.fixture(scope="module")
def digits_private():
    """A private set of 300 digits (uint8) and a context factory for it (``distill`` shadow models).

    Shared by tests/test_synth_distill.py and tests/test_synth_distill_mtt.py.
    """
    from raypriv.config import DatasetConfig
    from raypriv.data import load_dataset
    from raypriv.synth import LabeledSet, ShadowContext
    from raypriv.training import Normalizer

    shape = (1, 8, 8)  # the digits' images
    data = load_dataset(DatasetConfig())
    private = LabeledSet(torch.tensor(data.x_train[:300]), torch.tensor(data.y_train[:300]))
    normalizer = Normalizer.fit(data.x_train)
    config = config_from_dict(tiny_config_dict("/tmp/unused", paradigms=["distill"]))

    def context(model_id: int = 0) -> ShadowContext:
        return ShadowContext(config, "distill", model_id, 10, shape, normalizer, torch.device("cpu"))

    return private, context


class _SharedRay:
    """One local Ray per test process, started by the first test that asks for it and kept for the next."""

    started = False

    def start(self) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(address="local", num_cpus=2, include_dashboard=False)
            self.started = True

    def stop(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False


_SHARED_RAY = _SharedRay()


def stop_shared_ray() -> None:
    """Stop the shared local Ray (if this process runs it): for a test or fixture that starts its own cluster."""
    _SHARED_RAY.stop()


@pytest.fixture(scope="session")
def _shared_ray_session():
    yield _SHARED_RAY
    _SHARED_RAY.stop()


@pytest.fixture
def local_ray(_shared_ray_session):
    """A local Ray (2 CPUs, no dashboard) shared by the tests that need no cluster of their own.

    Starting Ray costs several seconds, so it stays up after the test; a
    test that starts its own cluster asks for ``own_ray``, which stops it.
    ``run_audit(use_ray=True)`` joins it and leaves it running.
    """
    _shared_ray_session.start()
    yield


@pytest.fixture
def own_ray(_shared_ray_session):
    """No Ray in this process when the test starts: it starts (and shuts down) a cluster of its own."""
    _shared_ray_session.stop()
    yield


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_jobs_head(tmp_path_factory):
    """A throwaway Ray head on loopback without token authentication, shared by the tests that submit jobs.

    Yields ``submit(entrypoint, runtime_env) -> logs``: one job through the Jobs
    API, returning its logs once it succeeded.  Starting the head and its job
    agent is most of such a test's time, so the session pays it once.
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    log_path = tmp_path_factory.mktemp("ray-head") / "head.log"
    dashboard = _free_port()
    # Every port Ray would otherwise take at its default: the suite runs two workers (pytest-xdist), and
    # another test's Ray may hold 52365 (the job agent) or 10001 (the client server).
    ports = [f"--{name}={_free_port()}" for name in (
        "port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "ray-client-server-port",
        "metrics-export-port", "runtime-env-agent-port")]
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", *ports,
         "--num-cpus=2", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--disable-usage-stats"],
        stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"},
    )

    def submit(entrypoint: str, runtime_env: dict) -> str:
        client, deadline = None, time.time() + 90
        while client is None:
            try:
                client = JobSubmissionClient(f"http://127.0.0.1:{dashboard}")
            except Exception:  # noqa: BLE001 - the head is still starting
                if time.time() > deadline or head.poll() is not None:
                    raise AssertionError(log_path.read_text()) from None
                time.sleep(1)
        job, deadline = None, time.time() + 120
        while job is None:  # on a loaded machine the head's job agent can take a while to come up
            try:
                job = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            except RuntimeError:
                if time.time() > deadline:
                    raise
                time.sleep(2)
        deadline = time.time() + 300
        while client.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            assert time.time() < deadline, client.get_job_logs(job)
            time.sleep(1)
        logs = client.get_job_logs(job)
        assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs
        return logs

    try:
        yield submit
    finally:
        if head.poll() is None:
            # SIGKILL to the whole group (GCS, raylet, agents): the head's graceful SIGTERM shutdown waits
            # about 33 s here, and a throwaway head holds nothing to keep.
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=60)


def stop_cluster(cluster) -> None:
    """Stop a ``ray.cluster_utils.Cluster`` at once: its graceful shutdown waits tens of seconds per node here."""
    import ray

    for node in list(cluster.worker_nodes):
        cluster.remove_node(node, allow_graceful=False)
    if cluster.head_node is not None:
        cluster.remove_node(cluster.head_node, allow_graceful=False)
    ray.experimental.internal_kv._internal_kv_reset()
