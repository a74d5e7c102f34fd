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
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional


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
    """Samples per variant from the rounds kept, and what was dropped."""

    samples: Dict[Any, List[Any]]
    dropped: int
    busy_seen: List[float]  # others' share of the CPUs before each kept round
    busy_after: List[float] = field(default_factory=list)  # ... and after it (with ``check_after``)
    waited_s: float = 0.0  # busy samples before a round, with ``max_wait_s``

    def kept(self) -> int:
        """Number of rounds kept."""
        return len(self.busy_seen)


def collect_quiet_rounds(
    measures: Dict[Any, Callable[[], Any]],
    reps: int,
    max_rounds: int,
    busy_limit: float,
    keep_busy: bool = False,
    alternate: bool = True,
    check_after: bool = False,
    window_s: float = 0.5,
    busy: Optional[Callable[[float], float]] = None,
    max_wait_s: Optional[float] = None,
) -> QuietRounds:
    """Time every variant once per round until ``reps`` rounds are kept.

    Why one loop for every benchmark command: a round is dropped (unless
    ``keep_busy``) when others used more than ``busy_limit`` of the CPUs just
    before it -- and, with ``check_after``, just after it too (the sample after
    round r is also the one before round r + 1, so checking both sides costs one
    extra sample per call, not one per round) -- and the variants of a round run
    back to back, so ratios compare samples taken under the same conditions; with
    ``alternate`` the order flips every round, so drift does not favour the variant
    that runs first.  A measure may return any sample (the bench returns
    ``(ms, peak bytes)``); ``busy`` is injectable for tests.  With ``max_wait_s``,
    a busy sample before a round is waiting, not a round: it does not count
    against ``max_rounds`` (rounds run), but the windows spent so are bounded by
    ``max_wait_s``.
    """
    sample_busy = busy if busy is not None else busy_fraction
    names = list(measures)
    result = QuietRounds({name: [] for name in names}, 0, [])
    rounds = 0
    waited_s = 0.0
    before: Optional[float] = None  # the latest sample, if it is still "just before" the next round
    while len(result.samples[names[0]]) < reps and rounds < max_rounds:
        rounds += 1
        if before is None:
            before = sample_busy(window_s)
        if before > busy_limit and not keep_busy:
            before = None
            if max_wait_s is not None:
                rounds -= 1  # waiting, not a round
                waited_s += window_s
                if waited_s > max_wait_s:
                    break
                continue
            result.dropped += 1
            continue
        order = names if not alternate or rounds % 2 else names[::-1]
        taken = {name: measures[name]() for name in order}
        if check_after:
            after = sample_busy(window_s)
            if after > busy_limit and not keep_busy:
                result.dropped += 1
                before = after
                continue
            result.busy_after.append(after)
        result.busy_seen.append(before)
        for name in names:
            result.samples[name].append(taken[name])
        before = after if check_after else None
    result.waited_s = waited_s
    return result
