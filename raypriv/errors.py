"""The one exception type users see.

Anything raised as :class:`RayprivError` is a problem with the user's input or
environment (a wrong config field, a missing file, a corrupt Parquet).  The CLI
prints its message and exits with status 2, without a traceback.  Every message
names the problem *and* the fix.
"""


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
    """Another audit holds the run directory's lease (see :class:`raypriv.rundir.RunLease`)."""
