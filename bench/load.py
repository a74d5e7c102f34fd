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
from dataclasses import dataclass
from typing import Any, Callable, Dict, List


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


@dataclass
class QuietRounds:
    """Timings per variant from the rounds kept, and what was dropped."""

    samples: Dict[Any, List[float]]
    dropped: int
    busy_seen: List[float]  # others' share of the CPUs before each kept round


def collect_quiet_rounds(
    measures: Dict[Any, Callable[[], float]],
    reps: int,
    max_rounds: int,
    busy_limit: float,
    keep_busy: bool = False,
    alternate: bool = True,
) -> QuietRounds:
    """Time every variant once per round until ``reps`` rounds are kept.

    Why one loop for every benchmark command: a round is dropped (unless
    ``keep_busy``) when others used more than ``busy_limit`` of the CPUs just
    before it, and the variants of a round run back to back, so ratios compare
    samples taken under the same conditions; with ``alternate`` the order flips
    every round, so drift does not favour the variant that runs first.
    """
    names = list(measures)
    result = QuietRounds({name: [] for name in names}, 0, [])
    rounds = 0
    while len(result.samples[names[0]]) < reps and rounds < max_rounds:
        rounds += 1
        busy = busy_fraction(0.5)
        if busy > busy_limit and not keep_busy:
            result.dropped += 1
            continue
        result.busy_seen.append(busy)
        order = names if not alternate or rounds % 2 else names[::-1]
        for name in order:
            result.samples[name].append(measures[name]())
    return result
