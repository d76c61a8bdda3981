"""raypriv.progress: done / total, throughput and ETA in the log when stderr is not a terminal."""

import logging

import pytest

import raypriv.progress
from raypriv.progress import Progress


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(raypriv.progress.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(raypriv.progress.sys.stderr, "isatty", lambda: False)
    return now


def test_log_lines_with_rate_and_eta(clock, caplog):
    caplog.set_level(logging.INFO, logger="raypriv")
    progress = Progress(10, "scoring real: metrics", "tasks", enabled=True, log_every=10.0)
    clock[0] += 2.0
    progress.update(1, "first")  # the first update always logs
    clock[0] += 3.0
    progress.update(4)  # 5 s in, within 10 s of the last line: silent
    clock[0] += 7.0
    progress.update(1)  # 12 s in: 6 done at 0.5/s, 4 left -> 8 s
    progress.set_total(8)  # ties merged two ranges
    clock[0] += 4.0
    progress.update(2)  # the last one always logs
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "scoring real: metrics: 1/10 (30.0 tasks/min, ETA 18s); last: first",
        "scoring real: metrics: 6/10 (30.0 tasks/min, ETA 8s)",
        "scoring real: metrics: 8/8 (30.0 tasks/min, ETA 0s)",
    ]
    assert progress.eta() == 0.0


def test_disabled_counts_and_prints_nothing(clock, caplog):
    caplog.set_level(logging.INFO, logger="raypriv")
    progress = Progress(3, "shadow models", "models", enabled=False)
    clock[0] += 1.0
    progress.update(3)
    assert progress.done == 3 and progress.rate() == 3.0 and not caplog.records
