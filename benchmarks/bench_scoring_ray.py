"""Benchmark: scoring.backend ray against local: driver peak RSS, wall time, and the speed-up from a second worker node.

    python benchmarks/bench_scoring_ray.py [--models M] [--samples N] [--queries Q] [--jobs local,ray,cluster1,cluster2]
                                           [--repeat R] [--node-store-gb G] [--no-pin] [--out DIR] [--data DIR]

Synthetic logits (10 classes, Q queries (default 2), a planted membership signal;
:func:`bench_scoring.make_store`) in a real run-directory layout, scored by
:func:`raypriv.scoring.score_run` with the plan's backend ``local``, and with
backend ``ray`` (:mod:`raypriv.scoring.ray_data`) on

* a local Ray with 2 CPUs (the same machine as the local backend),
* a ``ray.cluster_utils.Cluster`` whose head has ``num_cpus=0`` with 1 worker
  node of 1 CPU, and with 2 such nodes (the speed-up from the second node),

each in a fresh subprocess, in the same run (``--jobs`` picks some of them;
``--repeat R`` runs the cluster pair R times, alternating 1 node and 2 nodes,
and reports every pair's speed-up and their median: on this machine one pair
varies by more than the target's margin).
A cluster's worker node stands for half of this 2-core machine: 1 CPU, and
half the object store Ray gives this machine by default (``--node-store-gb``;
``ray.cluster_utils.Cluster`` would give each node 150 MiB, and everything
would spill to disk), its raylet and worker processes pinned to a core of
their own (``--no-pin`` to let them float: then the 1-node cluster's Ray
processes use the second core, which a node of 1 CPU does not have).  The
driver and the CPU-less head share the cores.  Reported per job: scoring wall
time (Ray start-up excluded, reported apart) and each stage's part of it
(the Ray backend's ``on_stage`` hook), the driver process's peak
resident memory (``VmHWM``: the driver alone, not Ray's workers), the load
average before and after (the machine is shared), and whether
``metrics.json`` is byte-identical to the first job's (the local backend's
when it runs), and what Ray
spilled to disk.  Writes
``scoring_ray.md`` to ``--out`` (default ``benchmarks/results``).  Targets
(issue 15): the Ray driver under 1 GB at any size; Ray wall time within 2x of
local on 2 cores; 2 nodes at least 1.6x faster than 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
ATTACKS = ["loss", "lira_online", "lira_offline", "lira_online_fixed", "lira_offline_fixed", "rmia", "rmia_offline"]
DRIVER_TARGET_GB, WALL_RATIO_TARGET, SPEEDUP_TARGET = 1.0, 2.0, 1.6
SHIFTS = [(dx, dy) for dx in (-2, -1, 1, 2) for dy in (-2, -1, 1, 2)]


def vm_hwm_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def default_node_store_gb() -> float:
    """Half of Ray's default object store for this machine (30% of its memory): a worker node that is half of it."""
    from ray._private.ray_constants import DEFAULT_OBJECT_STORE_MEMORY_PROPORTION
    from ray._private.utils import get_system_memory

    return DEFAULT_OBJECT_STORE_MEMORY_PROPORTION * get_system_memory() / 2 / 2**30


def pin_node(node, core: int) -> None:
    """Pin a ``Cluster`` node's raylet and its processes to one core; the workers it starts later inherit it."""
    import psutil

    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    for process in [raylet, *raylet.children(recursive=True)]:
        process.cpu_affinity([core])


def spilled_mib() -> float:
    """MiB the running Ray has spilled to disk so far (its memory summary's aggregate line)."""
    import re

    import ray
    from ray._private.internal_api import memory_summary

    # This Ray's address: without one, Ray looks up the last cluster that /tmp/ray records (maybe a dead one).
    found = re.search(r"Spilled (\d+) MiB", memory_summary(ray.get_runtime_context().gcs_address, stats_only=True))
    return float(found.group(1)) if found else 0.0


def worker(job: dict) -> dict:
    """One scoring in this (fresh) process; returns its figures."""
    import numpy as np
    import pandas as pd

    from raypriv.config import from_dict
    from raypriv.run.fingerprints import recipe_hashes
    from raypriv.run.store import RunStore
    from raypriv.scoring import ScoringPlan, score_run
    from raypriv.split import AuditSplit

    store_dir = Path(job["store"])
    keep, labels = np.load(store_dir / "keep.npy"), np.load(store_dir / "labels.npy")
    n_models, n_samples = keep.shape
    queries = ["identity", "hflip"] + [f"shift({dx},{dy})" for dx, dy in SHIFTS[: job["queries"] - 2]]  # only their count matters
    config = from_dict({
        "name": "bench", "out_dir": str(store_dir), "n_models": n_models, "audit": {"n_audit": n_samples, "canary": "none"},
        "queries": queries, "attacks": ATTACKS, "scoring": {"backend": job["backend"]},
    })
    split = AuditSplit(audit_index=np.arange(n_samples), true_labels=labels, labels=labels, keep=keep)
    hashes = recipe_hashes(config)
    plan = ScoringPlan.from_config(config, split, recipe_hashes=hashes, store_uri=str(store_dir))
    assert plan.backend == job["backend"], (plan.backend, job["backend"])
    models = pd.DataFrame({"paradigm": "real", "model_id": np.arange(n_models), "recipe_hash": hashes["real"],
                           "test_acc": 0.0, "synth_seconds": 0.0, "train_seconds": 0.0, "info": "{}"})
    load_before = os.getloadavg()[0]
    startup = 0.0
    cluster = None
    if job["backend"] == "ray":
        import ray

        start = time.perf_counter()
        if job["nodes"]:
            from ray.cluster_utils import Cluster

            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
            for core in range(job["nodes"]):
                node = cluster.add_node(num_cpus=1, object_store_memory=int(job["node_store_gb"] * 2**30))
                if job["pin"]:
                    pin_node(node, core % os.cpu_count())
            ray.init(address=cluster.address, logging_level="ERROR")
            cluster.wait_for_nodes()
        else:
            ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
        startup = time.perf_counter() - start
    baseline = vm_hwm_gb()  # interpreter, torch and Ray imported, Ray started: before any scoring
    stages: dict[str, float] = {}
    start = time.perf_counter()
    if plan.backend == "ray":  # each stage timed through the Ray backend's hook

        def on_stage(name: str) -> None:
            stages[name] = time.perf_counter() - start - sum(stages.values())

        score_run(plan, RunStore(str(store_dir)), models, on_stage=on_stage)
    else:
        score_run(plan, RunStore(str(store_dir)), models)
    wall = time.perf_counter() - start
    metrics = (store_dir / "metrics.json").read_bytes()
    spilled = spilled_mib() if job["backend"] == "ray" else 0.0
    if cluster is not None:
        import ray

        ray.shutdown()
        cluster.shutdown()
    return {"wall_s": wall, "startup_s": startup, "driver_peak_gb": vm_hwm_gb(), "driver_before_gb": baseline,
            "load_before": load_before, "load_after": os.getloadavg()[0], "spilled_mib": spilled, "stages": stages,
            "metrics": metrics.decode()}


def run_worker(job: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"job {job} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=2, choices=range(2, 19), metavar="2..18")
    parser.add_argument("--jobs", default="local,ray,cluster1,cluster2", help="which scorings to run (comma-separated)")
    parser.add_argument("--repeat", type=int, default=1, help="run the cluster pair this many times, alternating")
    parser.add_argument("--node-store-gb", type=float, default=None, help="object store of each cluster worker node "
                        "(default: half of Ray's default for this machine)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin each cluster node's processes to a core")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--data", default=None, help="where to write the synthetic run (default: a temporary folder)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    import bench_scoring

    bench_scoring.QUERIES = args.queries
    root = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="bench-scoring-ray-"))
    start = time.perf_counter()
    store = bench_scoring.make_store(root, args.models, args.samples)
    made = time.perf_counter() - start
    every_job = {"local": ("local", {"backend": "local", "nodes": 0}),
                 "ray": ("ray, local Ray (2 CPUs)", {"backend": "ray", "nodes": 0}),
                 "cluster1": ("ray, cluster: 1 worker node x 1 CPU", {"backend": "ray", "nodes": 1}),
                 "cluster2": ("ray, cluster: 2 worker nodes x 1 CPU", {"backend": "ray", "nodes": 2})}
    chosen = args.jobs.split(",")
    if not chosen or set(chosen) - set(every_job) or args.repeat < 1:
        raise SystemExit(f"--jobs: a comma-separated subset of {','.join(every_job)}; --repeat: at least 1")
    pair = [k for k in chosen if k.startswith("cluster")]
    runs = [k for k in chosen if not k.startswith("cluster")] + pair * (args.repeat if len(pair) == 2 else 1)
    node_store_gb = args.node_store_gb or default_node_store_gb()
    results, walls = {}, {k: [] for k in chosen}
    for key in runs:
        name, job = every_job[key]
        result = run_worker({**job, "store": str(store), "queries": args.queries, "node_store_gb": node_store_gb,
                             "pin": not args.no_pin})
        walls[key].append(result["wall_s"])
        if name not in results:
            results[name] = result
        elif result["metrics"] != results[name]["metrics"]:
            results[name]["metrics"] = "differs between repeats"
        stages = ", ".join(f"{stage} {seconds:.1f}s" for stage, seconds in result["stages"].items())
        print(f"{name}: {result['wall_s']:.1f}s ({stages or 'local'}), driver {result['driver_peak_gb']:.2f} GB", flush=True)
    first = next(iter(results.values()))  # the baseline of the metrics' equality: local when it runs
    local = results.get("local", first)
    pinned = "not pinned" if args.no_pin else "each pinned to a core of its own"
    lines = [
        f"### Ray Data scoring: {args.models} models x {args.samples} samples x {args.queries} queries, "
        f"{len(ATTACKS)} attacks",
        "",
        f"`python benchmarks/bench_scoring_ray.py --models {args.models} --samples {args.samples} --queries {args.queries} "
        f"--jobs {args.jobs}{f' --repeat {args.repeat}' if args.repeat > 1 else ''}{' --no-pin' if args.no_pin else ''}` "
        f"({os.cpu_count()} cores; synthetic run written in {made:.0f}s; cluster worker nodes: 1 CPU, "
        f"{node_store_gb:.1f} GiB object store, {pinned}).",
        "",
        "| backend | scoring wall (s) | Ray start-up (s) | driver peak RSS (GB) | of which before scoring (GB) "
        f"| load avg before / after | spilled (MiB) | metrics.json = {next(iter(results))} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        same = "yes" if r["metrics"] == first["metrics"] else "NO"
        lines.append(f"| {name} | {r['wall_s']:.1f} | {r['startup_s']:.1f} | {r['driver_peak_gb']:.2f} "
                     f"| {r['driver_before_gb']:.2f} | {r['load_before']:.1f} / {r['load_after']:.1f} "
                     f"| {r['spilled_mib']:.0f} | {same} |")
    staged = {name: r["stages"] for name, r in results.items() if r["stages"]}
    if staged:
        names = list(next(iter(staged.values())))
        lines += ["", "Ray backend, seconds per stage (the first run of each job):", "",
                  "| backend | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        lines += [f"| {name} | " + " | ".join(f"{s.get(n, float('nan')):.1f}" for n in names) + " |"
                  for name, s in staged.items()]
    driver = max((r["driver_peak_gb"] for n, r in results.items() if n != "local"), default=float("nan"))
    growth = max((r["driver_peak_gb"] - r["driver_before_gb"] for n, r in results.items() if n != "local"), default=float("nan"))

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    lines += [
        "",
        f"* Ray driver peak RSS {driver:.2f} GB (target < {DRIVER_TARGET_GB:.0f} GB): {verdict(driver < DRIVER_TARGET_GB)}; "
        f"growth during scoring {growth:.2f} GB"
        + (f" (local: {local['driver_peak_gb'] - local['driver_before_gb']:.2f} GB)." if "local" in results else "."),
    ]
    if "ray, local Ray (2 CPUs)" in results and "local" in results:
        ratio = results["ray, local Ray (2 CPUs)"]["wall_s"] / local["wall_s"]
        lines.append(f"* Ray / local wall time {ratio:.2f}x (target <= {WALL_RATIO_TARGET:.0f}x): "
                     f"{verdict(ratio <= WALL_RATIO_TARGET)}.")
    if len(pair) == 2:
        pair_walls = list(zip(walls["cluster1"], walls["cluster2"], strict=True))  # --repeat runs of each, alternating
        ratios = [a / b for a, b in pair_walls]
        speedup = statistics.median(ratios)
        each = ", ".join(f"{a:.1f}/{b:.1f} s = {a / b:.2f}x" for a, b in pair_walls)
        median_of = f" (median of {len(ratios)} pairs: {each})" if len(ratios) > 1 else ""
        lines.append(f"* 2 nodes vs 1 node speed-up {speedup:.2f}x{median_of} "
                     f"(target >= {SPEEDUP_TARGET}x): {verdict(speedup >= SPEEDUP_TARGET)}.")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "scoring_ray.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not args.data:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
