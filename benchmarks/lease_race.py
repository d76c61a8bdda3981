"""The lease race: N processes take over one stale lease at once, round after round; exactly one may win.

Each round makes a run directory whose ``raypriv.lock`` is stale (in turn: a
dead process of this host, another host's heartbeat 10 minutes old, ``null``
written 10 minutes ago, an empty file left by a failed write, a heartbeat an
hour in the future in a file written 10 minutes ago).  The racing processes
(long-lived, one per contender) wait at a barrier, call
``RunLease(store).acquire()`` at the same instant, and report: won, refused
(RunLocked), or crashed (any other exception).  Winners keep the lease until
every contender has tried, then check that the lock still holds their token
and release it.

    python benchmarks/lease_race.py --rounds 500            # 3 processes per round
    python benchmarks/lease_race.py --rounds 200 --no-flock # the fallback without the directory flock

Prints the rounds, a histogram of winners per round, the crashes, and
whether every round ended with exactly one winner; exits 1 if not.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = ("dead-pid", "old-heartbeat", "null", "empty", "future-heartbeat")


def stale_lock(directory: Path, kind: str, dead_pid: int) -> None:
    """Write a stale ``raypriv.lock`` of ``kind`` into ``directory``."""
    lock = directory / "raypriv.lock"
    now = time.time()
    contents = {
        "dead-pid": {"host": socket.gethostname(), "pid": dead_pid, "token": "dead", "heartbeat": now},
        "old-heartbeat": {"host": "elsewhere", "pid": 1, "token": "old", "heartbeat": now - 600},
        "null": None,
        "empty": "",
        "future-heartbeat": {"host": "elsewhere", "pid": 1, "token": "future", "heartbeat": now + 3600},
    }[kind]
    lock.write_text("" if contents == "" else json.dumps(contents))
    if kind in ("null", "future-heartbeat"):
        os.utime(lock, (now - 600, now - 600))


def contender(tasks, results, barrier, no_flock: bool) -> None:
    """One racing process: for each directory it is given, try to take the lease at the barrier."""
    from raypriv.errors import RunLocked
    from raypriv.run.lease import RunLease
    from raypriv.run.store import RunStore

    logging.getLogger("raypriv").setLevel(logging.CRITICAL)
    if no_flock:
        RunLease._flock = lambda self, descriptor: False  # as on a mount without flock: the marker file
    while (directory := tasks.get()) is not None:
        lease, outcome = None, "refused"
        try:
            barrier.wait()
            try:
                lease = RunLease(RunStore(directory)).acquire()
                outcome = "won"
            except RunLocked:
                pass
        except Exception:  # a crash: anything but the one refusal
            outcome = "crash: " + traceback.format_exc().strip().splitlines()[-1]
        try:
            barrier.wait()  # every contender has tried: a winner still holds the lease
            if lease is not None:
                lock = json.loads(Path(directory, "raypriv.lock").read_bytes())
                if not isinstance(lock, dict) or lock.get("token") != lease.token:
                    raise RuntimeError(f"the lock holds {lock!r}, not this winner's record")
                lease.release()
        except Exception:
            outcome = f"{outcome}, then lost: " + traceback.format_exc().strip().splitlines()[-1]
        results.put(outcome)
        barrier.wait()


def race(rounds: int, processes: int = 3, no_flock: bool = False, root: str | None = None) -> dict:
    """Run the race; returns ``{"rounds", "winners": Counter(winners per round), "crashes": [...], "lost": [...]}``."""
    context = mp.get_context("fork")
    barrier = context.Barrier(processes)
    results = context.Queue()
    queues = [context.Queue() for _ in range(processes)]
    workers = [context.Process(target=contender, args=(q, results, barrier, no_flock), daemon=True) for q in queues]
    for worker in workers:
        worker.start()
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                  capture_output=True, text=True, check=True).stdout)
    base = Path(tempfile.mkdtemp(prefix="lease-race-", dir=root))
    winners: collections.Counter = collections.Counter()
    by_kind: dict[str, collections.Counter] = {kind: collections.Counter() for kind in KINDS}
    crashes, lost = [], []
    try:
        for number in range(rounds):
            kind = KINDS[number % len(KINDS)]
            directory = base / f"round-{number}"
            directory.mkdir()
            stale_lock(directory, kind, dead_pid)
            for queue in queues:
                queue.put(str(directory))
            outcomes = [results.get(timeout=120) for _ in range(processes)]
            won = sum(o.startswith("won") for o in outcomes)
            winners[won] += 1
            by_kind[kind][won] += 1
            crashes += [f"round {number} ({kind}): {o}" for o in outcomes if o.startswith("crash")]
            lost += [f"round {number} ({kind}): {o}" for o in outcomes if "then lost" in o]
            leftovers = sorted(p.name for p in directory.iterdir())
            if leftovers and won:
                crashes.append(f"round {number} ({kind}): left {leftovers}")
            shutil.rmtree(directory)
    finally:
        for queue in queues:
            queue.put(None)
        for worker in workers:
            worker.join(timeout=10)
        shutil.rmtree(base, ignore_errors=True)
    return {"rounds": rounds, "processes": processes, "winners": winners, "by_kind": by_kind,
            "crashes": crashes, "lost": lost}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--no-flock", action="store_true", help="without the directory flock: the marker-file fallback")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = race(args.rounds, args.processes, args.no_flock)
    wall = time.perf_counter() - start
    exact = result["winners"].get(1, 0) == args.rounds and not result["crashes"] and not result["lost"]
    print(f"lease race: {args.rounds} rounds x {args.processes} processes taking over one stale lease"
          f"{' (no flock: the marker-file fallback)' if args.no_flock else ''}, {wall:.1f} s")
    print("winners per round: " + ", ".join(f"{k}: {v} rounds" for k, v in sorted(result["winners"].items())))
    for kind, counter in result["by_kind"].items():
        print(f"  {kind:<17} " + ", ".join(f"{k} winner(s): {v}" for k, v in sorted(counter.items())))
    print(f"crashes: {len(result['crashes'])}; winners that lost the lease before the round ended: {len(result['lost'])}")
    for line in (result["crashes"] + result["lost"])[:10]:
        print("  " + line)
    print("exactly one winner every round, no crash: " + ("yes" if exact else "NO"))
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
