"""The one exception type users see.

Anything raised as :class:`RayprivError` is a problem with the user's input or
environment (a wrong config field, a missing file, a corrupt Parquet).  The CLI
prints its message and exits with status 2, without a traceback.  Every message
names the problem *and* the fix.
"""


class RayprivError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""
