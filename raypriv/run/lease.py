"""The run directory's lease: one audit at a time writes to a run directory.

``raypriv.lock`` names the holder (host, pid, a random token) and a
heartbeat.  :class:`RunLease` takes it before the audit writes anything and
releases it when the audit ends; a thread refreshes the heartbeat every
:data:`HEARTBEAT_SECONDS`.  A lease is stale, and taken over with a warning,
when its holder's process is gone (same host) or its heartbeat is older than
:data:`STALE_SECONDS` (other hosts).

Where each guarantee holds:

* a local path: the lock file is created with ``O_EXCL``, so two audits
  starting together end with one refused;
* another pyarrow filesystem (no exclusive create): the new holder writes the
  file and reads it back, which closes all but a short race.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import pyarrow.fs as pafs

from raypriv.errors import AuditInterrupted, RayprivError, RunLocked, write_error
from raypriv.run.store import RunStore

log = logging.getLogger("raypriv")

LOCK_FILE = "raypriv.lock"
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 120.0  # a lease whose heartbeat is older than this is taken over (its holder is gone)


def pid_alive(pid: int) -> bool:
    """Whether a process of this host has the id ``pid`` (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLease:
    """One writer per run directory: ``raypriv.lock`` names its holder (host, pid) and a heartbeat.

    Taken before the audit writes anything and released when it ends.  A
    thread refreshes the heartbeat every :data:`HEARTBEAT_SECONDS`.  A lease
    is stale, and taken over with a warning, when its holder's process is
    gone (same host) or its heartbeat is older than :data:`STALE_SECONDS`
    (other hosts).  On a local path the lock file is created with
    ``O_EXCL``; on other pyarrow filesystems (no exclusive create) the new
    holder writes it and reads it back, which closes all but a short race.
    ``force`` breaks a live holder's lease (``raypriv audit --force-unlock``).
    """

    def __init__(self, store: RunStore, force: bool = False):
        self.store, self.force = store, force
        self.token = uuid.uuid4().hex
        self.created_dir = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                "acquired_at": getattr(self, "acquired_at", None), "heartbeat": time.time()}

    def holder(self) -> dict[str, Any] | None:
        """The lock file's record, None if there is none ({} if it is unreadable: a crash while writing it)."""
        if not self.store.exists(LOCK_FILE):
            return None
        try:
            return json.loads(self.store.read_bytes(LOCK_FILE))
        except (RayprivError, ValueError):
            return {}

    def _stale(self, holder: dict[str, Any]) -> bool:
        age = time.time() - float(holder.get("heartbeat", 0))
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            return not pid_alive(holder["pid"]) or age > STALE_SECONDS and holder["pid"] != os.getpid()
        return age > STALE_SECONDS

    def _create(self) -> bool:
        """Write our lock file if none exists; True if it is ours."""
        data = json.dumps(self._record()).encode()
        path = self.store.path(LOCK_FILE)
        if isinstance(self.store.fs, pafs.LocalFileSystem):
            try:
                descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            except OSError as exc:
                raise write_error(path, exc) from None
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
            return True
        if self.store.exists(LOCK_FILE):
            return False
        self.store.write_bytes(LOCK_FILE, data)
        return (self.holder() or {}).get("token") == self.token

    def acquire(self) -> RunLease:
        store = self.store
        store.is_empty()  # refuses an --out that is (or lies under) a file before anything is made
        self.created_dir = not store.exists()
        try:
            store.fs.create_dir(store.root, recursive=True)
        except OSError as exc:
            raise write_error(store.root, exc) from None
        self.acquired_at = datetime.now(timezone.utc).isoformat()
        for _ in range(3):
            if self._create():
                break
            holder = self.holder()
            if holder is None:
                continue  # released meanwhile
            if not holder:  # being written this instant (or its writer died mid-write): its age is the file's
                mtime = store.fs.get_file_info(store.path(LOCK_FILE)).mtime
                holder = {"heartbeat": mtime.timestamp() if mtime else 0.0}
            who = f"{holder.get('host', '?')} pid {holder.get('pid', '?')}"
            age = time.time() - float(holder.get("heartbeat", 0))
            if not (self.force or self._stale(holder)):
                self._undo_dir()
                raise RunLocked(
                    f"{store.uri} is in use by another raypriv audit ({who}, heartbeat {age:.0f}s ago); wait for it "
                    f"to finish, or if that process is gone rerun with --force-unlock (a lease is also taken over "
                    f"by itself once its heartbeat is {STALE_SECONDS:.0f}s old)"
                )
            log.warning("taking over the lease of %s from %s (%s)", store.uri, who, "forced" if self.force else "stale")
            store.delete(LOCK_FILE)
        else:
            self._undo_dir()
            raise RunLocked(f"could not take the lease of {store.uri}: other audits keep taking it; retry later")
        self._thread = threading.Thread(target=self._beat, name="raypriv-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            holder = self.holder()
            if holder is not None and holder.get("token") != self.token:
                log.error("the lease of %s was taken by %s pid %s", self.store.uri, holder.get("host"), holder.get("pid"))
                return
            try:
                self.store.write_bytes(LOCK_FILE, json.dumps(self._record()).encode())
            except RayprivError as exc:  # e.g. a full disk: the run goes on, the next beat retries
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
        if (self.holder() or {}).get("token") == self.token:
            with contextlib.suppress(OSError, RayprivError):
                self.store.delete(LOCK_FILE)
        if refused:
            self._undo_dir()

    def __enter__(self) -> RunLease:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.release(refused=kind is not None and issubclass(kind, RayprivError) and not issubclass(kind, AuditInterrupted))
