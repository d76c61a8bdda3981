"""Benchmark: streaming attack scoring, time and peak memory as models x samples grow.

    python benchmarks/bench_scoring.py [--quick] [--out DIR] [--workers N] [--data DIR]

Synthetic logits (10 classes, 2 queries, a planted membership signal) are
written to a real run-directory layout (``logits/paradigm=real/model-*.parquet``,
through :func:`raypriv.run.store.write_model_result`), so the measured path is the
audit's own: :func:`raypriv.scoring.read.load_attack_inputs` (read and reduce,
for a :class:`raypriv.scoring.ScoringPlan` of the store's sizes and attacks),
:func:`raypriv.attacks.score_attacks` (the attacks), then
:func:`raypriv.metrics.roc_metrics` and ``scores.parquet`` in row groups
(:func:`raypriv.scoring.local.write_scores`).
Every size runs in a fresh subprocess, whose peak resident memory
(``VmHWM``, interpreter and libraries included) is reported beside the phase
times.  One store per sample count holds the
largest model count; the keep matrix pairs models (``2i+1`` is the complement
of ``2i``), so every even prefix of models is balanced and smaller model
counts read the first files of the same store.

It also times a straightforward per-(target, sample) loop shaped like the
reference LiRA code (tensorflow/privacy ``mi_lira_2021``: gather the IN and OUT
shadow scores, ``np.median``, ``np.std``, ``scipy.stats.norm.logpdf``)
against the engine on the same scores, and reports the speed-up measured in
the same run.  Writes ``scoring.md`` (a Markdown section) to ``--out``
(default ``benchmarks/results``).  ``--quick`` uses small sizes (well under a
minute).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
QUERIES = 2
CLASSES = 10
SEED = 0
LIRA = ["lira_online", "lira_offline", "lira_online_fixed", "lira_offline_fixed"]
ALL_ATTACKS = ["loss", *LIRA, "rmia"]
TIME_TARGET_S = 60.0
MEMORY_TARGET_GB = 4.0


def peak_rss_gb() -> float:
    """This process's peak resident memory in GB.

    ``VmHWM`` from /proc (Linux): the high-water mark of this program alone.
    ``getrusage().ru_maxrss`` is the fallback elsewhere; on Linux it also
    counts the parent's resident memory at the fork that started the worker.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


# ----------------------------------------------------------------- synthetic store


def paired_keep(n_models: int, n_samples: int, seed: int) -> np.ndarray:
    """Model 2i+1 is IN exactly where 2i is OUT: every even prefix of models is balanced."""
    half = np.random.default_rng([seed, 1]).random((n_models // 2, n_samples)) < 0.5
    keep = np.empty((n_models, n_samples), dtype=bool)
    keep[0::2], keep[1::2] = half, ~half
    return keep


def make_store(root: Path, n_models: int, n_samples: int) -> Path:
    """Write (or reuse) a run directory of synthetic logits for ``n_models`` x ``n_samples``."""
    from raypriv.run.format import logits_path
    from raypriv.run.store import RunStore, write_model_result

    meta = {"models": n_models, "samples": n_samples, "queries": QUERIES, "classes": CLASSES, "seed": SEED}
    path = root / f"store-{n_samples}"
    marker = path / "bench.json"
    if marker.is_file() and json.loads(marker.read_text()) == meta:
        return path
    shutil.rmtree(path, ignore_errors=True)
    store = RunStore(str(path))
    keep = paired_keep(n_models, n_samples, SEED)
    rng = np.random.default_rng([SEED, 2])
    labels = rng.integers(0, CLASSES, n_samples)
    base = (rng.normal(size=(n_samples, QUERIES, CLASSES)) * 3).astype(np.float32)  # per-sample difficulty
    store.write_npy("keep.npy", keep)
    store.write_npy("labels.npy", labels)
    rows = np.arange(n_samples)
    now = datetime.now(timezone.utc)
    for model_id in range(n_models):
        noise = np.random.default_rng([SEED, 3, model_id]).standard_normal((n_samples, QUERIES, CLASSES), dtype=np.float32)
        logits = base + 0.5 * noise
        logits[rows, :, labels] += 1.5 * keep[model_id][:, None]  # members are fit better
        row = {
            "paradigm": "real", "model_id": model_id, "seed": SEED, "recipe_hash": "bench", "in_count": int(keep[model_id].sum()),
            "private_size": n_samples, "synthetic_size": n_samples, "test_acc": 0.0, "synth_seconds": 0.0,
            "train_seconds": 0.0, "device": "cpu", "info": "{}", "status": "ok", "finished_at": now,
        }
        write_model_result(store, row, logits, labels)
    assert store.exists(logits_path("real", n_models - 1))
    marker.write_text(json.dumps(meta))
    return path


# ----------------------------------------------------------------- workers (subprocesses)


def scoring_plan(keep: np.ndarray, labels: np.ndarray, attacks: list[str]):
    """The :class:`raypriv.scoring.ScoringPlan` of a synthetic store: its ``real`` paradigm, ``keep``'s models and
    samples, QUERIES queries, ``attacks`` (which decide what :func:`raypriv.scoring.read.load_attack_inputs` reads)."""
    from raypriv.scoring import ScoringPlan

    return ScoringPlan(
        name="bench", paradigms=("real",), attacks=tuple(attacks), keep=np.asarray(keep, dtype=bool),
        audit_labels=np.asarray(labels, dtype=np.int64), population_labels=np.empty(0, np.int64), n_queries=QUERIES,
        recipe_hashes={"real": "bench"},
    )


def loop_lira_online(scores: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """LiRA online the straightforward way: for each target and sample, gather, median, std, logpdf."""
    from scipy.stats import norm

    n_models, n_samples, _ = scores.shape
    k = int(keep[:, 0].sum())
    out = np.empty((n_models, n_samples))
    for target in range(n_models):
        for sample in range(n_samples):
            ins = np.flatnonzero(keep[:, sample])
            outs = np.flatnonzero(~keep[:, sample])
            ins, outs = ins[ins != target][: k - 1], outs[outs != target][: len(outs) - 1]
            dat_in = scores[ins, sample].astype(np.float64)
            dat_out = scores[outs, sample].astype(np.float64)
            mean_in, mean_out = np.median(dat_in, 0), np.median(dat_out, 0)
            std_in, std_out = np.std(dat_in, 0), np.std(dat_out, 0)
            observed = scores[target, sample].astype(np.float64)
            pr_in = -norm.logpdf(observed, mean_in, std_in + 1e-30)
            pr_out = -norm.logpdf(observed, mean_out, std_out + 1e-30)
            out[target, sample] = -(pr_in - pr_out).mean()
    return out


def worker(job: dict) -> dict:
    """Run one measurement in this (fresh) process and return its numbers."""
    from raypriv.attacks import score_attacks
    from raypriv.metrics import roc_metrics
    from raypriv.run.format import scores_schema, scores_write_options
    from raypriv.run.store import RunStore
    from raypriv.scoring.local import write_scores
    from raypriv.scoring.read import load_attack_inputs

    baseline = peak_rss_gb()
    store = RunStore(job["store"])
    n_models, n_samples, workers = job["models"], job["samples"], job["workers"]
    keep = store.read_npy("keep.npy")[:n_models]
    labels = store.read_npy("labels.npy")
    assert keep.shape == (n_models, n_samples) and labels.shape == (n_samples,), (keep.shape, labels.shape)
    attacks = job["attacks"]
    result: dict = {"baseline_rss_gb": baseline}

    if job["kind"] == "loop":
        scores, _ = load_attack_inputs(scoring_plan(keep, labels, ["lira_online"]), store, "real")
        start = time.perf_counter()
        engine = score_attacks(scores, None, keep, ["lira_online"], workers=1)["lira_online"]
        result["engine_s"] = time.perf_counter() - start
        start = time.perf_counter()
        loop = loop_lira_online(scores, keep)
        result["loop_s"] = time.perf_counter() - start
        result["max_rel_diff"] = float(np.abs(engine - loop).max() / np.abs(loop).max())
        return result

    timings: dict[str, float] = {}
    start = time.perf_counter()
    scores, log_p = load_attack_inputs(scoring_plan(keep, labels, attacks), store, "real", workers=workers, timings=timings)
    result["read_s"] = time.perf_counter() - start
    result["decode_cpu_s"], result["reduce_cpu_s"] = timings["read_seconds"], timings["reduce_seconds"]
    result["rss_after_read_gb"] = peak_rss_gb()
    start = time.perf_counter()
    results = score_attacks(scores, log_p, keep, attacks, workers=workers)
    result["attack_s"] = time.perf_counter() - start
    result["rss_after_attacks_gb"] = peak_rss_gb()
    del scores, log_p
    if job["outputs"]:
        start = time.perf_counter()
        aucs = {}
        for attack, score in results.items():
            aucs[attack] = roc_metrics(keep, score)[0]["auc"]
        result["metrics_s"] = time.perf_counter() - start
        start = time.perf_counter()
        out = RunStore(job["scores_dir"])
        with out.table_writer("scores.parquet", scores_schema(attacks), **scores_write_options(attacks)) as writer:
            write_scores(writer, "real", keep, results)
        result["write_s"] = time.perf_counter() - start
        result["scores_bytes"] = os.path.getsize(Path(job["scores_dir"]) / "scores.parquet")
        result["auc"] = aucs
    result["peak_rss_gb"] = peak_rss_gb()
    return result


def run_worker(job: dict) -> dict:
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)],
        capture_output=True, text=True, check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({job}):\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------- report


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = ", ".join(f"{name} {version(name)}" for name in ("numpy", "scipy", "pyarrow", "pandas", "torch"))
    return f"{os.cpu_count()} CPUs ({cpu}), {memory:.0f} GiB RAM; Python {platform.python_version()}, {versions}"


def fmt(value: float, digits: int | None = None) -> str:
    """Seconds (or GB with ``digits``): two decimals below 10, one above."""
    if digits is None:
        digits = 2 if value < 10 else 1
    return f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, well under a minute")
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for scoring.md")
    parser.add_argument("--workers", type=int, default=None, help="scoring threads (default: raypriv's, min(4, CPUs))")
    parser.add_argument("--data", default=None,
                        help="folder for the synthetic stores (kept and reused); default: a temporary one")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    from raypriv.scoring.local import scoring_workers

    workers = args.workers or scoring_workers()
    if args.quick:
        model_counts, sample_counts, loop_size = [16, 32], [200, 1000], (16, 200)
    else:
        model_counts, sample_counts, loop_size = [64, 256, 1024], [1000, 10000, 50000], (64, 1000)
    target = (model_counts[-1], sample_counts[-1])
    load_before = os.getloadavg()
    started = time.perf_counter()
    data = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="raypriv-bench-scoring-"))
    data.mkdir(parents=True, exist_ok=True)
    try:
        stores, write_seconds = {}, {}
        for n_samples in sample_counts:
            start = time.perf_counter()
            stores[n_samples] = make_store(data, model_counts[-1], n_samples)
            write_seconds[n_samples] = time.perf_counter() - start
            print(f"store {model_counts[-1]} x {n_samples}: {write_seconds[n_samples]:.0f}s", file=sys.stderr)

        def job(models, samples, attacks, outputs, kind="score"):
            scores_dir = data / f"scores-{models}-{samples}"
            return {
                "kind": kind, "store": str(stores[samples]), "models": models, "samples": samples, "attacks": attacks,
                "outputs": outputs, "workers": workers, "scores_dir": str(scores_dir),
            }

        grid = []
        for n_samples in sample_counts:
            for n_models in model_counts:
                measured = run_worker(job(n_models, n_samples, ALL_ATTACKS, True))
                grid.append((n_models, n_samples, measured))
                print(f"grid {n_models} x {n_samples}: {measured}", file=sys.stderr)
        focus = {}
        for name, attacks in (("4 LiRA variants", LIRA), ("rmia", ["rmia"]), ("loss", ["loss"])):
            focus[name] = run_worker(job(*target, attacks, False))
            print(f"target {name}: {focus[name]}", file=sys.stderr)
        loop = run_worker(job(*loop_size, ["lira_online"], False, kind="loop"))
        print(f"loop: {loop}", file=sys.stderr)
    finally:
        if not args.data:
            shutil.rmtree(data, ignore_errors=True)
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()

    lines = [
        "## Scoring: streaming attacks over the Parquet logits",
        "",
        f"Synthetic logits ({CLASSES} classes, {QUERIES} queries, a planted membership signal) in a run-directory "
        "Parquet store, scored by the audit's own path: `load_attack_inputs` streams each model's file in row "
        "batches and reduces it to float32 LiRA scores and label log-probabilities (**read**: Parquet decode plus "
        "reduction, wall time), `score_attacks` computes the attacks in blocks of audit samples (**attacks**), "
        "then `roc_metrics` summarises each attack and `scores.parquet` is written in row groups (**metrics + "
        f"write**).  {workers} scoring threads.  Each size runs in a fresh subprocess; **peak RSS** is its "
        "high-water resident memory (`VmHWM`; interpreter and libraries included, about "
        f"{grid[0][2]['baseline_rss_gb']:.2f} GB after imports).  The logit files were written just before, so "
        "they are read from the page cache.",
        "",
        f"### All six attacks ({', '.join(ALL_ATTACKS)}), {QUERIES} queries",
        "",
        "| models | samples | (target, sample) pairs | read s | attacks s | metrics + write s | total s "
        "| peak RSS GB | lira_online AUC | rmia AUC |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n_models, n_samples, m in grid:
        total = m["read_s"] + m["attack_s"] + m["metrics_s"] + m["write_s"]
        lines.append(
            f"| {n_models:,} | {n_samples:,} | {n_models * n_samples:,} | {fmt(m['read_s'])} | {fmt(m['attack_s'])} | "
            f"{fmt(m['metrics_s'] + m['write_s'])} | {fmt(total)} | {fmt(m['peak_rss_gb'], 2)} | "
            f"{m['auc']['lira_online']:.3f} | {m['auc']['rmia']:.3f} |"
        )
    lines += [
        "",
        f"### The target size: {target[0]:,} models x {target[1]:,} samples x {QUERIES} queries",
        "",
        f"Targets: under {TIME_TARGET_S:.0f} s and {MEMORY_TARGET_GB:.0f} GB.  Read + attacks, without metrics or "
        "`scores.parquet` (the last row of the table above has the whole pipeline).",
        "",
        "| attacks | read s | attacks s | read + attacks s | peak RSS GB | time target | memory target |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for name, m in focus.items():
        total = m["read_s"] + m["attack_s"]
        lines.append(
            f"| {name} | {fmt(m['read_s'])} | {fmt(m['attack_s'])} | {fmt(total)} | {fmt(m['peak_rss_gb'], 2)} | "
            f"{'met' if total < TIME_TARGET_S else 'missed'} | {'met' if m['peak_rss_gb'] < MEMORY_TARGET_GB else 'missed'} |"
        )
    last = grid[-1][2]
    whole = last["read_s"] + last["attack_s"] + last["metrics_s"] + last["write_s"]
    lines += [
        f"| all six + metrics + scores.parquet | {fmt(last['read_s'])} | {fmt(last['attack_s'])} | "
        f"{fmt(last['read_s'] + last['attack_s'])} (whole pipeline {fmt(whole)}) | {fmt(last['peak_rss_gb'], 2)} | "
        f"{'met' if last['read_s'] + last['attack_s'] < TIME_TARGET_S else 'missed'} | "
        f"{'met' if last['peak_rss_gb'] < MEMORY_TARGET_GB else 'missed'} |",
        "",
        f"For scale: the whole float64 logits array at this size would be "
        f"{target[0] * target[1] * QUERIES * CLASSES * 8 / 1e9:.1f} GB; `scores.parquet` here is "
        f"{last['scores_bytes'] / 1e9:.2f} GB.  Parquet decode and reduction took {fmt(last['decode_cpu_s'])} and "
        f"{fmt(last['reduce_cpu_s'])} thread-seconds of the read.",
        "",
        f"### Against a per-sample loop ({loop_size[0]} models x {loop_size[1]:,} samples x {QUERIES} queries, "
        "lira_online, one thread)",
        "",
        "The loop has the shape of the reference code (for each target and sample: gather the IN and OUT shadow "
        "scores, `np.median`, `np.std`, `scipy.stats.norm.logpdf`), with the same leave-one-out groups; both run "
        "on the same float32 scores in memory.",
        "",
        "| per-sample loop s | engine s | speed-up | max relative difference |",
        "|---:|---:|---:|---:|",
        f"| {fmt(loop['loop_s'])} | {fmt(loop['engine_s'], 3)} | {loop['loop_s'] / loop['engine_s']:.0f}x "
        f"| {loop['max_rel_diff']:.1e} |",
        "",
        f"Machine: {machine()}.  Load average {load_before[0]:.1f} at the start and {load_after[0]:.1f} at the end "
        f"(other processes share the CPUs when it exceeds the CPU count, and the times then read high).  "
        f"Writing the synthetic stores took {', '.join(f'{s:.0f} s' for s in write_seconds.values())}; "
        f"the benchmark {elapsed:.0f} s in all ({'--quick' if args.quick else 'full'} mode), "
        f"{datetime.now(timezone.utc):%Y-%m-%d}.",
        "",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scoring.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
