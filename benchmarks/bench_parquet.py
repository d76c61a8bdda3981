"""Benchmark: the Parquet logits store, bytes on disk per logit and read throughput.

    python benchmarks/bench_parquet.py [--quick] [--out DIR]

Model files are written by the audit's own writer
(:func:`raypriv.run.store.write_model_result`: one row per audit sample and query,
``model_id``, ``sample_id``, ``query_id``, ``label`` and a fixed-size float32
``logits`` list, pyarrow's default compression).  Sizes come from the files
and their Parquet metadata.  A run of synthetic logits is then read back four
ways, each in a fresh subprocess (its peak resident memory, ``VmHWM``), best of two
passes over the files (so the page cache is warm for all of them):

* ``iter_logits``: the streaming reader, row batches of about 4M logits, decode only;
* ``load_attack_inputs``: the same stream reduced to the float32 LiRA scores
  the attacks use (what ``raypriv audit`` does; a plan whose one attack,
  ``lira_online``, reads no label log-probabilities);
* ``read_logits``: one float32 ``(models, samples, queries, classes)`` array;
* ``pandas.read_parquet(RUN / "logits")``: the documented plain-pandas way
  (a ``logits`` column of per-row arrays, plus the ``paradigm`` partition).

Writes ``parquet.md`` (a Markdown section) to ``--out`` (default
``benchmarks/results``); ``--quick`` uses small sizes.
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
from bench_scoring import machine, make_store, peak_rss_gb, scoring_plan  # noqa: E402  (same synthetic store and machine line)

QUERIES = 2
CLASSES = 10  # make_store's


def file_sizes(n_samples: int, n_classes: int, folder: Path, writer: str) -> dict:
    """One model file of ``n_samples`` x QUERIES rows and ``n_classes`` logits: its bytes, in all and per column.

    ``writer``: ``raypriv`` (write_model_result's options) or ``pyarrow defaults``
    (``pq.write_table`` with no options: how the files were written before).
    """
    import pyarrow.parquet as pq

    from raypriv.run.format import LOGITS_WRITE_OPTIONS, logits_path, logits_table
    from raypriv.run.store import RunStore

    rng = np.random.default_rng(n_classes)
    logits = (rng.normal(size=(1, n_samples, QUERIES, n_classes)) * 3).astype(np.float32)
    logits = (logits + 0.5 * rng.standard_normal(logits.shape, dtype=np.float32))[0]  # as make_store's
    labels = rng.integers(0, n_classes, n_samples)
    store = RunStore(str(folder / f"classes-{n_classes}-{writer.replace(' ', '-')}"))
    options = LOGITS_WRITE_OPTIONS if writer == "raypriv" else {}
    store.write_table(logits_path("real", 0), logits_table(0, logits, labels), **options)
    path = Path(store.path(logits_path("real", 0)))
    metadata = pq.read_metadata(path)
    columns: dict[str, int] = {}
    codecs, encodings = set(), set()
    for group in range(metadata.num_row_groups):
        for index in range(metadata.num_columns):
            chunk = metadata.row_group(group).column(index)
            name = chunk.path_in_schema.split(".")[0]
            columns[name] = columns.get(name, 0) + chunk.total_compressed_size
            codecs.add(chunk.compression)
            if name == "logits":
                encodings.update(e for e in chunk.encodings if e not in ("RLE", "BIT_PACKED"))  # levels, not values
    n_logits = n_samples * QUERIES * n_classes
    return {
        "writer": writer, "classes": n_classes, "rows": metadata.num_rows, "logits": n_logits,
        "bytes": path.stat().st_size, "logit_column_bytes": columns["logits"], "codec": "/".join(sorted(codecs)),
        "encodings": "/".join(sorted(encodings)),
    }


def worker(job: dict) -> dict:
    """Read the run's logits one way, twice; return the faster time and the peak RSS."""
    from raypriv.run.store import RunStore, iter_logits
    from raypriv.scoring.read import load_attack_inputs, read_logits

    store = RunStore(job["store"])
    n_models, n_samples = job["models"], job["samples"]
    labels = store.read_npy("labels.npy")
    plan = scoring_plan(store.read_npy("keep.npy")[:n_models], labels, ["lira_online"])  # scores only, no loss
    assert (plan.n_models, plan.n_audit, plan.n_queries) == (n_models, n_samples, QUERIES)

    def once() -> int:
        if job["reader"] == "iter_logits":
            count = 0
            for model_id in range(n_models):
                for _, _, logits in iter_logits(store, "real", model_id, n_samples, QUERIES):
                    count += logits.size
            return count
        if job["reader"] == "load_attack_inputs":
            scores, _ = load_attack_inputs(plan, store, "real", workers=job["workers"])
            return scores.size * CLASSES
        if job["reader"] == "read_logits":
            return read_logits(store, "real", n_models, n_samples, QUERIES).size
        import pandas as pd

        frame = pd.read_parquet(Path(job["store"]) / "logits")
        return int(sum(len(v) for v in frame["logits"].iloc[:1])) * len(frame)

    times = []
    for _ in range(2):
        start = time.perf_counter()
        count = once()
        times.append(time.perf_counter() - start)
    return {"seconds": min(times), "logits": count, "peak_rss_gb": peak_rss_gb()}


def run_worker(job: dict) -> dict:
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)], capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({job}):\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for parquet.md")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    from raypriv.scoring.local import scoring_workers

    n_models, n_samples = (16, 500) if args.quick else (256, 10_000)
    file_samples = 500 if args.quick else 10_000
    workers = scoring_workers()
    load_before = os.getloadavg()
    started = time.perf_counter()
    data = Path(tempfile.mkdtemp(prefix="raypriv-bench-parquet-"))
    try:
        sizes = [
            file_sizes(file_samples, classes, data, writer) for classes in (10, 100) for writer in ("raypriv", "pyarrow defaults")
        ]
        start = time.perf_counter()
        store = make_store(data, n_models, n_samples)
        write_seconds = time.perf_counter() - start
        on_disk = sum(f.stat().st_size for f in (store / "logits").rglob("*.parquet"))
        readers = {}
        for reader in ("iter_logits", "load_attack_inputs", "read_logits", "pandas.read_parquet"):
            readers[reader] = run_worker(
                {"reader": reader, "store": str(store), "models": n_models, "samples": n_samples, "workers": workers}
            )
            print(f"{reader}: {readers[reader]}", file=sys.stderr)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()

    n_logits = n_models * n_samples * QUERIES * CLASSES
    lines = [
        "## Parquet logits: bytes on disk and read throughput",
        "",
        "One model file per (paradigm, model) as `raypriv audit` writes it: a row per audit sample and query with "
        "`model_id`, `sample_id`, `query_id`, `label` and the float32 `logits` list.  Bytes per logit are the "
        "file's bytes over its logits (the logits column alone in the next column; float32 is 4 bytes raw).",
        "",
        f"### One model file ({file_samples:,} samples x {QUERIES} queries)",
        "",
        "| writer | classes | rows | logits | file bytes | bytes per logit | logits column, bytes per logit "
        "| compression | logit encoding |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for size in sizes:
        lines.append(
            f"| {size['writer']} | {size['classes']} | {size['rows']:,} | {size['logits']:,} | {size['bytes']:,} | "
            f"{size['bytes'] / size['logits']:.2f} | {size['logit_column_bytes'] / size['logits']:.2f} | "
            f"{size['codec']} | {size['encodings']} |"
        )
    ours = {s["classes"]: s["bytes"] for s in sizes if s["writer"] == "raypriv"}
    default = {s["classes"]: s["bytes"] for s in sizes if s["writer"] != "raypriv"}
    lines += [
        "",
        "`raypriv` is `write_model_result` (`store.LOGITS_WRITE_OPTIONS`: zstd, the float32 logits "
        "byte-stream-split); `pyarrow defaults` is `pq.write_table` with no options, as the files were written "
        "before (dictionary encoding tried on the floats, then snappy).  The raypriv files are "
        + " and ".join(f"{ours[c] / default[c]:.2f}x" for c in sorted(ours))
        + " the size of those at " + " and ".join(f"{c}" for c in sorted(ours)) + " classes.  The logits here are "
        "normal draws (a shared per-sample part plus per-model noise): the low mantissa bytes of such floats "
        "are close to random, so only the sign and exponent bytes compress.  Real logits were not measured.",
        "",
        f"### Reading a run ({n_models} models x {n_samples:,} samples x {QUERIES} queries x {CLASSES} classes = "
        f"{n_logits / 1e6:.1f}M logits, {on_disk / 1e6:.0f} MB on disk)",
        "",
        f"Each reader in a fresh subprocess, best of two passes (warm page cache).  MB/s counts the float32 logit "
        f"payload ({n_logits * 4 / 1e6:.0f} MB); on-disk MB/s counts file bytes.  `load_attack_inputs` uses "
        f"{workers} threads, the others one.",
        "",
        "| reader | seconds | M logits/s | payload MB/s | on-disk MB/s | peak RSS GB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for reader, m in readers.items():
        assert m["logits"] == n_logits, (reader, m["logits"], n_logits)
        lines.append(
            f"| `{reader}` | {m['seconds']:.2f} | {n_logits / m['seconds'] / 1e6:.1f} | "
            f"{n_logits * 4 / m['seconds'] / 1e6:.0f} | {on_disk / m['seconds'] / 1e6:.0f} | {m['peak_rss_gb']:.2f} |"
        )
    pandas_s, stream_s = readers["pandas.read_parquet"]["seconds"], readers["iter_logits"]["seconds"]
    lines += [
        "",
        f"`pandas.read_parquet` takes {pandas_s / stream_s:.1f}x the streaming reader's time here, and peaks at "
        f"{readers['pandas.read_parquet']['peak_rss_gb']:.2f} GB against the streaming reader's "
        f"{readers['iter_logits']['peak_rss_gb']:.2f} GB (one batch at a time; the interpreter and libraries "
        "alone are about 0.2 GB).",
        "",
        f"Machine: {machine()}.  Load average {load_before[0]:.1f} at the start and {load_after[0]:.1f} at the end.  "
        f"Writing the run took {write_seconds:.1f} s; the benchmark {elapsed:.0f} s in all "
        f"({'--quick' if args.quick else 'full'} mode), {datetime.now(timezone.utc):%Y-%m-%d}.",
        "",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "parquet.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
