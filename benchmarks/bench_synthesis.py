"""Benchmark: synthesis throughput, packs of K pipelines (``execution.pack``) against the per-model loop.

    python benchmarks/bench_synthesis.py [--quick] [--models N] [--packs 4,8,16] [--only distill@dm,...]
                                         [--threads T] [--pack-memory-gb G] [--json FILE]
                                         [--device auto|cpu|cuda]

Every paradigm runs the digits default's shadow pipelines (the default
audit split, each model's private set of ~1,330 images, the paradigm's
default options with ``method`` set).  The synthesis stage of ``--models``
model ids (default 16) runs in one worker (:class:`raypriv.pipeline.ShadowTrainer`,
``synthesize_group``, the synthesis pool's call) in the same process:

* ``loop``: ``execution.pack: 1``, one pipeline after another;
* ``pack K``: ``execution.pack: K`` for each K of ``--packs`` (default 4, 8,
  16; a K above ``--models`` is skipped).

Each run writes to its own store; the sets stored by each pack are compared
with the loop's (``max_abs_diff``: the largest difference of any pixel).
Only synthesis is timed (each model's set is checked and stored as in an
audit; no audited model is trained).  A paradigm without a batched synthesis
on this host (:meth:`raypriv.synth.base.Paradigm.packs_synthesis` False: on a
CPU, distill dc/dsa, every coreset and the diffusion pipelines that
do not pack) runs one by one inside its packs, and the table says
``generic``.  The packs are explicit ``execution.pack: K``, so methods whose
pack is only equal in law (mtt, datm, dfkd dfad) are packed here although ``auto``
leaves them one by one on a CPU.  DFAD's synthesis trains its student too
(it runs on the shadow-model pool in an audit); here its students are made
and dropped with the worker, and the stored records are compared.

``--quick`` runs distill ``dm`` and ``mtt`` alone at 8 models.  ``--profile K``
prints where the time of 20 DM iterations goes (torch.profiler, self CPU
time per operator), K pipelines one by one against one pack of K.
``--json FILE`` writes ``{"<paradigm>@<method>": {"loop_models_per_hour",
"pack_models_per_hour", "pack", "max_abs_diff", "batched", "by_pack"}}``,
``pack`` the fastest K; it and ``--out``'s section are rewritten after each
paradigm, so a run stopped by a time limit keeps the paradigms it finished.  ``--threads`` (default 1) is torch's thread count
for every run, the default shadow actor's one CPU.  ``--pack-memory-gb``
(default 8, where the config's default is 2) is ``execution.pack_memory_gb``
for every run: a pack of 16 MTT pipelines needs about 2.2 GB on digits.  A
K that does not fit that budget is refused by the worker as in an audit;
the table says "does not fit" for it and the benchmark goes on.

``--device``: the worker runs on CUDA wherever torch sees a GPU, as a Ray
actor given a GPU does (``auto``, the default).  ``cuda`` insists on one
(one ``error:`` line and exit 2 without), for the GPU run at K up to 64
(``--device cuda --packs 4,8,16,32,64``, ``run_all.py --only
synthesis-cuda``); on a GPU the pack's budget is half the device's free
memory, not ``--pack-memory-gb``.  ``cpu`` hides the GPUs from this process
(``CUDA_VISIBLE_DEVICES=""`` before torch first asks for one), so that every
CUDA-dependent choice (the worker's device, which methods batch) is the
CPU's.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from raypriv.config import ExperimentConfig  # noqa: E402
from raypriv.config import from_dict as config_from_dict  # noqa: E402
from raypriv.data import Dataset, load_dataset  # noqa: E402
from raypriv.errors import RayprivError  # noqa: E402
from raypriv.pipeline import ShadowTrainer  # noqa: E402
from raypriv.run.format import synthetic_path  # noqa: E402
from raypriv.run.store import RunStore  # noqa: E402
from raypriv.split import AuditSplit, make_audit_split  # noqa: E402
from raypriv.synth import make_paradigm  # noqa: E402

# Every paradigm of issue 25's item 2, as (paradigm, method option).  The diffusion UNet runs its default pipeline.
PARADIGMS = [
    ("distill", "dm"), ("distill", "dc"), ("distill", "dsa"), ("distill", "mtt"), ("distill", "datm"),
    ("dfkd", "deepinversion"), ("dfkd", "dfad"),
    ("coreset", "herding"), ("coreset", "kcenter"), ("coreset", "forgetting"),
    ("diffusion", "unet"),
]
QUICK = [("distill", "dm"), ("distill", "mtt")]


def experiment(paradigm: str, method: str, n_models: int, pack: int, threads: int, out_dir: str,
               pack_memory_gb: float = 2.0) -> ExperimentConfig:
    """The digits default with one paradigm at ``method`` and ``execution.pack: pack``."""
    option = {"pipeline": method} if paradigm == "diffusion" else {"method": method}
    return config_from_dict({
        "name": f"bench-synthesis-{paradigm}-{method}", "out_dir": out_dir, "n_models": n_models,
        "paradigms": [paradigm], "paradigm_options": {paradigm: option}, "attacks": ["loss"],  # any model count
        "execution": {"pack": pack, "pack_memory_gb": pack_memory_gb}, "ray": {"synthesis_cpus_per_worker": threads},
    })


def synthesize(config: ExperimentConfig, dataset: Dataset, split: AuditSplit, paradigm: str) -> tuple[float, list[dict]]:
    """Seconds to synthesize and store every model's set in one worker, and the records."""
    trainer = ShadowTrainer(config.to_dict(), config.out_dir, dataset, split, role="synthesis")
    start = time.perf_counter()
    records = trainer.synthesize_group(paradigm, list(range(config.n_models)))
    return time.perf_counter() - start, records


def stored_sets(root: str, paradigm: str, n_models: int) -> list[np.ndarray | None]:
    store = RunStore(root)
    return [store.read_npz(synthetic_path(paradigm, m))["x"].astype(np.float32)
            if store.exists(synthetic_path(paradigm, m)) else None for m in range(n_models)]


def max_abs_diff(a: list[np.ndarray | None], b: list[np.ndarray | None]) -> float:
    """The largest pixel difference between two runs' sets (NaN if a model failed in one run only)."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if (x is None) != (y is None) or (x is not None and x.shape != y.shape):
            return float("nan")
        if x is not None:
            worst = max(worst, float(np.abs(x - y).max()))
    return worst


def bench(paradigm: str, method: str, n_models: int, packs: list[int], threads: int,
          dataset: Dataset, split: AuditSplit, workdir: Path, pack_memory_gb: float) -> dict:
    """One paradigm: the loop, then each pack, in this process."""
    key = f"{paradigm}@{method}"
    loop_dir = str(workdir / f"{key}-loop")
    config = experiment(paradigm, method, n_models, 1, threads, loop_dir, pack_memory_gb)
    batched = make_paradigm(config, paradigm).packs_synthesis()
    seconds, records = synthesize(config, dataset, split, paradigm)
    failed = [r["model_id"] for r in records if r.get("status") == "failed"]
    loop = stored_sets(loop_dir, paradigm, n_models)
    result = {"loop_models_per_hour": n_models / seconds * 3600, "batched": batched, "by_pack": {},
              "loop_seconds": seconds, "failed": failed, "does_not_fit": {}}
    print(f"{key}: loop {seconds:.1f}s ({result['loop_models_per_hour']:.0f} models/h)"
          + (f", {len(failed)} failed" if failed else ""), flush=True)
    for k in packs:
        pack_dir = str(workdir / f"{key}-pack{k}")
        try:
            seconds, _ = synthesize(experiment(paradigm, method, n_models, k, threads, pack_dir, pack_memory_gb),
                                    dataset, split, paradigm)
        except RayprivError as exc:  # the worker's memory check refused K, as it would in an audit
            result["does_not_fit"][k] = str(exc)
            print(f"{key}: pack {k} does not fit: {exc}", flush=True)
            continue
        diff = max_abs_diff(loop, stored_sets(pack_dir, paradigm, n_models))
        result["by_pack"][k] = {"models_per_hour": n_models / seconds * 3600, "seconds": seconds, "max_abs_diff": diff}
        print(f"{key}: pack {k} {seconds:.1f}s ({n_models / seconds * 3600:.0f} models/h, "
              f"{result['by_pack'][k]['models_per_hour'] / result['loop_models_per_hour']:.2f}x), max |diff| {diff:.2g}",
              flush=True)
    if result["by_pack"]:
        best = max(result["by_pack"], key=lambda k: result["by_pack"][k]["models_per_hour"])
        result.update(pack_models_per_hour=result["by_pack"][best]["models_per_hour"], pack=best,
                      max_abs_diff=max(v["max_abs_diff"] for v in result["by_pack"].values()))
    return result


def profile_dm(dataset: Dataset, split: AuditSplit, k: int, iterations: int, threads: int) -> str:
    """Where a DM iteration's time goes: K pipelines one by one against one pack of K (torch.profiler, self CPU).

    Runs the digits default's DM (ipc 10, ConvNet width 32, real batches of
    64, DSA) on models 0..K-1's private sets for ``iterations`` steps each
    way, through the paradigm's own ``synthesize`` and ``synthesize_pack``.
    """
    from torch.profiler import ProfilerActivity, profile

    config = experiment("distill", "dm", max(k, 8), 1, threads, "/tmp/unused")
    config.paradigm_options["distill"]["iterations"] = iterations
    trainer = ShadowTrainer(config.to_dict(), tempfile.mkdtemp(prefix="bench-synthesis-profile-"), dataset, split,
                            role="synthesis")
    paradigm = make_paradigm(config, "distill")
    privates = [trainer.private_set(m) for m in range(k)]
    tables = []
    for label, run in (
        ("loop", lambda: [paradigm.synthesize(p, trainer.context("distill", m)) for m, p in enumerate(privates)]),
        (f"pack {k}", lambda: paradigm.synthesize_pack(privates, [trainer.context("distill", m) for m in range(k)])),
    ):
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        seconds = time.perf_counter() - start
        tables.append(f"{label}: {seconds * 1000 / (k * iterations):.1f} ms per pipeline-iteration "
                      f"(under the profiler)\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return "\n".join(tables)


def markdown(results: dict, args: argparse.Namespace, started: str) -> str:
    lines = [
        f"Synthesis throughput, {started}, {args.device_used}, torch {torch.__version__}, "
        f"{args.threads} thread(s), {args.models} models per run, execution.pack_memory_gb {args.pack_memory_gb:g}.",
        "",
        "| paradigm | synthesis | loop models/h | " + " | ".join(f"pack {k} models/h (x loop)" for k in args.packs)
        + " | max abs diff |",
        "|---|---|---|" + "---|" * len(args.packs) + "---|",
    ]
    for key, r in results.items():
        cells = []
        for k in args.packs:
            v = r["by_pack"].get(k)
            rate = None if v is None else v["models_per_hour"]
            if k in r.get("does_not_fit", {}):
                cells.append("does not fit")
                continue
            cells.append("–" if rate is None else f"{rate:.0f} ({rate / r['loop_models_per_hour']:.2f}x)")
        diff = r.get("max_abs_diff", float("nan"))
        lines.append(f"| {key} | {'batched' if r['batched'] else 'generic (one by one)'} | "
                     f"{r['loop_models_per_hour']:.0f} | " + " | ".join(cells) + f" | {diff:.2g} |")
    return "\n".join(lines) + "\n"


def write_outputs(results: dict, args: argparse.Namespace, started: str) -> None:
    """The JSON (``--json``) and the Markdown section (``--out``) of the paradigms measured so far."""
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    if args.out:
        on_gpu = args.device_used.startswith("cuda")
        title = "Synthesis packs" + (" on a GPU" if on_gpu else "")
        # The options that shape the figures, as they ran (the same line on a CPU and a GPU).
        command = ("python benchmarks/bench_synthesis.py" + (" --quick" if args.quick else "")
                   + (f" --only {args.only}" if args.only else "")
                   + f" --device {args.device} --models {args.models} --packs {','.join(map(str, args.packs))}"
                   + (f" --threads {args.threads}" if args.threads != 1 else ""))
        section = f"## {title}\n\n`{command}`\n\n" + markdown(results, args, started)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / ("synthesis-cuda.md" if on_gpu else "synthesis.md")).write_text(section)


def choose_device(device: str) -> str:
    """Apply ``--device`` before anything asks torch for a GPU; the device the worker will use, in words."""
    if device == "cpu":
        # Read by CUDA when torch first initialises it, which nothing in this process has done yet.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        if torch.cuda.is_available():  # CUDA was initialised already (e.g. by an import): cannot hide it any more
            raise RayprivError("--device cpu: torch had already initialised CUDA; run with CUDA_VISIBLE_DEVICES= instead")
    elif device == "cuda" and not torch.cuda.is_available():
        raise RayprivError("--device cuda: torch sees no CUDA device on this host; run with --device auto or cpu")
    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"cpu ({platform.processor() or platform.machine()})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="distill dm and mtt at 8 models")
    parser.add_argument("--models", type=int, default=None, help="models per run (default 16; --quick: 8)")
    parser.add_argument("--packs", default="4,8,16", help="pack sizes K, comma-separated")
    parser.add_argument("--only", default=None, help="paradigm@method list, comma-separated (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pack-memory-gb", type=float, default=8.0,
                        help="execution.pack_memory_gb of every run (default 8; the config's default is 2)")
    parser.add_argument("--json", default=None, help="write the results as JSON to this file")
    parser.add_argument("--out", default=None, help="also write the Markdown section to OUT/synthesis.md (run_all.py)")
    parser.add_argument("--profile", type=int, default=None, metavar="K",
                        help="instead: profile 20 DM iterations of K pipelines, one by one and as one pack")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: CUDA where torch sees a GPU, as an audit's worker (default); cuda: insist on one; "
                             "cpu: hide the GPUs")
    args = parser.parse_args(argv)
    try:
        args.device_used = choose_device(args.device)
    except RayprivError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.models = args.models or (8 if args.quick else 16)
    args.packs = [k for k in (int(v) for v in args.packs.split(",")) if 1 < k <= args.models]
    chosen = QUICK if args.quick else PARADIGMS
    if args.only:
        wanted = [tuple(v.split("@", 1)) for v in args.only.split(",")]
        chosen = [p for p in PARADIGMS if p in wanted]
    torch.set_num_threads(args.threads)
    # torch.optim imports torch._dynamo at its first step (about 1 s of CPU): import it now, so that the first
    # timed run, a loop, does not pay it and flatter the packs after it.
    importlib.import_module("torch._dynamo")

    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    defaults = ExperimentConfig()
    dataset = load_dataset(defaults.dataset)
    split = make_audit_split(dataset, defaults.audit.n_audit, defaults.audit.canary, args.models, defaults.seed)
    if args.profile:
        split = make_audit_split(dataset, defaults.audit.n_audit, defaults.audit.canary, max(args.profile, 8), defaults.seed)
        print(profile_dm(dataset, split, args.profile, 20, args.threads))
        return 0
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-synthesis-") as tmp:
        for paradigm, method in chosen:
            results[f"{paradigm}@{method}"] = bench(paradigm, method, args.models, args.packs, args.threads,
                                                    dataset, split, Path(tmp), args.pack_memory_gb)
            write_outputs(results, args, started)  # after each paradigm: a run cut short keeps what it measured
    print()
    print(markdown(results, args, started))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
