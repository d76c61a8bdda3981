"""Fault injection: kill -9, corrupt files and concurrent audits in a loop; every run must end with its own results.

    python benchmarks/fault_injection.py --rounds 20 --max-seconds 1200 [--ray] [--work DIR]

A reference audit (tiny digits config: 8 models × 40 audit samples) runs
first.  Each round then takes the next case in turn, on a fresh run directory:

* ``kill -9``: start an audit, SIGKILL its process group once a random number
  of models is stored (or when it is a random moment into scoring), rerun it;
* ``corrupt``: copy the reference run and damage one file at random (bytes
  flipped inside a logits file, a truncated logits file or model row, a deleted
  logits file, a flipped bit in keep.npy, a stale lock of a killed audit), rerun;
* ``concurrent``: start two audits on one directory at once; exactly one may
  run, the other must exit 2 with the lock error;
* ``bit flip``: copy the reference run and flip one random bit of one file of
  a random kind (a logits file, a model row, keep.npy, audit.parquet,
  scores.parquet, metrics.json, run.json, config.yaml).  First the readers
  look at it as it is (``raypriv.load_run``): they must refuse it or give the
  reference's numbers; anything else is *silently wrong*.  Then the audit
  reruns and must end with the reference results;
* ``lock shape``: a lock left with contents of any shape (``null``, a list, a
  string, a string heartbeat, an impossible pid, empty, garbage, a heartbeat
  in the future), written long ago; the rerun must take it over;
* ``sigstop``: SIGSTOP the audit holding the lease once some models are
  stored, age its lease past the stale time (as a laptop asleep would), run a
  second audit that takes the lease over and finishes, then SIGCONT the
  first: it must stop at its next write with exit 2, and the directory keep
  the reference results;
* ``takeover``: a stale lease of a dead audit and three audits started at
  once on it: one runs at a time, the others exit 2 with the lock error
  (or, started after it released the lease, run after it);
* ``plugin``: an audit of ``real`` beside a plugin whose synthesis raises: it
  exits 2 naming the failed models, every ``real`` model is stored, and a
  rerun of ``real`` alone resumes them to the reference results.

A round is *completed* when its last audit exits 0; a result is *lost* when
the directory then holds anything but exactly one model row and logits file
per model, with metrics.json equal (bit for bit) to the reference, no
temporary file and no lock.  Rounds stop starting after ``--max-seconds``.
Prints one table: case, rounds tried, runs completed, results lost, results
silently wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

CONFIG = {
    "name": "fault-injection",
    "n_models": 8,
    "audit": {"n_audit": 40, "canary": "mislabel"},
    "model": {"arch": "cnn_small", "width": 8},
    "train": {"epochs": 3, "batch_size": 256},
}
CASES = ("kill -9", "corrupt", "concurrent", "bit flip", "lock shape", "sigstop", "takeover", "plugin")
FLIP_KINDS = ("logits", "model row", "keep.npy", "audit.parquet", "scores.parquet", "metrics.json", "run.json", "config.yaml")
LOCK_SHAPES = ("null", "[]", '"x"', '{"heartbeat": "soon"}', '{"pid": 1000000000000000000000000000000}', "",
               "garbage{", "future")


def _audit(work: Path, out: Path, ray: bool, **fields) -> list[str]:
    config = work / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "out_dir": str(out), **fields}))
    return [sys.executable, "-m", "raypriv.cli", "audit", "--config", str(config), "--quiet"] + ([] if ray else ["--no-ray"])


def _start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _run(command: list[str], timeout: float = 600) -> tuple[int, str]:
    process = _start(command)
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def _metrics(out: Path) -> dict:
    """Every attack metric of metrics.json keyed (paradigm, attack, metric), read by the typed reader; timings are left out.

    A malformed metrics.json is a RayprivError naming it.
    """
    from raypriv.results import metrics_from_json

    path = out / "metrics.json"
    metrics = metrics_from_json(json.loads(path.read_text()), str(path))
    return {(p, a, k): v for p, entry in metrics.items() for a, m in entry.attacks.items() for k, v in m.to_json().items()}


def _same_metrics(out: Path, reference: dict) -> bool:
    """Whether ``out`` holds a readable metrics.json with the reference's attack metrics."""
    from raypriv.errors import RayprivError

    try:
        return (out / "metrics.json").exists() and _metrics(out) == reference
    except (RayprivError, ValueError):  # malformed, or not JSON
        return False


def _lost(out: Path, reference: dict) -> str:
    """Why ``out`` does not hold exactly the reference results ('' if it does)."""
    import pyarrow.parquet as pq

    n = CONFIG["n_models"]
    rows = sorted((out / "models" / "real").glob("model-*.parquet"))
    logits = sorted((out / "logits" / "paradigm=real").glob("model-*.parquet"))
    models_table = out / "models.parquet"
    ids = sorted(pq.read_table(models_table).column("model_id").to_pylist()) if models_table.exists() else []
    problems = []
    if len(rows) != n or len(logits) != n or ids != list(range(n)):
        problems.append(f"{len(rows)} rows, {len(logits)} logits files, models.parquet ids {ids}")
    if not _same_metrics(out, reference):
        problems.append("metrics.json differs from the reference")
    if list(out.rglob(".tmp-*")) or (out / "raypriv.lock").exists():
        problems.append("a temporary file or the lock was left behind")
    return "; ".join(problems)


def _kill_case(work: Path, out: Path, ray: bool, rng: random.Random) -> tuple[int, str]:
    command = _audit(work, out, ray)
    process = _start(command)
    target = rng.randint(0, CONFIG["n_models"])  # 0..n models stored; n: killed while scoring
    deadline = time.time() + 300
    rows = out / "models" / "real"
    while process.poll() is None and time.time() < deadline:
        stored = len(list(rows.glob("model-*.parquet"))) if rows.exists() else 0
        if stored >= target and (target < CONFIG["n_models"] or (out / "models.parquet").exists() or rng.random() < 0.05):
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()
    return _run(command)


def _corrupt_case(work: Path, out: Path, ray: bool, rng: random.Random, reference_dir: Path) -> tuple[int, str, str]:
    shutil.copytree(reference_dir, out)
    model = rng.randrange(CONFIG["n_models"])
    logits = out / "logits" / "paradigm=real" / f"model-{model:06d}.parquet"
    row = out / "models" / "real" / f"model-{model:06d}.parquet"
    kind = rng.choice(["flip logits bytes", "truncate logits", "truncate row", "delete logits", "flip keep.npy", "stale lock"])
    if kind == "flip logits bytes":
        data = bytearray(logits.read_bytes())
        start = rng.randrange(8, len(data) - 72)
        data[start:start + 64] = bytes(b ^ 0xFF for b in data[start:start + 64])
        logits.write_bytes(bytes(data))
    elif kind in ("truncate logits", "truncate row"):
        path = logits if kind == "truncate logits" else row
        path.write_bytes(path.read_bytes()[: rng.randrange(1, path.stat().st_size)])
    elif kind == "delete logits":
        logits.unlink()
    elif kind == "flip keep.npy":
        data = bytearray((out / "keep.npy").read_bytes())
        data[rng.randrange(128, len(data))] ^= 1
        (out / "keep.npy").write_bytes(bytes(data))
    else:  # the lock file of an audit killed with -9 (a pid that no longer exists)
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        lock = {"host": os.uname().nodename, "pid": int(dead.stdout), "heartbeat": time.time()}
        (out / "raypriv.lock").write_text(json.dumps(lock))
    code, err = _run(_audit(work, out, ray))
    return code, err, kind


def _silently_wrong(out: Path, reference: dict) -> str:
    """What a reader would report from ``out`` as it is, if it differs from the reference without an error ('' if not)."""
    code = ("import json, sys, raypriv\n"
            "from raypriv.errors import RayprivError\n"
            "try:\n"
            "    run = raypriv.load_run(sys.argv[1])\n"
            "    print(json.dumps({'|'.join(map(str, (p, a, k))): v for p, e in run.results.items()\n"
            "                      for a, m in e.attacks.items() for k, v in m.to_json().items()}))\n"
            "except RayprivError:\n"
            "    print('refused')\n")
    done = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        return f"the reader crashed: {' '.join(done.stderr.split())[-300:]}"
    if done.stdout.strip() == "refused":
        return ""
    read = {tuple(key.split("|")): value for key, value in json.loads(done.stdout).items()}
    expected = {tuple(map(str, key)): value for key, value in reference.items()}
    return "" if read == expected else "load_run gave numbers other than the reference's, without an error"


def _bit_flip_case(work: Path, out: Path, ray: bool, rng: random.Random, reference_dir: Path,
                   reference: dict) -> tuple[int, str, str, str]:
    shutil.copytree(reference_dir, out)
    kind = rng.choice(FLIP_KINDS)
    model = rng.randrange(CONFIG["n_models"])
    path = {"logits": out / "logits" / "paradigm=real" / f"model-{model:06d}.parquet",
            "model row": out / "models" / "real" / f"model-{model:06d}.parquet"}.get(kind, out / kind)
    data = bytearray(path.read_bytes())
    bit = rng.randrange(len(data) * 8)
    data[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))
    wrong = _silently_wrong(out, reference)
    code, err = _run(_audit(work, out, ray))
    return code, err, f"{kind} bit {bit}", wrong


def _lock_shape_case(work: Path, out: Path, ray: bool, rng: random.Random, reference_dir: Path) -> tuple[int, str, str]:
    shutil.copytree(reference_dir, out)
    shape = rng.choice(LOCK_SHAPES)
    lock = out / "raypriv.lock"
    if shape == "future":
        lock.write_text(json.dumps({"host": os.uname().nodename, "pid": 1, "heartbeat": time.time() + 10**6}))
    else:
        lock.write_text(shape)
    old = time.time() - 3600  # written an hour ago: no live holder would leave it untouched that long
    os.utime(lock, (old, old))
    code, err = _run(_audit(work, out, ray))
    return code, err, f"lock {shape or 'empty'}"


def _stored(rows: Path) -> int:
    """Model rows stored so far under ``rows`` (a paradigm's models folder)."""
    return len(list(rows.glob("model-*.parquet"))) if rows.exists() else 0


def _age_lease(out: Path) -> None:
    """Make the lease look abandoned: its heartbeat and the file's mtime an hour old."""
    lock = out / "raypriv.lock"
    record = json.loads(lock.read_text())
    old = time.time() - 3600
    lock.write_text(json.dumps({**record, "heartbeat": old}))
    os.utime(lock, (old, old))


def _sigstop_case(work: Path, out: Path, ray: bool, rng: random.Random) -> tuple[int, str, str]:
    command = _audit(work, out, ray)
    first = _start(command)
    rows = out / "models" / "real"
    target = rng.randint(1, CONFIG["n_models"] - 2)
    deadline = time.time() + 300
    while first.poll() is None and time.time() < deadline and _stored(rows) < target:
        time.sleep(0.02)
    if first.poll() is not None:
        return 1, f"the first audit ended before it could be stopped: {first.communicate()[1][-300:]}", ""
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        _age_lease(out)
        code, err = _run(command)  # takes the lease over and finishes
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    _, first_err = first.communicate(timeout=600)
    if code != 0:
        return code, err, "second audit failed"
    if first.returncode == 0:
        return 1, "the paused audit finished as if it still held the lease", ""
    if first.returncode == 2 and "Traceback" not in first_err:
        return 0, "", f"paused at {target} models, stopped with exit 2"
    return 1, f"the paused audit exited {first.returncode}: {' '.join(first_err.split())[-300:]}", ""


def _takeover_case(work: Path, out: Path, ray: bool, reference_dir: Path) -> tuple[int, str, str]:
    shutil.copytree(reference_dir, out)
    for name in ("metrics.json", "scores.parquet"):  # so the winner has work to do while the others try
        (out / name).unlink()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = {"host": os.uname().nodename, "pid": int(dead.stdout), "token": "dead", "heartbeat": time.time() - 3600}
    (out / "raypriv.lock").write_text(json.dumps(lock))
    command = _audit(work, out, ray)
    processes = [_start(command) for _ in range(3)]
    results = [(p.wait(timeout=600), p.communicate()[1]) for p in processes]
    codes = sorted(code for code, _ in results)
    refused = [err for code, err in results if code == 2]
    # One audit at a time: the others are refused while it holds the lease, or (on a loaded machine, when they
    # start late) run after it released it; the directory is then checked against the reference.
    if codes[0] != 0 or set(codes) - {0, 2} or not all("in use by another raypriv audit" in err for err in refused):
        return 1, f"exit codes {codes}: {[' '.join(err.split())[-200:] for _, err in results]}", ""
    return 0, "", f"{codes.count(0)} ran, {codes.count(2)} refused"


PLUGIN = '''
from raypriv import Paradigm


class Failing(Paradigm):
    """A user's synthesizer that raises for some models."""

    name = "failing"

    def synthesize(self, private, context):
        if context.model_id % 3 == 0:
            raise RuntimeError(f"synthesis failed for model {context.model_id}")
        return private
'''


def _plugin_case(work: Path, out: Path, ray: bool) -> tuple[int, str, str]:
    (work / "fault_plugin.py").write_text(PLUGIN)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(work), os.environ.get("PYTHONPATH")]))
    code, err = _run(_audit(work, out, ray, paradigms=["real", "fault_plugin:Failing"]))
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    if code != 2 or not lines or "synthesis failed for model 0" not in err or "Traceback" in err:
        return 1, f"the audit with a failing plugin exited {code}: {' '.join(err.split())[-300:]}", ""
    code, err = _run(_audit(work, out, ray))  # real alone: every real model was stored, so it only scores
    return code, err, "plugin failed alone"


def _concurrent_case(work: Path, out: Path, ray: bool) -> tuple[int, str, str]:
    command = _audit(work, out, ray)
    processes = [_start(command) for _ in range(2)]
    results = [(p.wait(timeout=600), p.communicate()[1]) for p in processes]
    codes = sorted(code for code, _ in results)
    refused = [err for code, err in results if code == 2]
    if codes != [0, 2] or "in use by another raypriv audit" not in (refused or [""])[0]:
        return 1, f"exit codes {codes}: {[err[-300:] for _, err in results]}", ""
    return 0, "", "second audit refused"


def _run_case(case: str, work: Path, out: Path, ray: bool, rng: random.Random, reference_dir: Path,
              reference: dict) -> tuple[int, str, str, str]:
    """One round of ``case``: (exit code of its last audit, its stderr, what was injected, why it was silently wrong)."""
    if case == "kill -9":
        return (*_kill_case(work, out, ray, rng), "", "")
    if case == "corrupt":
        return (*_corrupt_case(work, out, ray, rng, reference_dir), "")
    if case == "bit flip":
        return _bit_flip_case(work, out, ray, rng, reference_dir, reference)
    if case == "lock shape":
        return (*_lock_shape_case(work, out, ray, rng, reference_dir), "")
    if case == "sigstop":
        return (*_sigstop_case(work, out, ray, rng), "")
    if case == "takeover":
        return (*_takeover_case(work, out, ray, reference_dir), "")
    if case == "plugin":
        return (*_plugin_case(work, out, ray), "")
    return (*_concurrent_case(work, out, ray), "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--max-seconds", type=float, default=1200.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ray", action="store_true", help="train on a local Ray instance (slower) instead of in-process")
    parser.add_argument("--work", help="working folder (default: a temporary one, deleted after)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="raypriv-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    reference_dir = work / "reference"
    code, err = _run(_audit(work, reference_dir, args.ray))
    if code != 0:
        sys.exit(f"the reference audit failed ({code}): {err[-2000:]}")
    reference = _metrics(reference_dir)
    table = {case: {"tried": 0, "completed": 0, "lost": 0, "wrong": 0} for case in CASES}
    notes: list[str] = []
    for round_ in range(args.rounds):
        if time.time() - start > args.max_seconds:
            notes.append(f"stopped after {round_} rounds: --max-seconds {args.max_seconds:.0f} reached")
            break
        case = CASES[round_ % len(CASES)]
        out = work / f"round-{round_:03d}"
        code, err, detail, wrong = _run_case(case, work, out, args.ray, rng, reference_dir, reference)
        table[case]["tried"] += 1
        lost = _lost(out, reference) if code == 0 else ""
        if code == 0:
            table[case]["completed"] += 1
        else:
            notes.append(f"round {round_} ({case}): exit {code}: {' '.join(err.split())[-300:]}")
        if lost:
            table[case]["lost"] += 1
            notes.append(f"round {round_} ({case}, {detail}): LOST: {lost}")
        if wrong:
            table[case]["wrong"] += 1
            notes.append(f"round {round_} ({case}, {detail}): SILENTLY WRONG: {wrong}")
        verdict = f"LOST {lost}" if lost else f"SILENTLY WRONG {wrong}" if wrong else "ok"
        print(f"round {round_:3d} {case:<10} {detail:<28} exit {code} {verdict}", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    print(f"\n{'case':<12}{'tried':>7}{'runs completed':>16}{'results lost':>14}{'silently wrong':>16}")
    for case, row in table.items():
        print(f"{case:<12}{row['tried']:>7}{row['completed']:>16}{row['lost']:>14}{row['wrong']:>16}")
    total = {key: sum(row[key] for row in table.values()) for key in ("tried", "completed", "lost", "wrong")}
    print(f"{'all':<12}{total['tried']:>7}{total['completed']:>16}{total['lost']:>14}{total['wrong']:>16}")
    print(f"({time.time() - start:.0f}s, {'Ray' if args.ray else 'in-process'} training, seed {args.seed})")
    for note in notes:
        print(note)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if total["lost"] or total["wrong"] or total["completed"] < total["tried"] else 0)


if __name__ == "__main__":
    main()
