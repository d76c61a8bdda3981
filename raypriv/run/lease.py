"""The run directory's lease: one audit at a time writes to a run directory.

``raypriv.lock`` names the holder (host, pid, a random token) and a
heartbeat.  :class:`RunLease` takes it before the audit writes anything and
releases it when the audit ends; a thread refreshes the heartbeat every
:data:`HEARTBEAT_SECONDS`.

When a lease is stale (taken over with a warning):

* its holder is a process of this host that no longer exists, or whose
  heartbeat is over :data:`STALE_SECONDS` old (a stopped process);
* its holder is on another host and its heartbeat is over
  :data:`STALE_SECONDS` old;
* a heartbeat more than :data:`MAX_CLOCK_SKEW_SECONDS` in the future (a
  clock set wrong) is not trusted: the age is the lock file's modification
  time instead, so a lease written with a skewed clock goes stale like any;
* contents that are not a lease record (``null``, a list, a string, garbage,
  a string heartbeat) are never an error: the holder is unknown, and the age
  is the file's modification time; a holder of this host with a pid no
  process can have (``10**30``, ``-1``) is stale at once;
* an empty lock file is stale at once: raypriv only ever creates the lock
  with its whole record in one step, so an empty one is a failed write (a
  full disk) and no live holder stands behind it.

``force`` (``raypriv audit --force-unlock``) takes any lease, whatever it holds.

Where each guarantee holds:

* **a local path** (``pyarrow.fs.LocalFileSystem``): every step that reads
  and then changes ``raypriv.lock`` (take, take over, refresh, release) runs
  under an exclusive ``fcntl.flock`` on the run directory itself (held for
  milliseconds; the kernel drops it if the process dies, and nothing extra
  is left in the directory).  The lock file is created only by ``os.link``
  of a complete temporary file (it fails if a lock exists), and a stale lock
  is moved aside by ``os.rename`` and checked to be the very file (inode)
  judged stale.  Processes taking over one stale lease at once end with
  exactly one holder (``benchmarks/lease_race.py``).  Where ``flock`` is not
  available (a network mount without it; or another process holds it for
  over :data:`MUTEX_WAIT_SECONDS`), the same steps run under a marker file,
  :data:`MARKER_FILE`, created with ``O_EXCL`` (atomic on local disks and
  NFSv3+) and removed after; a marker older than
  :data:`MARKER_STALE_SECONDS` was left by a crash and is removed, so only a
  taker that crashed mid-takeover reopens a (millisecond) window.  The mutex
  covers raypriv processes that see the same directory: several hosts on one
  NFS export share the marker, not the flock (Linux NFS clients emulate
  ``flock`` with byte-range locks, which a directory cannot take: flock
  fails and the marker is used).
* **another pyarrow filesystem** (object stores, no exclusive create and no
  locks): the heartbeat protocol alone: the new holder writes the file and
  reads it back, which closes all but a short race.

A holder that lost its lease (it was paused past :data:`STALE_SECONDS`, a
laptop asleep or a VM stalled, and another audit took over) stops: every
write through a :class:`~raypriv.run.store.RunStore` of the run directory
in this process (the driver's, and the in-process trainer's with
``--no-ray``) first calls :meth:`RunLease.check`, which raises
:class:`~raypriv.errors.RunLocked` with one line once the lock file no
longer holds this lease's token.  It rereads the lock at most every
:data:`CHECK_SECONDS` (and at once after the wall clock jumps, e.g. after
a sleep); the heartbeat thread marks the lease lost as soon as it sees it.
Not covered: a write already in flight when the pause began lands (it is one
atomic file; a model's row names its logits' checksum), and Ray actors in
other processes write models until the driver stops them (every model is
committed atomically and deterministically, so the new holder keeps one
result per model).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Iterator

import pyarrow.fs as pafs

from raypriv.errors import AuditInterrupted, RayprivError, RunLocked, write_error
from raypriv.run import store as store_module
from raypriv.run.store import RunStore

log = logging.getLogger("raypriv")

LOCK_FILE = "raypriv.lock"
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 120.0  # a lease whose heartbeat is older than this is taken over (its holder is gone)
MAX_CLOCK_SKEW_SECONDS = 300.0  # a heartbeat further in the future is not trusted: the file's mtime is used
CHECK_SECONDS = 1.0  # a holder rereads the lock before a write at most this often
MUTEX_WAIT_SECONDS = 30.0  # how long a local taker waits for another's flock before going on without it
MARKER_STALE_SECONDS = 10.0  # a takeover marker older than this was left by a crash (a takeover takes milliseconds)
MARKER_FILE = f".tmp-takeover-{LOCK_FILE}"  # the mutex where flock is unavailable (".tmp-": never a run's file)
MAX_PID = 1 << 22  # Linux's largest pid_max; a larger pid names no process


def pid_alive(pid: int) -> bool:
    """Whether a process of this host has the id ``pid`` (one of another user's counts as alive)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid <= MAX_PID:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def parse_record(data: bytes) -> dict[str, Any]:
    """A lock file's contents as ``{"host", "pid", "token", "heartbeat"}``, each None where absent or invalid.

    Never raises: ``null``, a list, a string, garbage, a string heartbeat or a
    pid no process can have give Nones (``readable`` False when it is not a
    JSON object at all).
    """
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        obj = None
    readable = isinstance(obj, dict)
    obj = obj if readable else {}

    def number(value: Any) -> float | None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        with contextlib.suppress(OverflowError):
            return float(value) if ok and math.isfinite(float(value)) else None
        return None

    pid = obj.get("pid")
    valid = isinstance(pid, int) and not isinstance(pid, bool) and 0 < pid <= MAX_PID
    return {
        "host": obj.get("host") if isinstance(obj.get("host"), str) else None,
        "pid": pid if valid else None,
        "impossible_pid": "pid" in obj and not valid,  # e.g. 10**30: no process has it
        "token": obj.get("token") if isinstance(obj.get("token"), str) else None,
        "heartbeat": number(obj.get("heartbeat")),
        "readable": readable,
    }


class RunLease:
    """One writer per run directory: ``raypriv.lock`` names its holder (host, pid) and a heartbeat.

    See the module's docstring for when a lease is stale, how it is taken
    over atomically, and how a holder that lost it stops (:meth:`check`).
    ``force`` takes any holder's lease (``raypriv audit --force-unlock``).
    """

    def __init__(self, store: RunStore, force: bool = False):
        self.store, self.force = store, force
        self.token = uuid.uuid4().hex
        self.created_dir = False
        self.lost: str | None = None  # the error line, once the lease is known lost
        self._checked = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._local = isinstance(store.fs, pafs.LocalFileSystem)

    # ------------------------------------------------------------ the lock file

    def _record(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                           "acquired_at": getattr(self, "acquired_at", None), "heartbeat": time.time()}).encode()

    def _read(self) -> dict[str, Any] | None:
        """The lock file as parsed by :func:`parse_record`, plus ``size``, ``mtime`` and ``ident``; None if absent."""
        path = self.store.path(LOCK_FILE)
        try:
            if self._local:
                with open(path, "rb") as file:
                    stat = os.fstat(file.fileno())
                    data = file.read(1 << 16)
                mtime, ident = stat.st_mtime, (stat.st_dev, stat.st_ino)
            else:
                info = self.store.fs.get_file_info(path)
                if info.type == pafs.FileType.NotFound:
                    return None
                with self.store.fs.open_input_stream(path) as stream:
                    data = stream.read(1 << 16)
                mtime, ident = (info.mtime.timestamp() if info.mtime else None), None
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:  # unreadable (permissions, a folder of that name): a lock of unknown holder
            data, mtime, ident = b"?", None, None
        return {**parse_record(data), "size": len(data), "mtime": mtime, "ident": ident}

    def holder(self) -> dict[str, Any] | None:
        """The lock file's record (None if there is none): ``host``/``pid`` ("?" if unknown), ``token``, and
        ``heartbeat``, the time its age counts from (the file's mtime where the record gives none to trust)."""
        current = self._read()
        if current is None:
            return None
        return {**current, "host": current["host"] or "?", "pid": current["pid"] or "?",
                "heartbeat": time.time() - self._age(current)}

    @staticmethod
    def _age(current: dict[str, Any]) -> float:
        """Seconds since the holder last proved alive: its heartbeat, or the file's mtime where that is missing
        or further than MAX_CLOCK_SKEW_SECONDS in the future (inf if neither can be trusted)."""
        now = time.time()
        for basis in (current["heartbeat"], current["mtime"]):
            if basis is not None and basis <= now + MAX_CLOCK_SKEW_SECONDS:
                return max(0.0, now - basis)
        return math.inf

    def _stale(self, current: dict[str, Any]) -> bool:
        if current["size"] == 0:
            return True  # a failed write: the lock is only ever created with its whole record
        age = self._age(current)
        if current["host"] == socket.gethostname() and current["impossible_pid"]:
            return True  # a holder of this host that no process can be
        if current["host"] == socket.gethostname() and current["pid"] is not None:
            return not pid_alive(current["pid"]) or age > STALE_SECONDS and current["pid"] != os.getpid()
        return age > STALE_SECONDS

    @staticmethod
    def _who(current: dict[str, Any] | None) -> str:
        if current is None:
            return "nobody (raypriv.lock was removed by another process)"
        if not current["readable"] or current["host"] is None and current["pid"] is None:
            return "an unknown holder (raypriv.lock holds no lease record)"
        return f"{current['host'] or '?'} pid {current['pid'] or '?'}"

    @contextlib.contextmanager
    def _mutex(self) -> Iterator[bool]:
        """Exclusive access to the lock file while it is read and changed (local paths only): an flock on the run
        directory, or where flock is unavailable a marker file made with O_EXCL (one older than
        MARKER_STALE_SECONDS was left by a crash and is removed).  Yields whether it is held."""
        if not self._local:
            yield False
            return
        try:
            descriptor = os.open(self.store.root, os.O_RDONLY)
        except OSError:
            descriptor = None
        try:
            held = descriptor is not None and self._flock(descriptor)
            if held:
                yield True
                return
            with self._marker() as marked:
                yield marked
        finally:
            if descriptor is not None:
                os.close(descriptor)  # drops the flock

    def _flock(self, descriptor: int) -> bool:
        import fcntl

        deadline = time.monotonic() + MUTEX_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:  # its holder is stopped mid-step: go on with the marker
                    log.warning("the lease mutex of %s is held for over %.0fs; going on without it",
                                self.store.uri, MUTEX_WAIT_SECONDS)
                    return False
                time.sleep(0.002)
            except OSError:  # e.g. a network mount without flock
                return False

    @contextlib.contextmanager
    def _marker(self) -> Iterator[bool]:
        marker = self.store.path(MARKER_FILE)
        deadline = time.monotonic() + MUTEX_WAIT_SECONDS
        ident = None
        while time.monotonic() < deadline:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                stat = os.stat(marker)
                ident = (stat.st_dev, stat.st_ino)
                break
            except FileExistsError:
                with contextlib.suppress(OSError):
                    stat = os.stat(marker)
                    if time.time() - stat.st_mtime > MARKER_STALE_SECONDS:  # its maker crashed
                        self._remove_exact(marker, (stat.st_dev, stat.st_ino))
                time.sleep(0.002)
            except OSError:  # cannot even make a marker here: the link and inode checks remain
                break
        try:
            yield ident is not None
        finally:
            if ident is not None:
                self._remove_exact(marker, ident)

    def _remove_exact(self, path: str, ident: tuple[int, int] | None) -> None:
        """Remove ``path`` if it is (still) the file ``ident`` (any file if None): renamed aside, checked, and put
        back if another process replaced it meanwhile."""
        aside = self._temporary(".stale")
        try:
            os.rename(path, aside)
        except OSError:
            return
        try:
            stat = os.stat(aside)
            if ident is not None and (stat.st_dev, stat.st_ino) != ident:
                with contextlib.suppress(FileExistsError):
                    os.link(aside, path)  # not the one judged: put it back
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                os.unlink(aside)

    def _temporary(self, suffix: str = "") -> str:
        return self.store.path(f".tmp-{uuid.uuid4().hex}-{LOCK_FILE}{suffix}")

    def _write_temporary(self, data: bytes) -> str:
        """Our record in a new temporary file beside the lock; a failed write (a full disk) leaves nothing."""
        temporary = self._temporary()
        try:
            if not self._local:
                with self.store.fs.open_output_stream(temporary) as stream:
                    stream.write(data)
                return temporary
            descriptor = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.store.fs.delete_file(temporary)
            raise write_error(self.store.path(LOCK_FILE), exc) from None
        return temporary

    def _create(self) -> bool:
        """Create the lock file holding our record if none exists; True if it is ours."""
        path = self.store.path(LOCK_FILE)
        if not self._local:
            if self.store.exists(LOCK_FILE):
                return False
            temporary = self._write_temporary(self._record())
            try:
                self.store.fs.move(temporary, path)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    self.store.fs.delete_file(temporary)
                raise write_error(path, exc) from None
            return (self._read() or {}).get("token") == self.token
        temporary = self._write_temporary(self._record())
        try:
            os.link(temporary, path)  # atomic, complete, and fails if a lock exists
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise write_error(path, exc) from None
            return self._create_exclusive(path)  # no hard links here: O_EXCL, the partial file removed on failure
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temporary)

    def _create_exclusive(self, path: str) -> bool:
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise write_error(path, exc) from None
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(self._record())
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise write_error(path, exc) from None
        return True

    def _remove_stale(self, judged: dict[str, Any]) -> None:
        """Remove the lock judged stale, and only it: on a local path it is renamed aside and its inode checked
        (a lock that changed meanwhile, e.g. another taker's, is put back)."""
        if not self._local:
            with contextlib.suppress(OSError, RayprivError):
                self.store.delete(LOCK_FILE)
            return
        self._remove_exact(self.store.path(LOCK_FILE), judged["ident"] or (-1, -1))

    def _replace(self, data: bytes) -> None:
        """Overwrite the lock file with ``data`` in one step (a heartbeat)."""
        temporary = self._write_temporary(data)
        try:
            if self._local:
                os.replace(temporary, self.store.path(LOCK_FILE))
            else:
                self.store.fs.move(temporary, self.store.path(LOCK_FILE))
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.store.fs.delete_file(temporary)
            raise write_error(self.store.path(LOCK_FILE), exc) from None

    # ------------------------------------------------------------ taking and holding

    def acquire(self) -> RunLease:
        store = self.store
        store.is_empty()  # refuses an --out that is (or lies under) a file before anything is made
        self.created_dir = not store.exists()
        try:
            store.fs.create_dir(store.root, recursive=True)
        except OSError as exc:
            raise write_error(store.root, exc) from None
        self.acquired_at = datetime.now(timezone.utc).isoformat()
        with self._mutex():
            for _ in range(5):
                if self._create():
                    break
                current = self._read()
                if current is None:
                    continue  # released meanwhile
                if not (self.force or self._stale(current)):
                    self._undo_dir()
                    raise RunLocked(self._refusal(current))
                log.warning("taking over the lease of %s from %s (%s)", store.uri, self._who(current),
                            "forced" if self.force else "stale")
                self._remove_stale(current)
            else:
                self._undo_dir()
                raise RunLocked(f"could not take the lease of {store.uri}: other audits keep taking it; retry later")
        self._checked = time.time()
        store_module.GUARDS[store.uri] = self.check
        self._thread = threading.Thread(target=self._beat, name="raypriv-lease", daemon=True)
        self._thread.start()
        return self

    def _refusal(self, current: dict[str, Any]) -> str:
        age = self._age(current)
        ago = "unknown" if math.isinf(age) else f"{age:.0f}s ago"
        if not current["readable"] or current["host"] is None and current["pid"] is None:
            return (f"{self.store.uri} holds a raypriv.lock that is not a lease record (written {ago}); if no audit "
                    f"is running, rerun with --force-unlock (it is also taken over by itself once "
                    f"{STALE_SECONDS:.0f}s old)")
        return (f"{self.store.uri} is in use by another raypriv audit ({self._who(current)}, heartbeat {ago}); wait "
                f"for it to finish, or if that process is gone rerun with --force-unlock (a lease is also taken over "
                f"by itself once its heartbeat is {STALE_SECONDS:.0f}s old)")

    def _lose(self, current: dict[str, Any] | None) -> str:
        if self.lost is None:
            self.lost = (f"lost the lease of {self.store.uri} to {self._who(current)} (this audit was paused past "
                         f"{STALE_SECONDS:.0f}s, or the lease was forced); this audit stops, its finished models are "
                         "kept: rerun once the other audit ends to resume")
            log.error("%s", self.lost)
        return self.lost

    def check(self) -> None:
        """Raise RunLocked (one line) if this lease was lost; called by the run store before every write.

        Rereads the lock at most every CHECK_SECONDS, and at once after the
        wall clock moved back or jumped (a sleep)."""
        if self.lost is not None:
            raise RunLocked(self.lost)
        if self._stop.is_set():
            return
        now = time.time()
        if 0.0 <= now - self._checked < CHECK_SECONDS:
            return
        current = self._read()
        if current is None or current["token"] != self.token:
            raise RunLocked(self._lose(current))
        self._checked = now

    def _refresh(self) -> None:
        with self._mutex():
            current = self._read()
            if current is None or current["token"] != self.token:
                raise RunLocked(self._lose(current))
            self._replace(self._record())
        if not self._local and (self._read() or {}).get("token") != self.token:
            raise RunLocked(self._lose(self._read()))

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self._refresh()
            except RunLocked:
                return  # the next guarded write stops the audit
            except Exception as exc:  # e.g. a full disk: the run goes on, the next beat retries
                log.warning("could not refresh the lease: %s", exc)

    def _undo_dir(self) -> None:
        """Remove the run directory if this lease created it and it is still empty (a refused run leaves nothing)."""
        if self.created_dir and self.store.is_empty():
            with contextlib.suppress(OSError):
                self.store.fs.delete_dir(self.store.root)

    def release(self, refused: bool = False) -> None:
        """Stop the heartbeat and delete the lock file if it is still ours; ``refused``: also undo a new directory."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if store_module.GUARDS.get(self.store.uri) == self.check:
            del store_module.GUARDS[self.store.uri]
        with self._mutex():
            if (self._read() or {}).get("token") == self.token:
                with contextlib.suppress(OSError, RayprivError):
                    self.store.fs.delete_file(self.store.path(LOCK_FILE))
        if refused:
            self._undo_dir()

    def __enter__(self) -> RunLease:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.release(refused=kind is not None and issubclass(kind, RayprivError) and not issubclass(kind, AuditInterrupted))
