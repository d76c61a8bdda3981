"""Benchmark: Ray's overhead on the digits default audit, against the same work in-process.

    python benchmarks/bench_ray.py [--quick] [--out DIR] [--models N]

Runs :func:`raypriv.driver.run_audit` on the digits default (64 models) four
ways, each into a fresh run directory, timing the whole call (data, training,
Parquet writes, attacks, report):

1. in-process (``use_ray=False``): one :class:`ShadowTrainer` in this
   process, 1 torch thread: the baseline;
2. Ray, 1 actor of 1 CPU, the driver starting Ray itself (``ray.init`` inside
   the timed call, as ``raypriv audit`` on a laptop does): the same work,
   so the difference is Ray's overhead including start-up;
3. the same with Ray already running (as under ``ray job submit`` on a
   cluster, where the driver joins a live cluster): the overhead without
   start-up;
4. Ray with one actor per core, the default: what Ray buys on this machine.

Every run must produce identical metrics (thread count and seeds are
pinned), which the script checks.  Writes ``ray.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402
import torch  # noqa: E402

import raypriv.config  # noqa: E402
from raypriv.driver import run_audit  # noqa: E402
from raypriv.results import ParadigmMetrics  # noqa: E402

TARGET = 0.15


def timed_audit(out: Path, overrides: dict, use_ray: bool) -> tuple[float, dict[str, ParadigmMetrics]]:
    config = raypriv.config.load(None, {**overrides, "out_dir": str(out)})
    start = time.perf_counter()
    run = run_audit(config, use_ray=use_ray, show_progress=False)
    return time.perf_counter() - start, run.results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 models of 1 epoch, for tests")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--models", type=int, default=64)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    overrides = {"n_models": 8 if args.quick else args.models, "train.epochs": 1 if args.quick else None}
    cores = os.cpu_count() or 1
    scratch = Path(tempfile.mkdtemp(prefix="raypriv-bench-ray-"))
    rows, metrics = [], []
    try:
        seconds, m = timed_audit(scratch / "inprocess", overrides, use_ray=False)
        rows.append(("in-process, 1 thread (baseline)", seconds))
        metrics.append(m)
        seconds, m = timed_audit(scratch / "ray-cold", {**overrides, "ray.num_actors": 1}, use_ray=True)
        rows.append(("Ray, 1 actor, ray.init inside the timed call", seconds))
        metrics.append(m)
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
        try:
            seconds, m = timed_audit(scratch / "ray-warm", {**overrides, "ray.num_actors": 1}, use_ray=True)
            rows.append(("Ray, 1 actor, Ray already running", seconds))
            metrics.append(m)
            seconds, m = timed_audit(scratch / "ray-all", {**overrides, "ray.num_actors": cores}, use_ray=True)
            rows.append((f"Ray, {cores} actors (one per core), Ray already running", seconds))
            metrics.append(m)
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    attack_results = [
        {(p, a): v.to_json() for p, entry in m.items() for a, v in entry.attacks.items()} for m in metrics
    ]  # timings differ from run to run; the attacks' numbers must not
    identical = all(r == attack_results[0] for r in attack_results)
    base = rows[0][1]
    n_models = overrides["n_models"]
    table = ["| run | wall s | models/hour | vs in-process |", "|---|---|---|---|"]
    for name, seconds in rows:
        table.append(f"| {name} | {seconds:.1f} | {3600 * n_models / seconds:,.0f} | {(seconds - base) / base:+.1%} |")
    cold, warm = (rows[1][1] - base) / base, (rows[2][1] - base) / base
    verdict = lambda x: "meets" if x < TARGET else "misses"  # noqa: E731
    text = "\n".join([
        "## Ray overhead",
        "",
        f"`python benchmarks/bench_ray.py{' --quick' if args.quick else ''}` on {datetime.now(timezone.utc):%Y-%m-%d}; "
        f"{platform.machine()}, {cores} cores; ray {ray.__version__}, torch {torch.__version__}. "
        f"The digits default audit with {n_models} models{' of 1 epoch' if args.quick else ''}, end to end "
        "(training, Parquet, attacks).",
        "",
        *table,
        "",
        f"Overhead with 1 actor: {cold:+.1%} including Ray's start-up ({verdict(cold)} the <{TARGET:.0%} target), "
        f"{warm:+.1%} when Ray is already running ({verdict(warm)} it). "
        f"All runs gave {'identical' if identical else 'DIFFERENT'} attack metrics.",
        "",
    ])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray.md").write_text(text)
    print(text)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
