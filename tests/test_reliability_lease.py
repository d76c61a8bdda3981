"""The lease cannot be split (issue "Nothing silently wrong", part 2): each test reproduces one of its failures.

* a takeover by several processes at once has exactly one winner, and none crashes;
* a holder paused past the stale limit that lost its lease stops at its next write, with one error line;
* lock contents of any shape (``null``, a list, a string heartbeat, a huge pid, garbage, empty) never give a
  traceback, and ``--force-unlock`` always takes them;
* a heartbeat in the future beyond the stated skew is not trusted;
* a lock left empty by a failed write (a full disk) does not refuse the rerun.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from raypriv.cli import main
from raypriv.errors import RayprivError, RunLocked
from raypriv.run import lease as lease_module
from raypriv.run.directory import RunDirectory
from raypriv.run.lease import LOCK_FILE, MAX_CLOCK_SKEW_SECONDS, STALE_SECONDS, RunLease
from raypriv.run.store import GUARDS, RunStore
from tests.conftest import cli_error

ROOT = Path(__file__).resolve().parents[1]
OLD = time.time() - 10 * STALE_SECONDS  # a modification time well past the stale limit

SHAPES = {  # lock contents of every shape the issue names, and more
    "null": b"null",
    "list": b"[1, 2]",
    "string": b'"x"',
    "string heartbeat": b'{"host": "elsewhere", "pid": 1, "heartbeat": "soon"}',
    "huge pid": json.dumps({"host": socket.gethostname(), "pid": 10**30, "heartbeat": time.time()}).encode(),
    "negative pid": json.dumps({"host": socket.gethostname(), "pid": -1, "heartbeat": time.time()}).encode(),
    "infinite heartbeat": b'{"host": "elsewhere", "pid": 1, "heartbeat": 1e999}',
    "garbage": b"\xff\x00{not json",
    "empty": b"",
}


def _race():
    spec = importlib.util.spec_from_file_location("lease_race", ROOT / "benchmarks" / "lease_race.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.race


def _lock(directory: Path, data: bytes, mtime: float | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def finished_copy(tiny_run, tmp_path):
    """A copy of the session's finished tiny run and its config file."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run.path, out)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**tiny_run.raw, "out_dir": str(out)}))
    return out, ["audit", "--config", str(config), "--no-ray", "--quiet"]


# 1. Taking over one stale lease: exactly one winner, no crash.


@pytest.mark.parametrize("no_flock", [False, True], ids=["flock", "marker-file fallback"])
def test_three_processes_taking_over_one_stale_lease_give_exactly_one_winner(tmp_path, no_flock):
    result = _race()(40, processes=3, no_flock=no_flock, root=str(tmp_path))
    assert dict(result["winners"]) == {1: 40}, result
    assert not result["crashes"] and not result["lost"], result


# 2. A holder that lost its lease stops at its next write, with one line.


def test_a_holder_whose_lease_was_taken_stops_at_its_next_write_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(lease_module, "CHECK_SECONDS", 0.0)
    run = RunDirectory(str(tmp_path / "run"))
    with run.lease():
        run.store.write_bytes("a.txt", b"1")  # held: writes go through
        trainer_store = RunStore(run.uri)  # the in-process trainer's own store of the same directory
        trainer_store.write_bytes("b.txt", b"2")
        # Another audit took the lease over while this one was paused (its lock now names that audit).
        theirs = {"host": "elsewhere", "pid": 4242, "token": "theirs", "heartbeat": time.time()}
        (tmp_path / "run" / LOCK_FILE).write_text(json.dumps(theirs))
        for store in (run.store, trainer_store):
            with pytest.raises(RunLocked) as caught:
                store.write_bytes("c.txt", b"3")
            message = str(caught.value)
            assert "\n" not in message and "lost the lease of" in message and "elsewhere pid 4242" in message
            assert "its finished models are kept" in message
        with pytest.raises(RunLocked):
            run.store.delete("a.txt")
    assert not (tmp_path / "run" / "c.txt").exists() and (tmp_path / "run" / "a.txt").exists()
    assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["token"] == "theirs"  # release left theirs alone
    assert run.uri not in GUARDS
    run.store.write_bytes("d.txt", b"4")  # released: this process no longer guards the directory


def test_the_heartbeat_thread_marks_a_lost_lease_and_the_next_write_stops(tmp_path, monkeypatch):
    monkeypatch.setattr(lease_module, "HEARTBEAT_SECONDS", 0.05)
    monkeypatch.setattr(lease_module, "CHECK_SECONDS", 3600.0)  # only the heartbeat can notice
    run = RunDirectory(str(tmp_path / "run"))
    with run.lease() as lease:
        (tmp_path / "run" / LOCK_FILE).unlink()  # taken over and released by another audit meanwhile
        deadline = time.time() + 10
        while lease.lost is None and time.time() < deadline:
            time.sleep(0.02)
        assert lease.lost and "raypriv.lock was removed" in lease.lost
        with pytest.raises(RunLocked, match="lost the lease"):
            run.store.write_json("x.json", {})
    assert not (tmp_path / "run" / LOCK_FILE).exists()


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_a_holder_paused_past_the_stale_limit_loses_the_lease_and_stops_at_its_next_write(tmp_path, monkeypatch):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from raypriv.errors import RayprivError
        from raypriv.run.directory import RunDirectory
        run = RunDirectory({str(out)!r})
        with run.lease():
            print("held", flush=True)
            sys.stdin.readline()  # paused here (SIGSTOP), then resumed
            try:
                run.store.write_bytes("late.txt", b"written beside the new holder")
                print("WROTE", flush=True)
            except RayprivError as exc:
                print("error:", exc, flush=True)
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGSTOP)  # a laptop asleep, a VM stall
        refused = RunLease(RunStore(str(out)))
        with pytest.raises(RunLocked, match="in use by another raypriv audit"):
            refused.acquire()  # a live holder with a fresh heartbeat keeps its lease
        monkeypatch.setattr(lease_module, "STALE_SECONDS", 1.0)  # the pause outlasts the stale limit
        time.sleep(1.5)
        taker = RunLease(RunStore(str(out))).acquire()  # its heartbeat is stale: taken over
        try:
            os.kill(holder.pid, signal.SIGCONT)
            stdout, stderr = holder.communicate("go\n", timeout=60)
            assert "WROTE" not in stdout and not (out / "late.txt").exists(), (stdout, stderr)
            lines = [line for line in stdout.splitlines() if line.startswith("error:")]
            assert len(lines) == 1 and "lost the lease of" in lines[0] and f"pid {os.getpid()}" in lines[0], stdout
            assert json.loads((out / LOCK_FILE).read_text())["token"] == taker.token  # the old holder left it be
        finally:
            taker.release()
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()


# 3. Lock contents of any shape; a future heartbeat; an empty lock from a failed write.


@pytest.mark.parametrize("shape", list(SHAPES))
def test_lock_contents_of_any_shape_never_give_a_traceback(tmp_path, shape):
    data = SHAPES[shape]
    # Written long ago: its holder is unknown or gone, so it is stale and taken over.
    _lock(tmp_path / "old", data, OLD)
    with RunLease(RunStore(str(tmp_path / "old"))).acquire() as lease:
        assert json.loads((tmp_path / "old" / LOCK_FILE).read_text())["token"] == lease.token
    # Written just now: refused with one line (unless it is empty: a failed write, or names a dead process),
    # and always taken with --force-unlock.
    _lock(tmp_path / "new", data)
    try:
        RunLease(RunStore(str(tmp_path / "new"))).acquire().release()
        assert shape in ("empty", "huge pid", "negative pid")  # a failed write; a holder no process can be
    except RunLocked as exc:
        assert "\n" not in str(exc) and "--force-unlock" in str(exc) and shape not in ("empty", "huge pid")
    _lock(tmp_path / "new", data)
    RunLease(RunStore(str(tmp_path / "new")), force=True).acquire().release()
    assert not (tmp_path / "new" / LOCK_FILE).exists()
    # status reads it without a traceback either
    _lock(tmp_path / "new", data)
    holder = RunLease(RunStore(str(tmp_path / "new"))).holder()
    assert isinstance(holder["heartbeat"], float) and holder["host"] and holder["pid"]


def test_a_null_lock_refuses_with_one_line_and_force_unlock_takes_it(finished_copy, capsys):
    out, argv = finished_copy
    _lock(out, b"null")
    line = cli_error(capsys, argv)
    assert "holds a raypriv.lock that is not a lease record" in line and "--force-unlock" in line
    assert main([*argv, "--force-unlock"]) == 0  # the issue: it blocked the run for good, even forced
    assert not (out / LOCK_FILE).exists()
    for data in (b"[1]", b'"x"', json.dumps({"host": socket.gethostname(), "pid": 10**30, "heartbeat": 1}).encode()):
        _lock(out, data, OLD)
        assert main(argv) == 0, data  # old and unreadable, or naming no possible process: taken over
    assert "lease" not in RunDirectory(str(out)).status()  # released


def test_a_heartbeat_in_the_future_beyond_the_skew_is_not_trusted(tmp_path):
    future = {"host": "elsewhere", "pid": 1, "token": "t", "heartbeat": time.time() + MAX_CLOCK_SKEW_SECONDS + 3600}
    # The issue: it never went stale.  Now its age is the file's: written long ago, it is stale.
    _lock(tmp_path / "a", json.dumps(future).encode(), OLD)
    RunLease(RunStore(str(tmp_path / "a"))).acquire().release()
    # Written just now, its holder may be alive (with a clock set wrong): refused until the file is old.
    _lock(tmp_path / "b", json.dumps(future).encode())
    with pytest.raises(RunLocked, match="elsewhere pid 1, heartbeat 0s ago"):
        RunLease(RunStore(str(tmp_path / "b"))).acquire()
    # A heartbeat ahead within the skew is trusted (a live holder whose clock is a little fast).
    near = {**future, "heartbeat": time.time() + MAX_CLOCK_SKEW_SECONDS / 2}
    _lock(tmp_path / "c", json.dumps(near).encode(), OLD)
    with pytest.raises(RunLocked):
        RunLease(RunStore(str(tmp_path / "c"))).acquire()


def test_an_empty_lock_left_by_a_failed_write_does_not_refuse_the_rerun(finished_copy, capsys):
    out, argv = finished_copy
    _lock(out, b"")  # an audit started on a full disk (by an older raypriv) left it, just now
    assert main(argv) == 0
    assert not (out / LOCK_FILE).exists()


def test_a_lease_taken_on_a_full_disk_leaves_no_lock_and_the_rerun_is_not_refused(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = os.fdopen

    def full(descriptor, mode="r", *args, **kwargs):
        file = real(descriptor, mode, *args, **kwargs)
        if "w" in mode:
            file.write(b"{")  # a partial record
            file.flush()
            file.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return file

    monkeypatch.setattr(lease_module.os, "fdopen", full)
    with pytest.raises(RayprivError, match="the disk is full") as caught:
        RunDirectory(str(out)).lease()
    assert not isinstance(caught.value, RunLocked) and "\n" not in str(caught.value)
    assert not (out / LOCK_FILE).exists() and not list(tmp_path.rglob(".tmp-*"))
    monkeypatch.undo()
    RunDirectory(str(out)).lease().release()  # at once, not 120 s later


def test_a_full_disk_at_the_start_of_an_audit_is_one_line_and_the_rerun_is_not_refused(tmp_path, capsys, monkeypatch):
    from tests.test_reliability import _failing_store

    out = tmp_path / "run"
    from tests.conftest import tiny_config_dict

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(out)))
    argv = ["audit", "--config", str(config), "--no-ray", "--quiet"]
    _failing_store(monkeypatch, errno.ENOSPC)  # the very first write, the lock's, fails half-written
    assert "the disk is full" in cli_error(capsys, argv)
    assert not (out / LOCK_FILE).exists() and not list(tmp_path.rglob(".tmp-*"))
    monkeypatch.undo()
    lease = RunDirectory(str(out)).lease()  # the rerun is not refused
    lease.release()
