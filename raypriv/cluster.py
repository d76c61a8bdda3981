"""The Ray session, in one place: connecting, what the cluster holds, where requests fit, Ray Data's settings.

Training (:mod:`raypriv.execution`), scoring (:mod:`raypriv.scoring.ray_data`)
and the logits dataset (:mod:`raypriv.scoring.logits_dataset`) all reach Ray
through here:

* :func:`connect` joins ``ray.address`` (or ``RAY_ADDRESS``), or starts a
  fresh local instance; an address nothing listens on, or a temporary folder
  too full for a local instance, is one error at once;
* :func:`cluster_cpus` and :func:`actor_count` size pools and task counts by
  the cluster's resources;
* :func:`unplaceable`, :func:`cluster_can_add_nodes` and
  :func:`check_placeable` refuse an actor request no node can ever fit,
  instead of waiting forever;
* :func:`ray_data_settings` sets the Ray Data options scoring needs for the
  duration of a ``with`` block, and puts the user's back afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import threading
import time
from typing import Any, Iterator

from raypriv.config import ExperimentConfig
from raypriv.errors import RayprivError

PROBE_SECONDS = 5.0  # a cluster address that accepts no TCP connection this long is an error, not a retry loop
LOCAL_TEMP_MIN_FREE_BYTES = 100 * 2**20  # a local Ray instance cannot start in a temporary folder with less free


def _effective_address(address: str | None) -> tuple[str | None, str]:
    """The address ``ray.init`` will join and where it comes from: ``RAY_ADDRESS`` wins over none or ``auto``."""
    env = os.environ.get("RAY_ADDRESS")
    if env and address in (None, "auto"):
        return env, "the RAY_ADDRESS environment variable"
    return address, "ray.address in the config"


def _unreachable(address: str, source: str, reason: str) -> RayprivError:
    fix = ("unset RAY_ADDRESS (or set ray.address) to run on a fresh local Ray instance"
           if source.startswith("the RAY_ADDRESS") else
           "set ray.address to the head's address (host:port), or remove it to start a fresh local Ray instance")
    return RayprivError(
        f"cannot reach a Ray cluster at {address} (from {source}): {reason}; start the cluster (`ray start --head`) "
        f"or correct the address: {fix}"
    )


def _check_reachable(address: str, source: str) -> None:
    """Refuse a cluster address nothing listens on, within :data:`PROBE_SECONDS`.

    ``ray.init`` would retry a dead address for minutes (a warning every
    few seconds, a new attempt every ~40 s).  ``host:port`` and
    ``ray://host:port`` are probed with one TCP connection; ``auto`` is
    resolved the way Ray resolves it (the last ``ray start`` on this
    machine) and probed if that finds an address.
    """
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            found = canonicalize_bootstrap_address("auto")
        except Exception:  # noqa: BLE001 - none found, or another Ray version: ray.init gives its own error
            return
        if not found:
            return
        address, source = found, f"{source}, where `auto` found the cluster the last `ray start` here recorded"
    target = address.split("://", 1)[1] if "://" in address else address
    host, _, port = target.rstrip("/").rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        return  # not host:port: Ray judges the format
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_SECONDS):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc) or type(exc).__name__)
        raise _unreachable(address, source, f"nothing accepts connections there ({reason.lower()})") from None


def ray_temp_root() -> str:
    """Where a local Ray instance puts its session folder (Ray's own rule: RAY_TMPDIR, else TMPDIR, else /tmp)."""
    return os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"


def _check_local_temp() -> None:
    """Refuse to start a local Ray instance whose temporary folder is missing, not writable or full.

    Ray would wait 30 s for its GCS to write a file there and fail with a
    traceback; this says which folder and what to do.
    """
    root = ray_temp_root()
    variable = "RAY_TMPDIR" if os.environ.get("RAY_TMPDIR") else "TMPDIR" if os.environ.get("TMPDIR") else None
    fix = (f"free space there, or point {variable} at a folder with space" if variable
           else "free space there, or set RAY_TMPDIR to a folder with space")
    existing = root
    while existing and not os.path.isdir(existing):  # Ray creates the folders below the first that exists
        existing = os.path.dirname(existing.rstrip("/")) if existing.rstrip("/") else ""
    if not existing or not os.access(existing, os.W_OK | os.X_OK):
        raise RayprivError(f"Ray's temporary folder {root} is not writable; {fix.replace('free space there, or ', '')}")
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return
    if free < LOCAL_TEMP_MIN_FREE_BYTES:
        raise RayprivError(
            f"Ray's temporary folder {root} has {free / 2**20:.1f} MiB free, too little to start a local Ray instance "
            f"(it needs {LOCAL_TEMP_MIN_FREE_BYTES / 2**20:.0f} MiB or more); {fix}"
        )


def connect(address: str | None = None) -> bool:
    """Join the Ray cluster at ``address`` (``ray.address``; else ``RAY_ADDRESS``), or start a local instance.

    Returns True if this call started (or joined) Ray, so the caller shuts it
    down; False if Ray was already running in this process.  An address
    nothing listens on, or a local instance that cannot start (its temporary
    folder full or not writable), is one RayprivError instead of a retry loop
    or a traceback.  ``ray.init`` installs its own SIGTERM handler (exit
    without cleanup, which aborts the process); the caller's is put back.
    """
    import ray

    if ray.is_initialized():
        return False
    target, source = _effective_address(address)
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if target:
        _check_reachable(target, source)
    else:
        _check_local_temp()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main_thread else None
    try:
        if target:
            ray.init(address=address or target, **kwargs)
        else:
            # "local": a fresh instance, even where /tmp/ray records another (possibly dead)
            # cluster that a bare ray.init() would try to join.  ray.address: auto joins it.
            ray.init(address="local", include_dashboard=False, **kwargs)
    except ConnectionError as exc:
        raise _unreachable(target or "auto", source, " ".join(str(exc).split())) from None
    except RuntimeError as exc:
        if target or "Timed out waiting for file" not in str(exc):
            raise
        raise RayprivError(
            f"the local Ray instance did not start in {ray_temp_root()} ({' '.join(str(exc).split())[:300]}); check "
            "that this folder has free space and is writable, or set RAY_TMPDIR to one that is"
        ) from None
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return True


def actor_count(config: ExperimentConfig, pending: int, synthesis_workers: int = 0) -> int:
    """Shadow-model actors: ``ray.num_actors``, or what the cluster's resources fit now.

    The synthesis workers' resources are set aside first, so the two pools
    never wait on each other for the same CPUs or GPUs.
    """
    import ray

    r = config.ray
    if r.num_actors:
        return min(r.num_actors, pending)
    resources = ray.cluster_resources()
    cpus = resources.get("CPU", 0) - synthesis_workers * r.synthesis_cpus_per_worker
    count = int(cpus // r.num_cpus_per_actor)
    if r.num_gpus_per_actor > 0:
        gpus = resources.get("GPU", 0) - synthesis_workers * r.synthesis_gpus_per_worker
        if gpus <= 0:
            raise RayprivError(
                "ray.num_gpus_per_actor > 0 but the Ray cluster has no GPUs free for shadow-model actors right "
                "now. On an autoscaling cluster set ray.num_actors (or --actors N) so the autoscaler adds GPU "
                "nodes for them; otherwise set ray.num_gpus_per_actor: 0 to train on CPUs"
            )
        count = int(gpus // r.num_gpus_per_actor)
    return max(1, min(count, pending))


PLACEMENT_WARN_SECONDS = 60.0  # on a cluster, warn once when nothing has run this long and no node fits a request


def unplaceable(config: ExperimentConfig, synthesis_workers: int) -> list[str]:
    """The actor requests no alive node of the Ray cluster can fit, each with what the largest node has."""
    import ray

    r = config.ray
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    requests = [("a shadow-model actor", "ray.num_cpus_per_actor", r.num_cpus_per_actor, r.num_gpus_per_actor)]
    if synthesis_workers:
        requests.append(("a synthesis worker", "ray.synthesis_cpus_per_worker", r.synthesis_cpus_per_worker,
                         r.synthesis_gpus_per_worker))
    most_cpus = max((node.get("CPU", 0.0) for node in nodes), default=0.0)
    most_gpus = max((node.get("GPU", 0.0) for node in nodes), default=0.0)
    return [
        f"{role} asks for {cpus:g} CPUs and {gpus:g} GPUs ({setting} and its GPU setting), but the largest of the "
        f"cluster's {len(nodes)} nodes has {most_cpus:g} CPUs and {most_gpus:g} GPUs"
        for role, setting, cpus, gpus in requests
        if not any(node.get("CPU", 0.0) >= cpus and node.get("GPU", 0.0) >= gpus for node in nodes)
    ]


def cluster_can_add_nodes() -> bool | None:
    """Whether the connected Ray cluster can grow: True, False (fixed size), or None (cannot tell).

    Ray has no public call for this; two signals in the cluster's GCS say it:

    * Platforms with autoscaler v2 report a cluster config.  A node group whose
      ``max_count`` exceeds its ``min_count`` (or is -1) can grow, the rule of
      Ray Data's own ``is_autoscaling_enabled``.
    * The head's v1 monitor writes a status every few seconds.  On a cluster
      started by hand (``ray start`` on each machine, or KubeRay without
      autoscaling) it runs a read-only provider whose node types are the live
      nodes themselves, named ``node_<node id>``: nothing can be launched.  A
      cluster launcher or KubeRay autoscaler names its node types instead.

    Anything else (no status yet, a v2 autoscaler without a config) is None,
    and the caller waits and warns instead of refusing.
    """
    import json

    import ray
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        groups = ray._private.state.state.get_cluster_config()
        if groups is not None and any(
            g.max_count == -1 or g.max_count > g.min_count for g in groups.node_group_configs if g.resources
        ):
            return True
        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        report = json.loads(raw).get("autoscaler_report", {}) if raw else {}
    except Exception:  # noqa: BLE001 - private state of another Ray version: no signal
        return None
    mapping = report.get("node_type_mapping") or {}
    if not mapping:
        return None
    if report.get("pending_launches") or report.get("pending_nodes"):
        return True
    read_only = all(node_type == f"node_{node_id}" for node_id, node_type in mapping.items())
    return False if read_only else True


AUTOSCALER_STATUS_WAIT_SECONDS = 15.0  # the v1 monitor writes its status every 5 s; a fresh head may not have yet


def check_placeable(config: ExperimentConfig, synthesis_workers: int) -> list[str]:
    """Refuse a request no node can fit where no node can be added (it would wait forever); return them otherwise.

    On a local instance, or a cluster :func:`cluster_can_add_nodes` finds fixed
    in size, that is an error now.  On an autoscaling cluster, or one that
    cannot be told apart, the problems are returned for the warning after
    :data:`PLACEMENT_WARN_SECONDS`.
    """
    problems = unplaceable(config, synthesis_workers)
    if not problems:
        return problems
    if not (config.ray.address or os.environ.get("RAY_ADDRESS")):
        raise RayprivError(
            "; ".join(problems) + ". This local Ray instance can never run it: lower the request, or run on a "
            "cluster with larger nodes (ray.address)"
        )
    deadline = time.monotonic() + AUTOSCALER_STATUS_WAIT_SECONDS
    while (can_grow := cluster_can_add_nodes()) is None and time.monotonic() < deadline:
        time.sleep(1.0)
    if can_grow is False:
        raise RayprivError(
            "; ".join(problems) + ". This cluster has a fixed size (its autoscaler has no node type it can "
            "launch), so it can never run it: lower the request, or add a node that fits"
        )
    return problems


def cluster_cpus() -> int:
    """The running Ray cluster's CPUs (at least 1): what the Ray scoring backend sizes its task counts by."""
    import ray

    return max(int(ray.cluster_resources().get("CPU", 1)), 1)


@contextlib.contextmanager
def connected(address: str | None = None) -> Iterator[None]:
    """Ray for the duration of a ``with`` block: the running session, or one :func:`connect` starts and then shuts down."""
    import ray

    started = connect(address)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


RAY_DATA_SETTINGS = ("shuffle_strategy", "enable_progress_bars", "raise_original_map_exception")  # DataContext fields set


@contextlib.contextmanager
def ray_data_settings(show_progress: bool) -> Iterator[None]:
    """The driver's Ray Data settings for scoring, put back as they were when the block ends.

    * ``shuffle_strategy = SORT_SHUFFLE_PULL_BASED``: the groupbys run as plain
      tasks.  Ray 2.60's default hash shuffle starts aggregator *actors* that
      hold CPUs for the whole job, which can starve the map tasks on a 2-core
      machine or on small worker nodes.
    * ``preserve_order = True``: blocks leave each stage in input order, which
      is ``scores.parquet``'s row order.
    * ``raise_original_map_exception = True``: a RayprivError raised in a task
      (a corrupt logits file) reaches the driver as itself, not wrapped in
      ``UserCodeException``.
    * ``enable_progress_bars`` follows ``show_progress``.

    A user's own Ray Data work in the same driver keeps its own settings.
    """
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    context = DataContext.get_current()
    previous = {name: getattr(context, name) for name in RAY_DATA_SETTINGS}
    previous_order = context.execution_options.preserve_order
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    context.enable_progress_bars = show_progress
    context.execution_options.preserve_order = True
    context.raise_original_map_exception = True
    try:
        yield
    finally:
        for name in RAY_DATA_SETTINGS:
            setattr(context, name, previous[name])
        context.execution_options.preserve_order = previous_order
