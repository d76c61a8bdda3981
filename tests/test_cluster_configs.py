"""The cluster configs in cluster/ (Ray autoscaler for AWS and GCP, KubeRay) and the job configs.

The autoscaler configs are checked against the JSON schema that ships inside
the installed ray package (the one `ray up` validates with), then run through
Ray's own config preparation and validation, then against raypriv's
conventions: a head that trains nothing, autoscaling GPU workers, a spot or
preemptible worker type, shared storage where the reference config writes.
Each check also runs on deliberately broken copies, which must fail.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import tomllib
import yaml

from raypriv.config import load as load_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
JOB_CONFIGS = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))
AUTOSCALER_CONFIGS = {"aws": CLUSTER / "aws.yaml", "gcp": CLUSTER / "gcp.yaml"}
KUBERAY = CLUSTER / "kuberay.yaml"
REFERENCE_CONFIG = ROOT / "jobs" / "configs" / "cifar10-real.yaml"

IMAGE = re.compile(r"^rayproject/ray:(?P<version>\d+\.\d+\.\d+)-py3\d+-(?P<flavour>cpu|gpu|cu\d+)$")
RAY_PIN = re.compile(r"""["']?ray\[[a-z,]+\]==(?P<version>[0-9.]+)["']?""")
NUM_CPUS_ZERO = re.compile(r"--num-cpus(=|\s+)0(\s|$|;)")


# --------------------------------------------------------------------------- loading


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def ray_cluster_schema() -> dict[str, Any]:
    """Ray's JSON schema for cluster launcher configs, from the installed ray package."""
    schema_file = resources.files("ray.autoscaler") / "ray-schema.json"
    return json.loads(schema_file.read_text())


def project_dependencies() -> list[str]:
    """Distribution names of raypriv's runtime dependencies, from pyproject.toml."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [re.match(r"[A-Za-z0-9_.-]+", spec).group(0).lower() for spec in pyproject["project"]["dependencies"]]


def installed_names(command: str) -> set[str]:
    """Distribution names a `pip install ...` command line asks for."""
    words = shlex.split(command)
    if "install" not in words:
        return set()
    names = set()
    for word in words[words.index("install") + 1 :]:
        if not word.startswith("-"):
            names.add(re.match(r"[A-Za-z0-9_.-]+", word).group(0).lower())
    return names


# --------------------------------------------------------------------------- conventions


def is_spot(provider: str, node_config: dict[str, Any]) -> bool:
    if provider == "aws":
        return (node_config.get("InstanceMarketOptions") or {}).get("MarketType") == "spot"
    scheduling = node_config.get("scheduling")
    return isinstance(scheduling, dict) and (
        scheduling.get("preemptible") is True or scheduling.get("provisioningModel") == "SPOT"
    )


def autoscaler_problems(config: dict[str, Any]) -> list[str]:
    """What breaks the autoscaler's requirements or raypriv's conventions (empty: none)."""
    provider = (config.get("provider") or {}).get("type")
    if provider not in ("aws", "gcp"):
        return [f"provider.type is {provider!r}, expected aws or gcp"]
    problems = _provider_problems(config, provider) + _idle_timeout_problems(config)

    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    if head not in types:
        return problems + [f"head_node_type {head!r} is not one of available_node_types {sorted(types)}"]

    head_problems = _head_problems(config, provider, types[head])
    workers = {name: spec for name, spec in types.items() if name != head}
    return (
        problems
        + head_problems
        + _worker_problems(config, provider, workers)
        + _max_workers_problems(config, workers)
    )


def _provider_problems(config: dict[str, Any], provider: str) -> list[str]:
    problems = []
    if provider == "gcp" and not config["provider"].get("project_id"):
        problems.append("provider.project_id is missing (a placeholder is fine)")
    if not config["provider"].get("region") or not config["provider"].get("availability_zone"):
        problems.append("provider.region and provider.availability_zone must be set")
    return problems


def _idle_timeout_problems(config: dict[str, Any]) -> list[str]:
    timeout = config.get("idle_timeout_minutes")
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        return ["idle_timeout_minutes must be set to a positive number"]
    return []


def _head_problems(config: dict[str, Any], provider: str, head_type: dict[str, Any]) -> list[str]:
    """The head node type (no CPUs or GPUs for tasks, on-demand) and the `ray start` commands."""
    problems = []
    if head_type.get("resources", {}).get("CPU") != 0:
        problems.append(
            "the head node type must declare resources CPU: 0 (the launcher's resources override `ray start` flags)"
        )
    if head_type.get("resources", {}).get("GPU"):
        problems.append("the head node type must not be a GPU type")
    if is_spot(provider, head_type.get("node_config", {})):
        problems.append("the head node must be on-demand, not spot/preemptible")
    starts = config.get("head_start_ray_commands") or []
    head_starts = [c for c in starts if "ray start" in c and "--head" in c]
    if not head_starts:
        problems.append("head_start_ray_commands has no `ray start --head`")
    elif not all(NUM_CPUS_ZERO.search(c) for c in head_starts):
        problems.append("`ray start --head` in head_start_ray_commands lacks --num-cpus=0")
    if not any("$RAY_HEAD_IP" in c for c in config.get("worker_start_ray_commands") or []):
        problems.append("worker_start_ray_commands must join the head at $RAY_HEAD_IP")
    return problems


def _worker_problems(config: dict[str, Any], provider: str, workers: dict[str, dict[str, Any]]) -> list[str]:
    """The worker node types: each one's own checks, then at least one spot type the provider can run."""
    problems = [] if workers else ["no worker node types"]
    for name, spec in workers.items():
        problems += _worker_type_problems(provider, name, spec)
    spot_workers = [name for name, spec in workers.items() if is_spot(provider, spec.get("node_config") or {})]
    if not spot_workers:
        problems.append("no spot/preemptible GPU worker type")
    if spot_workers and provider == "aws" and config["provider"].get("cache_stopped_nodes", True):
        problems.append("spot workers cannot be stopped and restarted: set provider.cache_stopped_nodes: false")
    return problems


def _worker_type_problems(provider: str, name: str, spec: dict[str, Any]) -> list[str]:
    problems = []
    low, high = spec.get("min_workers"), spec.get("max_workers")
    if not isinstance(low, int) or not isinstance(high, int):
        problems.append(f"worker type {name}: min_workers and max_workers must be integers")
    elif not 0 <= low <= high or high == 0:
        problems.append(f"worker type {name}: need 0 <= min_workers <= max_workers and max_workers > 0")
    gpus = (spec.get("resources") or {}).get("GPU")
    if not isinstance(gpus, int) or gpus < 1:
        problems.append(f"worker type {name}: resources must declare GPU >= 1")
    node_config = spec.get("node_config") or {}
    if provider == "aws" and not node_config.get("InstanceType"):
        problems.append(f"worker type {name}: node_config.InstanceType missing")
    if provider == "gcp":
        problems += _gcp_worker_node_config_problems(name, node_config)
    return problems


def _gcp_worker_node_config_problems(name: str, node_config: dict[str, Any]) -> list[str]:
    problems = []
    if not node_config.get("machineType"):
        problems.append(f"worker type {name}: node_config.machineType missing")
    scheduling = node_config.get("scheduling")
    if not isinstance(scheduling, dict):
        problems.append(f"worker type {name}: node_config.scheduling must be one mapping (GCP's Scheduling object)")
    elif scheduling.get("onHostMaintenance") != "TERMINATE":
        problems.append(f"worker type {name}: GPU VMs need scheduling.onHostMaintenance: TERMINATE")
    if not node_config.get("guestAccelerators"):
        problems.append(f"worker type {name}: node_config.guestAccelerators missing")
    return problems


def _max_workers_problems(config: dict[str, Any], workers: dict[str, dict[str, Any]]) -> list[str]:
    max_workers = config.get("max_workers")
    if not isinstance(max_workers, int) or max_workers < sum(w.get("min_workers", 0) for w in workers.values()):
        return ["max_workers must be an integer at least the sum of the worker types' min_workers"]
    return []


def shared_mounts_docker(config: dict[str, Any]) -> list[str]:
    """Container paths bind-mounted from the same host path (`-v P:P`) on every node."""
    mounts = []
    for option in (config.get("docker") or {}).get("run_options", []):
        match = re.fullmatch(r"-v\s+(\S+):(\S+)", option.strip())
        if match and match.group(1) == match.group(2):
            mounts.append(match.group(2))
    return mounts


def cluster_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    specs = {}
    for doc in docs:
        if doc.get("kind") == "RayJob":
            specs[f"RayJob {doc['metadata']['name']}"] = doc["spec"].get("rayClusterSpec") or {}
        elif doc.get("kind") == "RayCluster":
            specs[f"RayCluster {doc['metadata']['name']}"] = doc.get("spec") or {}
    return specs


def pod_mounts(template: dict[str, Any], claims: set[str]) -> list[str]:
    """Paths where a pod template mounts one of the shared PVCs (in every container)."""
    spec = template.get("spec") or {}
    shared = {v["name"] for v in spec.get("volumes", []) if (v.get("persistentVolumeClaim") or {}).get("claimName") in claims}
    paths = None
    for container in spec.get("containers", []):
        mine = {m["mountPath"] for m in container.get("volumeMounts", []) if m.get("name") in shared}
        paths = mine if paths is None else paths & mine
    return sorted(paths or [])


def gpu_limit(template: dict[str, Any]) -> int:
    total = 0
    for container in (template.get("spec") or {}).get("containers", []):
        total += int(((container.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0))
    return total


def kuberay_problems(docs: list[dict[str, Any]]) -> list[str]:
    """What breaks KubeRay's requirements or raypriv's conventions (empty: none)."""
    problems = _kuberay_document_problems(docs)
    claims = {
        doc["metadata"]["name"]
        for doc in docs
        if doc.get("kind") == "PersistentVolumeClaim" and "ReadWriteMany" in doc.get("spec", {}).get("accessModes", [])
    }
    if not claims:
        problems.append("no ReadWriteMany PersistentVolumeClaim for the shared run directory")
    for label, spec in cluster_specs(docs).items():
        problems += _ray_cluster_spec_problems(label, spec, claims)
    for doc in docs:
        if doc.get("kind") == "RayJob":
            problems += _ray_job_problems(doc.get("spec") or {})
    return problems


def _kuberay_document_problems(docs: list[dict[str, Any]]) -> list[str]:
    """One RayJob and one RayCluster, both of the current API version."""
    problems = []
    kinds = [doc.get("kind") for doc in docs]
    for kind in ("RayJob", "RayCluster"):
        if kinds.count(kind) != 1:
            problems.append(f"expected exactly one {kind}, found {kinds.count(kind)}")
    for doc in docs:
        if doc.get("kind") in ("RayJob", "RayCluster") and doc.get("apiVersion") != "ray.io/v1":
            problems.append(f"{doc.get('kind')} has apiVersion {doc.get('apiVersion')!r}, expected ray.io/v1")
    return problems


def _ray_cluster_spec_problems(label: str, spec: dict[str, Any], claims: set[str]) -> list[str]:
    """One RayCluster spec (of a RayCluster or a RayJob): autoscaling, a head that trains nothing, its groups."""
    problems = []
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append(f"{label}: enableInTreeAutoscaling must be true")
    head = spec.get("headGroupSpec") or {}
    params = head.get("rayStartParams") or {}
    if params.get("num-cpus") != "0":
        problems.append(f"{label}: head rayStartParams num-cpus must be the string \"0\"")
    for group in [head] + list(spec.get("workerGroupSpecs") or []):
        problems += _group_problems(label, group, spec.get("rayVersion"), claims)
    return problems + _gpu_group_problems(label, spec)


def _group_problems(label: str, group: dict[str, Any], version: Any, claims: set[str]) -> list[str]:
    """Any group, head or worker: string rayStartParams, the Ray release image of rayVersion, the shared PVC."""
    problems = []
    for key, value in (group.get("rayStartParams") or {}).items():
        if not isinstance(value, str):
            problems.append(f"{label}: rayStartParams {key} must be a string, not {value!r}")
    for container in (group.get("template") or {}).get("spec", {}).get("containers", []):
        match = IMAGE.match(container.get("image", ""))
        if not match:
            problems.append(f"{label}: image {container.get('image')!r} is not a rayproject/ray release image")
        elif match.group("version") != version:
            problems.append(f"{label}: image {container['image']} does not match rayVersion {version}")
    if not pod_mounts(group.get("template") or {}, claims):
        problems.append(f"{label}: a group does not mount the shared PVC")
    return problems


def _gpu_group_problems(label: str, spec: dict[str, Any]) -> list[str]:
    """At least one worker group with GPU limits, each with sound replica bounds."""
    gpu_groups = [g for g in spec.get("workerGroupSpecs") or [] if gpu_limit(g.get("template") or {}) >= 1]
    problems = [] if gpu_groups else [f"{label}: no worker group with nvidia.com/gpu limits"]
    for group in gpu_groups:
        name = group.get("groupName")
        low, high, start = group.get("minReplicas"), group.get("maxReplicas"), group.get("replicas", 0)
        if not isinstance(low, int) or not isinstance(high, int):
            problems.append(f"{label}: worker group {name} needs integer minReplicas and maxReplicas")
        elif not low <= start <= high or high < 1:
            problems.append(f"{label}: worker group {name} needs minReplicas <= replicas <= maxReplicas, maxReplicas >= 1")
    return problems


def _ray_job_problems(spec: dict[str, Any]) -> list[str]:
    """The RayJob itself: a cluster shut down afterwards, the audit as entrypoint, the repository as working_dir."""
    problems = []
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("RayJob: shutdownAfterJobFinishes must be true")
    match = re.fullmatch(r"python jobs/audit\.py --config (jobs/configs/\S+\.ya?ml)", (spec.get("entrypoint") or "").strip())
    if not match:
        problems.append(f"RayJob: entrypoint {spec.get('entrypoint')!r} does not run jobs/audit.py --config jobs/configs/...")
    elif not (ROOT / match.group(1)).is_file():
        problems.append(f"RayJob: entrypoint config {match.group(1)} does not exist")
    try:
        runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
    except yaml.YAMLError as exc:
        problems.append(f"RayJob: runtimeEnvYAML is not YAML: {exc}")
    else:
        if not isinstance(runtime_env, dict) or "working_dir" not in runtime_env:
            problems.append("RayJob: runtimeEnvYAML must give a working_dir (the repository)")
    return problems


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return ray_cluster_schema()


@pytest.fixture(scope="module")
def kuberay_docs() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(KUBERAY.read_text()) if doc is not None]


# --------------------------------------------------------------------------- every YAML


def test_the_expected_cluster_files_exist():
    names = {path.name for path in CLUSTER.iterdir()}
    assert {"aws.yaml", "gcp.yaml", "kuberay.yaml", "README.md"} <= names


@pytest.mark.parametrize("path", sorted(CLUSTER.glob("*.yaml")), ids=lambda p: p.name)
def test_every_cluster_yaml_parses(path):
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs and all(isinstance(doc, dict) for doc in docs)


# --------------------------------------------------------------------------- autoscaler configs


def test_ray_schema_is_found_and_is_a_valid_schema(schema):
    jsonschema.Draft7Validator.check_schema(schema)
    assert {"cluster_name", "provider"} <= set(schema["required"])
    assert "available_node_types" in schema["properties"]


@pytest.mark.parametrize("name", sorted(AUTOSCALER_CONFIGS))
def test_autoscaler_config_matches_rays_schema(name, schema):
    jsonschema.validate(load_yaml(AUTOSCALER_CONFIGS[name]), schema)


@pytest.mark.parametrize("name", sorted(AUTOSCALER_CONFIGS))
def test_autoscaler_config_passes_rays_own_preparation_and_validation(name):
    """What `ray up` does before touching the cloud: fill in defaults, then validate."""
    util = pytest.importorskip("ray.autoscaler._private.util")
    prepared = util.prepare_config(load_yaml(AUTOSCALER_CONFIGS[name]))
    util.validate_config(prepared)
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


@pytest.mark.parametrize("name", sorted(AUTOSCALER_CONFIGS))
def test_autoscaler_config_follows_raypriv_conventions(name):
    assert autoscaler_problems(load_yaml(AUTOSCALER_CONFIGS[name])) == []


def _gpu_worker(config):
    return next(spec for key, spec in config["available_node_types"].items() if key != config["head_node_type"])


SCHEMA_BREAKERS = {
    "unknown top-level field": lambda c: c.update(idle_timeout_minute=5),
    "fractional GPU resource": lambda c: _gpu_worker(c)["resources"].update(GPU=0.5),
    "GPU count as a string": lambda c: _gpu_worker(c)["resources"].update(GPU="1"),
    "node type without node_config": lambda c: _gpu_worker(c).pop("node_config"),
    "unknown node type field": lambda c: _gpu_worker(c).update(min_worker=0),
    "negative idle timeout": lambda c: c.update(idle_timeout_minutes=-1),
    "no provider": lambda c: c.pop("provider"),
    "setup command not a string": lambda c: c.update(setup_commands=[["pip", "install", "torch"]]),
}


@pytest.mark.parametrize("name", sorted(AUTOSCALER_CONFIGS))
@pytest.mark.parametrize("breaker", sorted(SCHEMA_BREAKERS))
def test_broken_copies_fail_rays_schema(name, breaker, schema):
    config = load_yaml(AUTOSCALER_CONFIGS[name])
    SCHEMA_BREAKERS[breaker](config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema)


def _head_start_without_num_cpus(config):
    config["head_start_ray_commands"] = [c.replace("--num-cpus=0", "") for c in config["head_start_ray_commands"]]


def _no_spot(config):
    for spec in config["available_node_types"].values():
        spec["node_config"].pop("InstanceMarketOptions", None)
        if isinstance(spec["node_config"].get("scheduling"), dict):
            spec["node_config"]["scheduling"].pop("preemptible", None)
            spec["node_config"]["scheduling"].pop("provisioningModel", None)


CONVENTION_BREAKERS = {
    "head start without --num-cpus=0": (_head_start_without_num_cpus, "--num-cpus=0"),
    "head resources with CPUs": (lambda c: c["available_node_types"][c["head_node_type"]].update(resources={"CPU": 8}), "CPU: 0"),
    "unknown head node type": (lambda c: c.update(head_node_type="ray.head.default"), "head_node_type"),
    "no idle timeout": (lambda c: c.pop("idle_timeout_minutes"), "idle_timeout_minutes"),
    "worker without GPU": (lambda c: _gpu_worker(c)["resources"].pop("GPU"), "GPU >= 1"),
    "worker without max_workers": (lambda c: _gpu_worker(c).pop("max_workers"), "max_workers"),
    "no spot worker type": (_no_spot, "spot"),
}


@pytest.mark.parametrize("name", sorted(AUTOSCALER_CONFIGS))
@pytest.mark.parametrize("breaker", sorted(CONVENTION_BREAKERS))
def test_broken_copies_fail_the_conventions(name, breaker):
    config = load_yaml(AUTOSCALER_CONFIGS[name])
    mutate, expected = CONVENTION_BREAKERS[breaker]
    mutate(config)
    problems = autoscaler_problems(config)
    assert any(expected in problem for problem in problems), problems


def test_gcp_scheduling_as_a_list_is_rejected():
    """Ray's own GCP examples long wrote `scheduling` as a list (ray-project/ray#46248); GCP wants one object."""
    config = load_yaml(AUTOSCALER_CONFIGS["gcp"])
    for spec in config["available_node_types"].values():
        scheduling = spec["node_config"].get("scheduling")
        if isinstance(scheduling, dict):
            spec["node_config"]["scheduling"] = [{key: value} for key, value in scheduling.items()]
    problems = autoscaler_problems(config)
    assert any("scheduling must be one mapping" in p for p in problems), problems


def test_aws_spot_with_cached_stopped_nodes_is_rejected():
    config = load_yaml(AUTOSCALER_CONFIGS["aws"])
    config["provider"]["cache_stopped_nodes"] = True
    assert any("cache_stopped_nodes" in p for p in autoscaler_problems(config))


@pytest.mark.parametrize("name", sorted(AUTOSCALER_CONFIGS))
def test_setup_commands_install_every_project_dependency(name):
    config = load_yaml(AUTOSCALER_CONFIGS[name])
    asked = set().union(*(installed_names(c) for c in config.get("setup_commands", [])))
    missing = [dep for dep in project_dependencies() if dep not in asked]
    assert missing == [], f"setup_commands do not install {missing} (see pyproject.toml)"


@pytest.mark.parametrize("name", sorted(AUTOSCALER_CONFIGS))
def test_autoscaler_nodes_share_the_reference_run_directory(name):
    """out_dir and dataset.root of cifar10-real.yaml lie on the file system every node mounts."""
    config = load_yaml(AUTOSCALER_CONFIGS[name])
    reference = load_config(REFERENCE_CONFIG)
    mounts = shared_mounts_docker(config)
    assert mounts, "docker.run_options bind-mount no shared host path"
    for path in (reference.out_dir, reference.dataset.root):
        assert any(path.startswith(m.rstrip("/") + "/") for m in mounts), f"{path} is not under {mounts}"
    host_mounts = " ".join(config.get("initialization_commands", []))
    assert all(re.search(rf"mount .*\s{re.escape(m)}(\s|$)", host_mounts) for m in mounts), (
        "initialization_commands do not mount the shared file system on the host"
    )


# --------------------------------------------------------------------------- KubeRay


def test_kuberay_documents_parse_and_follow_the_conventions(kuberay_docs):
    assert {doc["kind"] for doc in kuberay_docs} >= {"RayJob", "RayCluster"}
    assert kuberay_problems(kuberay_docs) == []


def _job(docs):
    return next(doc for doc in docs if doc["kind"] == "RayJob")


def _gpu_group(spec):
    return next(g for g in spec["workerGroupSpecs"] if gpu_limit(g["template"]) >= 1)


def _head_start_params(docs):
    return _job(docs)["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]


def _drop_gpu_limits(docs):
    for spec in cluster_specs(docs).values():
        for group in spec["workerGroupSpecs"]:
            for container in group["template"]["spec"]["containers"]:
                container["resources"]["limits"].pop("nvidia.com/gpu", None)


KUBERAY_BREAKERS = {
    "num-cpus as a number": (lambda d: _head_start_params(d).update({"num-cpus": 0}), "num-cpus"),
    "head may train": (lambda d: _head_start_params(d).pop("num-cpus"), "num-cpus"),
    "no GPU limits": (_drop_gpu_limits, "nvidia.com/gpu"),
    "no maxReplicas": (lambda d: _gpu_group(_job(d)["spec"]["rayClusterSpec"]).pop("maxReplicas"), "maxReplicas"),
    "entrypoint config missing": (
        lambda d: _job(d)["spec"].update(entrypoint="python jobs/audit.py --config jobs/configs/no-such.yaml"),
        "does not exist",
    ),
    "entrypoint not the audit": (lambda d: _job(d)["spec"].update(entrypoint="python train.py"), "entrypoint"),
    "cluster kept after the job": (lambda d: _job(d)["spec"].pop("shutdownAfterJobFinishes"), "shutdownAfterJobFinishes"),
    "old apiVersion": (lambda d: _job(d).update(apiVersion="ray.io/v1alpha1"), "apiVersion"),
    "no RayCluster": (lambda d: d.remove(next(doc for doc in d if doc["kind"] == "RayCluster")), "RayCluster"),
    "no autoscaling": (
        lambda d: _job(d)["spec"]["rayClusterSpec"].update(enableInTreeAutoscaling=False),
        "enableInTreeAutoscaling",
    ),
    "image of another Ray": (
        lambda d: _gpu_group(_job(d)["spec"]["rayClusterSpec"])["template"]["spec"]["containers"][0].update(
            image="rayproject/ray:2.9.0-py311-gpu"
        ),
        "does not match rayVersion",
    ),
    "no shared volume": (
        lambda d: _gpu_group(_job(d)["spec"]["rayClusterSpec"])["template"]["spec"].update(volumes=[]),
        "shared PVC",
    ),
}


@pytest.mark.parametrize("breaker", sorted(KUBERAY_BREAKERS))
def test_broken_kuberay_copies_fail(breaker, kuberay_docs):
    docs = copy.deepcopy(kuberay_docs)
    mutate, expected = KUBERAY_BREAKERS[breaker]
    mutate(docs)
    problems = kuberay_problems(docs)
    assert any(expected in problem for problem in problems), problems


def test_kuberay_pods_share_the_reference_run_directory(kuberay_docs):
    reference = load_config(REFERENCE_CONFIG)
    claims = {doc["metadata"]["name"] for doc in kuberay_docs if doc["kind"] == "PersistentVolumeClaim"}
    for label, spec in cluster_specs(kuberay_docs).items():
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            mounts = pod_mounts(group["template"], claims)
            for path in (reference.out_dir, reference.dataset.root):
                assert any(path.startswith(m.rstrip("/") + "/") for m in mounts), f"{label}: {path} not under {mounts}"


def test_kuberay_job_installs_every_project_dependency_but_ray(kuberay_docs):
    runtime_env = yaml.safe_load(_job(kuberay_docs)["spec"]["runtimeEnvYAML"])
    asked = {re.match(r"[A-Za-z0-9_.-]+", spec).group(0).lower() for spec in runtime_env.get("pip", [])}
    missing = [dep for dep in project_dependencies() if dep != "ray" and dep not in asked]
    assert missing == [], f"the RayJob's runtime env does not install {missing} (see pyproject.toml)"
    assert "ray" not in asked, "Ray comes with the image; a pip runtime env must not reinstall it"


# --------------------------------------------------------------------------- one Ray version everywhere


def test_every_config_names_the_same_ray_version(kuberay_docs):
    versions: dict[str, str] = {}
    for name, path in AUTOSCALER_CONFIGS.items():
        config = load_yaml(path)
        docker = config.get("docker") or {}
        for key in ("image", "head_image", "worker_image"):
            if key in docker:
                match = IMAGE.match(docker[key])
                assert match, f"{name}: docker.{key} {docker[key]!r} is not a rayproject/ray release image"
                versions[f"{name} docker.{key}"] = match.group("version")
        pins = [m.group("version") for c in config.get("setup_commands", []) for m in RAY_PIN.finditer(c)]
        assert pins, f"{name}: setup_commands do not pin ray[...]==VERSION"
        versions.update({f"{name} setup_commands pin": pin for pin in pins})
    for label, spec in cluster_specs(kuberay_docs).items():
        versions[f"kuberay {label} rayVersion"] = str(spec["rayVersion"])
    assert len(set(versions.values())) == 1, versions
    assert next(iter(versions.values())).startswith("2."), versions


# --------------------------------------------------------------------------- job configs


@pytest.mark.parametrize("path", JOB_CONFIGS, ids=lambda p: p.name)
def test_every_job_config_loads(path):
    config = load_config(path)
    assert config.name and config.out_dir


def test_there_are_job_configs():
    assert {p.name for p in JOB_CONFIGS} >= {"digits-quick.yaml", "cifar10-real.yaml"}


# --------------------------------------------------------------------------- the walkthrough


def test_cluster_readme_names_files_that_exist_and_keeps_the_gpu_hours_placeholder():
    text = (CLUSTER / "README.md").read_text()
    for mentioned in sorted(set(re.findall(r"cluster/[\w.-]+\.yaml", text))):
        assert (ROOT / mentioned).is_file(), f"cluster/README.md mentions {mentioned}, which does not exist"
    for name in ("aws.yaml", "gcp.yaml", "kuberay.yaml"):
        assert f"cluster/{name}" in text
    assert "GPU-hours for the cifar10-real reference audit" in text
