"""Benchmark: shadow-training throughput, the ensemble engine against the per-model loop.

    python benchmarks/bench_training.py [--quick] [--out DIR] [--device cpu|cuda] [--recipe digits|cifar10]

``--recipe digits`` (default) trains the digits default's shadow models (the
``real`` paradigm: cnn_small, 15 epochs, batch 128, on each model's private
set of ~1,330 images) and, as a second small architecture, the same recipe
with ``mlp``.  Each engine trains the same model ids from the same seeds:

* ``loop``: :func:`raypriv.training.train_classifier`, one model after another;
* ``ensemble G``: :func:`raypriv.ensemble.train_ensemble` on groups of G.

It reports models per hour and the ratio to the loop measured in the same
run, and the achieved FLOP/s against a matmul ceiling measured in the same
run (square float32 matmuls at the same thread count).  FLOPs per model are
counted with ``torch.utils.flop_counter.FlopCounterMode`` on one training step
(forward + backward), scaled by the number of samples the recipe processes.
Only training is timed (not synthesis, evaluation or Parquet writes).

``--recipe cifar10 --device cuda`` times the ``jobs/configs/cifar10-real.yaml``
recipe (ResNet-18, batch 512, flip+crop, bf16 autocast) on CIFAR-shaped random
images: per-step time over a fixed number of steps, extrapolated to the
recipe's 40 epochs of 25,250 private images, against airbench94's ~2.6 s per
model on an A100 (Keller Jordan, cifar10-airbench).  Writes ``training.md``
(or ``training-<device>-<recipe>.md``) to ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import raypriv.config  # noqa: E402
from raypriv.config import ExperimentConfig, TrainConfig  # noqa: E402
from raypriv.data import Dataset, load_dataset  # noqa: E402
from raypriv.ensemble import train_ensemble  # noqa: E402
from raypriv.split import make_audit_split  # noqa: E402
from raypriv.synth import ShadowContext  # noqa: E402
from raypriv.training import Normalizer, augment, autocast, make_optimizer, train_classifier  # noqa: E402

AIRBENCH94_A100_SECONDS = 2.6  # per model, github.com/KellerJordan/cifar10-airbench (README)


def matmul_ceiling(device: torch.device, size: int = 2048, repeats: int = 5, trials: int = 5) -> float:
    """Float32 matmul throughput (FLOP/s) at the current thread count: the machine's practical peak.

    The best of several trials, so that a busy moment does not lower the ceiling.
    """
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(trials):
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        _sync(device)
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - start))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_sample(context: ShadowContext, x: torch.Tensor, y: torch.Tensor, recipe: TrainConfig) -> float:
    """Forward + backward FLOPs of one training step, per sample in the batch."""
    model = context.build_model()
    batch = min(len(y), recipe.batch_size)
    with FlopCounterMode(display=False) as counter:
        with autocast(x.device, recipe):
            loss = F.cross_entropy(model(context.normalizer(x[:batch])), y[:batch])
        loss.backward()
    return counter.get_total_flops() / batch


class Workload:
    """The models a benchmark trains: contexts and private sets of the digits default audit."""

    def __init__(self, config: ExperimentConfig, dataset: Dataset, device: torch.device):
        self.config, self.dataset, self.device = config, dataset, device
        self.split = make_audit_split(dataset, config.audit.n_audit, config.audit.canary, config.n_models, config.seed)
        self.normalizer = Normalizer.fit(dataset.x_train).to(device)
        self.x = torch.tensor(dataset.x_train, device=device)
        self.y = torch.tensor(self.split.labels, device=device)

    def context(self, model_id: int) -> ShadowContext:
        d = self.dataset
        return ShadowContext(self.config, "real", model_id, d.num_classes, d.input_shape, self.normalizer, self.device)

    def private(self, model_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.from_numpy(self.split.private_indices(model_id % self.config.n_models)).to(self.device)
        return self.x[index], self.y[index]

    def samples_seen(self, model_id: int) -> int:
        n = len(self.split.private_indices(model_id % self.config.n_models))
        return self.config.train.epochs * (n - (n % self.config.train.batch_size == 1))

    def time_loop(self, model_ids: list[int]) -> float:
        _sync(self.device)
        start = time.perf_counter()
        for m in model_ids:
            train_classifier(self.context(m).build_model(), *self.private(m), self.config.train, self.normalizer,
                             self.config.seed, m)
        _sync(self.device)
        return time.perf_counter() - start

    def time_ensemble(self, model_ids: list[int], group: int) -> float:
        _sync(self.device)
        start = time.perf_counter()
        for i in range(0, len(model_ids), group):
            ids = model_ids[i : i + group]
            models = [self.context(m).build_model() for m in ids]
            train_ensemble(models, [self.private(m) for m in ids], self.config.train, self.normalizer, self.config.seed, ids)
        _sync(self.device)
        return time.perf_counter() - start


def digits_rows(arch: str, groups: list[int], loop_models: int, epochs: int | None, device: torch.device,
                ceiling: float) -> list[dict]:
    overrides = {"model.arch": arch, "train.epochs": epochs}
    config = raypriv.config.load(None, overrides)
    work = Workload(config, load_dataset(config.dataset), device)
    per_sample = flops_per_sample(work.context(0), *work.private(0), config.train)

    def row(engine: str, group: int | str, ids: list[int], seconds: float) -> dict:
        flops = per_sample * sum(work.samples_seen(m) for m in ids)
        return {
            "arch": arch, "engine": engine, "G": group, "models": len(ids), "seconds": seconds,
            "s/model": seconds / len(ids), "models/hour": 3600 * len(ids) / seconds,
            "GFLOP/s": flops / seconds / 1e9, "of ceiling": flops / seconds / ceiling,
        }

    ids = list(range(loop_models))
    work.time_loop(ids[:1])  # warm-up: allocator, kernels
    rows = [row("loop", "-", ids, work.time_loop(ids))]
    for group in groups:
        ids = list(range(max(group, min(loop_models, 8))))  # at least one full group
        work.time_ensemble(ids[:2], 2)
        rows.append(row("ensemble", group, ids, work.time_ensemble(ids, group)))
    base = rows[0]["models/hour"]
    for r in rows:
        r["vs loop"] = r["models/hour"] / base
    return rows


def cifar_rows(device: torch.device, quick: bool, ceiling: float) -> list[dict]:
    """The cifar10-real recipe on CIFAR-shaped random images, extrapolated from a fixed number of steps."""
    config = raypriv.config.load(HERE.parent / "jobs" / "configs" / "cifar10-real.yaml", {"out_dir": "unused"})
    recipe = config.train
    n_private = 25_250  # 25k always-in + half of 500 audit samples
    if quick:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, width=8))
        recipe = dataclasses.replace(recipe, batch_size=32)
        n_private = 512
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(min(n_private, 4096), 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, size=len(x)).astype(np.int64)
    dataset = Dataset("cifar-shaped-random", x, y, x[:16], y[:16], 10)
    normalizer = Normalizer.fit(x).to(device)
    context = ShadowContext(config, "real", 0, 10, dataset.input_shape, normalizer, device)
    xs, ys = torch.tensor(x, device=device), torch.tensor(y, device=device)
    steps = 5 if quick else 60
    steps_per_model = recipe.epochs * math.ceil(n_private / recipe.batch_size)
    per_sample = flops_per_sample(context, xs, ys, recipe)
    model = context.build_model()
    optimizer = make_optimizer(model, recipe)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        index = torch.randint(0, len(ys), (recipe.batch_size,), generator=generator).to(device)
        with autocast(device, recipe):
            loss = F.cross_entropy(model(normalizer(augment(xs[index], recipe, generator))), ys[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    per_step = (time.perf_counter() - start) / steps
    seconds = per_step * steps_per_model
    flops = per_sample * recipe.batch_size / per_step
    return [{
        "arch": f"{config.model.arch} (cifar10-real recipe{', quick sizes' if quick else ''})", "engine": "loop", "G": "-",
        "models": f"{steps} steps timed", "seconds": per_step * steps, "s/model": seconds, "models/hour": 3600 / seconds,
        "GFLOP/s": flops / 1e9, "of ceiling": flops / ceiling, "vs loop": 1.0,
        "vs airbench94 (A100)": AIRBENCH94_A100_SECONDS / seconds,
    }]


def markdown(rows: list[dict], args, ceiling: float, device: torch.device, wall: float) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    fmt = {
        "seconds": "{:.1f}", "s/model": "{:.2f}", "models/hour": "{:,.0f}", "GFLOP/s": "{:.1f}",
        "of ceiling": "{:.0%}", "vs loop": "{:.2f}x", "vs airbench94 (A100)": "{:.3f}x",
    }
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = [fmt[c].format(r[c]) if c in fmt and isinstance(r.get(c), (int, float)) else str(r.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    machine = (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
        f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}; "
        f"torch {torch.__version__}, numpy {np.__version__}"
    )
    findings = []
    for arch in dict.fromkeys(r["arch"] for r in rows):
        loop = next((r for r in rows if r["arch"] == arch and r["engine"] == "loop"), None)
        ensembles = [r for r in rows if r["arch"] == arch and r["engine"] == "ensemble"]
        if loop is None or not ensembles:
            continue
        best = max(ensembles, key=lambda r: r["vs loop"])
        largest = max(ensembles, key=lambda r: r["G"])
        findings.append(
            f"- **{arch}**: the loop runs at {loop['of ceiling']:.0%} of the matmul ceiling, so no engine doing the "
            f"same FLOPs can beat it by more than {1 / loop['of ceiling']:.1f}x here. The ensemble at G={largest['G']} "
            f"gives {largest['vs loop']:.2f}x the loop's models per hour (best: {best['vs loop']:.2f}x at G={best['G']}); "
            f"the 3x target at G=64 is {'met' if largest['G'] == 64 and largest['vs loop'] >= 3 else 'not met'}."
        )
    title = "Shadow-training throughput"
    if (args.recipe, device.type) != ("digits", "cpu"):
        title += f" ({args.recipe}, {device.type})"
    flags = (  # the command line's options that differ from the defaults
        (" --quick" if args.quick else "")
        + (f" --device {args.device}" if args.device != "cpu" else "")
        + (f" --recipe {args.recipe}" if args.recipe != "digits" else "")
    )
    return "\n".join([
        f"## {title}",
        "",
        f"`python benchmarks/bench_training.py{flags}` on {datetime.now(timezone.utc):%Y-%m-%d}; {machine}.",
        f"Matmul ceiling measured in this run: {ceiling / 1e9:.1f} GFLOP/s (float32 2048x2048). Wall time {wall:.0f} s.",
        "",
        *lines,
        "",
        *findings,
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute), for tests")
    parser.add_argument("--out", default=str(HERE / "results"), help="folder for the Markdown section")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--recipe", default="digits", choices=["digits", "cifar10"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a shadow-model actor has 1 CPU by default)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    start = time.perf_counter()
    ceiling = matmul_ceiling(device)
    if args.recipe == "cifar10":
        rows = cifar_rows(device, args.quick, ceiling)
        name = f"training-{device.type}-cifar10.md"
    else:
        groups = [1, 4] if args.quick else [1, 8, 32, 64]
        epochs = 1 if args.quick else None
        rows = digits_rows("cnn_small", groups, 4 if args.quick else 16, epochs, device, ceiling)
        rows += digits_rows("mlp", groups, 4 if args.quick else 16, epochs, device, ceiling)
        name = "training.md" if device.type == "cpu" else f"training-{device.type}.md"
    text = markdown(rows, args, ceiling, device, time.perf_counter() - start)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
