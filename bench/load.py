"""How busy the machine is with *other* work, measured while this process sleeps.

Why: this box has 2 cores shared with builds and test runs; a benchmark taken while
they run measures the scheduler, not the kernels.  Before each case we sample
``/proc/stat`` over a short window while sleeping (so the busy share is all other
processes), record it next to the results, and, with ``--wait-idle``, wait for a
quiet moment first.
"""
from __future__ import annotations

import os
import time


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies summed over all CPUs."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user..steal; guest time is already in user
    return total - idle, total


def busy_fraction(window_s: float = 0.5) -> float:
    """Share of all CPUs busy with other work during ``window_s`` of our sleep."""
    busy_start, total_start = _cpu_times()
    time.sleep(window_s)
    busy_end, total_end = _cpu_times()
    return (busy_end - busy_start) / max(1, total_end - total_start)


def wait_until_idle(max_wait_s: float, threshold: float = 0.15) -> tuple[float, float]:
    """Sleep until others use < ``threshold`` of the CPUs or ``max_wait_s`` passes.

    Returns (busy fraction last seen, seconds waited).
    """
    started = time.perf_counter()
    busy = busy_fraction()
    while busy >= threshold and time.perf_counter() - started < max_wait_s:
        busy = busy_fraction(1.0)
    return busy, time.perf_counter() - started


def load_average() -> float:
    """One-minute load average (runnable tasks; 2 means both cores busy here)."""
    return os.getloadavg()[0]
