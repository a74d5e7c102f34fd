"""Issue 10's targets, judged per case and thread count -- from quiet measurements only.

Why a module of its own: a verdict is the one line a reader takes away, so the rules
that make one (which cases a target covers, which statistic, and when there is no
verdict at all) live in one place, apart from the tables and the measuring.

Targets, each for ``patch`` in ``fwdbwd`` mode, per allocator, thread count and case:

* ``time``: median of per-round paired ratios ``patch / compile`` <= 0.85, every case;
* ``roofline``: share of the copy-bandwidth roofline (``bench.roofline``) of
  ``patch``'s median time >= 0.75, at 4096x32768 float32 (both target kinds, every
  smoothing/weight variant measured);
* ``memory``: peak above the inputs (max over the kept rounds) / gradient bytes <= 1.05.

A target is ``not measured`` -- never met or missed -- when its case did not get
enough quiet rounds (others above the busy limit before or after a round; above 10%
of the CPUs counts as busy here even if a run relaxed ``--busy-limit``), when an
implementation it compares is missing or disagrees with stock, or when its
denominator (bandwidth, memory) was not measured.  The run-time target (the full
matrix in <= 25 minutes) is judged on the parent's wall time, only for the full matrix.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Iterable, Optional

from bench import stats
from bench.roofline import roofline_share

MAX_VS_COMPILE = 0.85
MIN_ROOFLINE = 0.75
MAX_PEAK_PER_GRAD = 1.05
MAX_MATRIX_MINUTES = 25.0
QUIET_LIMIT = 0.10  # others' CPU share above which a round never backs a verdict, whatever --busy-limit was
ROOFLINE_CASE = {"shape": "4096x32768", "dtype": "float32"}
TARGETS = ("time", "roofline", "memory")
MET, MISSED, NOT_MEASURED = "met", "missed", "not measured"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One target for one (allocator, threads, case): state, the value judged and why not, if not."""

    target: str
    allocator: str
    threads: int
    label: str
    state: str
    value: Optional[float] = None
    limit: Optional[float] = None
    reason: str = ""

    def cell(self) -> str:
        """Short markdown cell: ``0.712 met``, ``**0.912 missed**``, ``not measured (busy)``."""
        if self.state == NOT_MEASURED:
            return f"not measured ({self.reason})" if self.reason else NOT_MEASURED
        text = f"{self.value:.3f} {self.state}"
        return text if self.state == MET else f"**{text}**"


def _judge(value: float, limit: float, at_most: bool) -> str:
    return MET if (value <= limit if at_most else value >= limit) else MISSED


def busy_max(record: dict) -> Optional[float]:
    """The most other processes used just before or after any kept round of the record."""
    rounds = record.get("rounds") or {}
    seen = list(rounds.get("busy_before", [])) + list(rounds.get("busy_after", []))
    return max(seen) if seen else None


def is_quiet(record: dict) -> bool:
    """Enough kept rounds, and none of them next to others above ``QUIET_LIMIT``.

    The second half matters when a run relaxed ``--busy-limit`` (smoke runs on a busy
    machine): its records are complete but were not taken quietly.
    """
    worst = busy_max(record)
    return bool(record.get("quiet")) and worst is not None and worst <= QUIET_LIMIT


def roofline_of(record: dict, strict: bool = True) -> Optional[float]:
    """Roofline share of a record's median time; None without a (quiet, if ``strict``) bandwidth and time."""
    bandwidth = record.get("bandwidth_bytes_per_s")
    bandwidth_busy = record.get("bandwidth_busy_max")
    if strict and (bandwidth_busy is None or bandwidth_busy > QUIET_LIMIT or not is_quiet(record)):
        return None
    if not bandwidth or not record.get("quiet") or not record["times_ms"]:
        return None
    return roofline_share(record["bytes_moved"], bandwidth, stats.median(record["times_ms"]))


def _why_not(record: Optional[dict], name: str) -> Optional[str]:
    """Reason a record cannot back a verdict, or None if it can."""
    if record is None:
        return f"no {name}"
    if not record.get("quiet", False):
        rounds = record.get("rounds", {})
        return f"busy: {rounds.get('kept', 0)} quiet rounds"
    if not is_quiet(record):
        worst = busy_max(record)
        return "busy: no busy samples" if worst is None else f"busy: others up to {100 * worst:.0f}%"
    if not record["check"]["agrees_with_stock"]:
        return f"{name} disagrees with stock"
    return None


def _case_verdicts(allocator: str, threads: int, label: str, by_impl: dict[str, dict]) -> list[Verdict]:
    patch = by_impl.get("patch")
    compile_ = by_impl.get("compile")
    base = dict(allocator=allocator, threads=threads, label=label)
    verdicts = []
    reason = _why_not(patch, "patch") or _why_not(compile_, "compile")
    if reason:
        verdicts.append(Verdict("time", state=NOT_MEASURED, reason=reason, limit=MAX_VS_COMPILE, **base))
    else:
        ratio = stats.median_paired_ratio(patch["times_ms"], compile_["times_ms"])
        verdicts.append(Verdict("time", state=_judge(ratio, MAX_VS_COMPILE, True), value=ratio,
                                limit=MAX_VS_COMPILE, **base))
    case = (patch or compile_ or next(iter(by_impl.values())))["case"]
    if all(case[field] == value for field, value in ROOFLINE_CASE.items()):
        reason = _why_not(patch, "patch")
        share = None if reason else roofline_of(patch)
        if share is None:
            verdicts.append(Verdict("roofline", state=NOT_MEASURED, limit=MIN_ROOFLINE,
                                    reason=reason or "bandwidth not measured", **base))
        else:
            verdicts.append(Verdict("roofline", state=_judge(share, MIN_ROOFLINE, False), value=share,
                                    limit=MIN_ROOFLINE, **base))
    reason = _why_not(patch, "patch")
    peak = None if reason else stats.peak_summary(patch["peak_bytes"])
    if peak is None:
        verdicts.append(Verdict("memory", state=NOT_MEASURED, limit=MAX_PEAK_PER_GRAD,
                                reason=reason or "memory not measured", **base))
    else:
        ratio = peak[1] / patch["grad_bytes"]
        verdicts.append(Verdict("memory", state=_judge(ratio, MAX_PEAK_PER_GRAD, True), value=ratio,
                                limit=MAX_PEAK_PER_GRAD, **base))
    return verdicts


def evaluate(records: Iterable[dict]) -> list[Verdict]:
    """Every target for every (allocator, threads, case) measured in ``fwdbwd`` mode."""
    groups: dict[tuple, dict[str, dict]] = {}
    for record in records:
        if record["mode"] == "fwdbwd":
            key = (record["allocator"], record.get("threads", 0), record["label"])
            groups.setdefault(key, {})[record["impl"]] = record
    verdicts = []
    for (allocator, threads, label), by_impl in groups.items():
        verdicts.extend(_case_verdicts(allocator, threads, label, by_impl))
    return verdicts


def run_time_verdict(seconds: float, full_matrix: bool) -> Verdict:
    """The full matrix's wall time (compilation and waiting included) against 25 minutes."""
    minutes = seconds / 60
    if not full_matrix:
        return Verdict("run time", "all", 0, "matrix", NOT_MEASURED, minutes, MAX_MATRIX_MINUTES,
                       "not the full matrix")
    return Verdict("run time", "all", 0, "matrix", _judge(minutes, MAX_MATRIX_MINUTES, True), minutes,
                   MAX_MATRIX_MINUTES)


FULL_MATRIX = {
    "shape": {"4096x32768", "32768x1024", "16x21x256x256"},
    "dtype": {"float32", "bfloat16"},
    "target": {"prob", "index"},
    "label_smoothing": {0.0, 0.1},
    "weighted": {False, True},
}


def covers_full_matrix(records: Iterable[dict]) -> bool:
    """Whether fwd+bwd of compile and patch was run for all 48 cases at 1 thread and at least one more count."""
    wanted = set(itertools.product(*FULL_MATRIX.values()))
    seen: dict[tuple[str, int], set] = {}
    for record in records:
        if record["mode"] == "fwdbwd" and record["impl"] in ("compile", "patch"):
            case = tuple(record["case"][field] for field in FULL_MATRIX)
            seen.setdefault((record["impl"], record.get("threads", 0)), set()).add(case)

    def covered(impl: str, threads: int) -> bool:
        return seen.get((impl, threads), set()) >= wanted

    complete = {threads for _, threads in seen if covered("compile", threads) and covered("patch", threads)}
    return 1 in complete and len(complete) >= 2


def counts(verdicts: Iterable[Verdict]) -> dict[tuple[str, int], dict[str, int]]:
    """(target, threads) -> {met, missed, not measured} counts."""
    table: dict[tuple[str, int], dict[str, int]] = {}
    for verdict in verdicts:
        cell = table.setdefault((verdict.target, verdict.threads), {MET: 0, MISSED: 0, NOT_MEASURED: 0})
        cell[verdict.state] += 1
    return table
