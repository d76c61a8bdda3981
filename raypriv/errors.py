"""The one exception type users see.

Anything raised as :class:`RayprivError` is a problem with the user's input or
environment (a wrong config field, a missing file, a corrupt Parquet).  The CLI
prints its message and exits with status 2, without a traceback.  Every message
names the problem *and* the fix.
"""

import errno


class RayprivError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""


class AuditInterrupted(RayprivError):
    """The user stopped the run; what finished is stored and a rerun resumes."""


class ModelFailed(RayprivError):
    """One shadow model's pipeline failed (e.g. its external command): the run goes on for the others.

    The worker turns it into a failure record instead of a model row; the
    audit reports every failed model after training, scores nothing, and a
    rerun retries only the models that are missing.
    """


class RunLocked(RayprivError):
    """Another audit holds the run directory's lease (see :class:`raypriv.run.lease.RunLease`)."""


def write_error(path: str, exc: OSError) -> RayprivError:
    """One line for an OS error while writing ``path``: what happened and the fix."""
    full, denied, file = "free space (or choose another --out) and rerun to resume", "choose a writable --out", \
        "a file stands where a folder is needed; choose an --out that is a folder (or a new path)"
    reason = {errno.ENOSPC: f"the disk is full; {full}", errno.EDQUOT: f"the disk quota is exceeded; {full}",
              errno.EACCES: f"permission denied; {denied}", errno.EPERM: f"permission denied; {denied}",
              errno.EROFS: f"the file system is read-only; {denied}", errno.ENOTDIR: file, errno.EEXIST: file,
              errno.EISDIR: "a folder stands where a file is needed; move it away or choose another --out"}.get(exc.errno or 0)
    phrases = {"no space": errno.ENOSPC, "permission denied": errno.EACCES, "read-only": errno.EROFS,
               "not a directory": errno.ENOTDIR, "file exists": errno.EEXIST, "is a directory": errno.EISDIR}
    found = [code for phrase, code in phrases.items() if phrase in str(exc).lower()]
    if reason is None and found:  # pyarrow raises OSError with the errno only in its message
        return write_error(path, OSError(found[0], str(exc)))
    reason = reason or "check that the location is writable and has free space"
    detail = " ".join(str(exc).split())
    return RayprivError(f"cannot write {path} ({detail}): {reason}")
