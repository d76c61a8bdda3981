"""Benchmark: the cost of the 18-query reference protocol, and of the valid epsilon bound.

    python benchmarks/bench_queries.py [--quick] [--out DIR] [--sizes 64x10000,256x10000]

Scoring (read + reduce, then all attacks, as ``raypriv audit`` scores) on
the synthetic stores of :mod:`bench_scoring`, once with 2 queries (``flip-2``)
and once with 18 (``flip-shift-18``) per size, each in a fresh subprocess
(time and peak RSS, ``VmHWM``); the ratio 18 / 2 is within the same run.
Then the epsilon bounds on ``models x samples`` float32 scores in memory:
``roc_metrics`` (which includes the old best-threshold bound) against
:func:`raypriv.metrics.epsilon_lower_bound_from_scores` with pairs and with
samples as the unit.  Writes ``queries.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_scoring  # noqa: E402

ATTACKS = ["loss", "lira_online", "lira_offline", "lira_online_fixed", "lira_offline_fixed", "rmia", "rmia_offline"]


def worker(job: dict) -> dict:
    if job["kind"] == "epsilon":
        from raypriv.metrics import audit_epsilon_lower_bound, epsilon_lower_bound_from_scores, roc_metrics

        rng = np.random.default_rng(0)
        keep = bench_scoring.paired_keep(job["models"], job["samples"], 0)
        scores = (rng.standard_normal(keep.shape, dtype=np.float32) + 0.5 * keep).astype(np.float32)
        out = {}
        for name, function in (("roc_metrics", lambda: roc_metrics(keep, scores)),
                               ("bound, pairs", lambda: epsilon_lower_bound_from_scores(keep, scores)),
                               ("bound, per sample", lambda: audit_epsilon_lower_bound(keep, scores))):
            start = time.perf_counter()
            function()
            out[name] = time.perf_counter() - start
        out["peak_rss_gb"] = bench_scoring.peak_rss_gb()
        return out
    bench_scoring.QUERIES = job["queries"]
    return bench_scoring.worker(job)


def run_worker(job: dict) -> dict:
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({job}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--sizes", default=None, help="scoring sizes MODELSxSAMPLES, comma-separated")
    parser.add_argument("--epsilon-size", default=None, help="MODELSxSAMPLES for the epsilon bounds (default 1024x50000)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    sizes = args.sizes or ("16x500" if args.quick else "64x10000,256x10000")
    sizes = [tuple(int(v) for v in s.split("x")) for s in sizes.split(",")]
    epsilon_size = tuple(int(v) for v in (args.epsilon_size or ("64x1000" if args.quick else "1024x50000")).split("x"))
    from raypriv.scoring.local import scoring_workers

    workers = scoring_workers()
    started = time.perf_counter()
    rows = []
    data = Path(tempfile.mkdtemp(prefix="raypriv-bench-queries-"))
    try:
        for n_models, n_samples in sizes:
            measured = {}
            for queries in (2, 18):
                bench_scoring.QUERIES = queries
                store = bench_scoring.make_store(data / f"q{queries}", n_models, n_samples)
                job = {"kind": "score", "store": str(store), "models": n_models, "samples": n_samples, "attacks": ATTACKS,
                       "outputs": False, "workers": workers, "scores_dir": str(data / "scores"), "queries": queries}
                measured[queries] = run_worker(job)
                print(f"{n_models} x {n_samples} x {queries}: {measured[queries]}", file=sys.stderr)
                shutil.rmtree(data / f"q{queries}", ignore_errors=True)
            rows.append((n_models, n_samples, measured))
        epsilon = run_worker({"kind": "epsilon", "models": epsilon_size[0], "samples": epsilon_size[1]})
    finally:
        shutil.rmtree(data, ignore_errors=True)

    lines = ["## Queries: the 18-query protocol, and the valid epsilon bound", "",
             f"Scoring of all {len(ATTACKS)} attacks ({', '.join(ATTACKS)}) on synthetic logits (10 classes), read + "
             f"attacks, {workers} threads, a fresh process per run; 18 queries against 2 on the same sizes.", "",
             "| models | samples | 2 queries s | 18 queries s | time ratio "
             "| 2 queries peak GB | 18 queries peak GB | memory ratio |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n_models, n_samples, m in rows:
        t2, t18 = (m[q]["read_s"] + m[q]["attack_s"] for q in (2, 18))
        r2, r18 = m[2]["peak_rss_gb"], m[18]["peak_rss_gb"]
        lines.append(f"| {n_models:,} | {n_samples:,} | {t2:.2f} | {t18:.2f} | {t18 / t2:.1f}x "
                     f"| {r2:.2f} | {r18:.2f} | {r18 / r2:.1f}x |")
    base = epsilon["roc_metrics"]
    lines += ["", f"Epsilon bounds on {epsilon_size[0]:,} x {epsilon_size[1]:,} float32 scores in memory "
              f"(peak RSS {epsilon['peak_rss_gb']:.2f} GB):", "",
              "| computation | s | ratio to roc_metrics |", "|---|---:|---:|"]
    for name in ("roc_metrics", "bound, pairs", "bound, per sample"):
        lines.append(f"| {name} | {epsilon[name]:.2f} | {epsilon[name] / base:.2f}x |")
    lines += ["", f"Machine: {bench_scoring.machine()}; load average {os.getloadavg()[0]:.1f} at the end.  "
              f"{time.perf_counter() - started:.0f} s in all "
              f"({'--quick' if args.quick else 'full'}), {datetime.now(timezone.utc):%Y-%m-%d}.", ""]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "queries.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
