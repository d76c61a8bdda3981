"""Progress of a long step: items done / total, throughput and ETA.

On a terminal it is a tqdm bar, in a Jupyter notebook a tqdm widget; otherwise (``ray job submit`` logs, files) a
log line on the ``raypriv`` logger at most every ``log_every`` seconds, and
one at the end.  Training counts models with it, the Ray scoring backend's
metrics stage counts tasks.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("raypriv")


def in_notebook() -> bool:
    """True inside a Jupyter (IPython kernel) session, where stderr is no terminal but a bar still shows."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ipython = shell.get_ipython() if hasattr(shell, "get_ipython") else None
    return ipython is not None and "IPKernelApp" in getattr(ipython, "config", {})


class Progress:
    """Count ``total`` items of ``unit`` under ``desc``; ``enabled=False`` keeps the count and prints nothing."""

    def __init__(self, total: int, desc: str, unit: str, enabled: bool, log_every: float = 10.0) -> None:
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.desc, self.unit, self.enabled, self.log_every = desc, unit, enabled, log_every
        self.next_log = 0.0
        self.bar = None
        if enabled and (sys.stderr.isatty() or in_notebook()):
            from tqdm.auto import tqdm  # a widget in a notebook, a text bar on a terminal

            self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)

    def set_total(self, total: int) -> None:
        """The total, once it is known (e.g. after a first pass)."""
        self.total = total
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def rate(self) -> float:
        """Items per second so far."""
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def eta(self) -> float:
        """Seconds left at the rate so far (inf before the first item)."""
        rate = self.rate()
        return (self.total - self.done) / rate if rate > 0 else float("inf")

    def update(self, n: int = 1, note: str = "") -> None:
        """``n`` more items done; ``note`` (e.g. the last item) goes on the bar or the log line."""
        self.done += n
        if self.bar is not None:
            if note:
                self.bar.set_postfix_str(note)
            self.bar.update(n)
            return
        elapsed = time.perf_counter() - self.start
        if self.enabled and (elapsed >= self.next_log or self.done >= self.total):
            per_minute = 60 * self.rate()
            log.info("%s: %d/%d (%.1f %s/min, ETA %.0fs)%s", self.desc, self.done, self.total, per_minute, self.unit,
                     self.eta(), f"; last: {note}" if note else "")
            self.next_log = elapsed + self.log_every

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def report_open(title: str, states: dict[str, tuple[str, str]], enabled: bool) -> None:
    """After a round of an until-decided audit: which paradigms it decided, which are still open, and why.

    ``states``: paradigm -> (state, reason), for the paradigms that were open
    before this round's look (``state``: ``leaks``, ``bounded`` or ``open``).
    One log line per paradigm on the ``raypriv`` logger (stderr on the
    command line), so it shows in ``ray job submit`` logs as on a terminal.
    """
    if not enabled:
        return
    still_open = [p for p, (state, _) in states.items() if state == "open"]
    log.info("%s: %d paradigm(s) still open%s", title, len(still_open), f" ({', '.join(still_open)})" if still_open else "")
    for paradigm, (state, reason) in states.items():
        log.info("  %s: %s: %s", paradigm, "still open" if state == "open" else f"decided, {state}", reason)
