"""The measurement loop: every case at each thread count, implementations alternating round by round.

Why this shape: on this machine the same call swings by 2x over minutes, so a
fair comparison needs each implementation's round r to run right next to the
others' round r.  Per case the stock result is computed once; then, per thread
count (``torch.set_num_threads``), the implementations are made afresh --
``torch.compile``'s CPU kernels specialise on the thread count at compile time
(Inductor's ``parallel_num_threads()``; dynamo does not guard on it), so a function
compiled at 2 threads and called at 1 would not be what a user at 1 thread gets --
and one untimed forward+backward per implementation compiles/builds and is compared
with stock.  Then per mode ``warmup`` untimed rounds and quiet timed rounds: the
share of the CPUs other processes use is sampled before and after every round
(``bench.load.collect_quiet_rounds``); while others are above the busy limit before a
round we wait (up to ``max_wait_s``), a round with others above it afterwards is
discarded and retried (up to ``max_rounds`` rounds run), and the order of the
implementations flips every round.  A (case, thread count, mode) that does not get
``reps`` quiet rounds is recorded with ``quiet: False``; the report gives it no
verdict.  Before every call the input gradient is set to ``None`` (as
``zero_grad()`` does by default, so each call allocates and writes a fresh gradient),
garbage is collected, the collector is paused, and the peak-memory meter is reset;
the timer covers only the call (and ``backward()``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import sys
import time
from typing import Any, Callable, Iterator, Optional

import torch

from bench.cases import Case, CaseInputs, make_inputs, parse_shape
from bench.impls import LossFn
from bench.load import collect_quiet_rounds, load_average, wait_until_idle
from bench.memory import PeakMeter
from bench.roofline import bytes_moved

# Agreement with stock that we expect from a correct implementation; a larger
# difference is reported (never hidden) next to the timing.
_TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2}


@dataclasses.dataclass(frozen=True)
class QuietPolicy:
    """When a round counts: others' CPU share before and after it at most ``busy_limit``."""

    busy_limit: float = 0.10
    max_rounds: int = 20  # rounds run per (case, thread count, mode), discarded ones included
    window_s: float = 0.25  # length of each busy sample (we sleep through it)
    max_wait_s: float = 30.0  # per (case, thread count, mode): waiting for a quiet moment before a round
    wait_idle_s: float = 0.0  # before each case, wait up to this long for a quiet machine


def _call(fn: LossFn, inputs: CaseInputs) -> torch.Tensor:
    return fn(
        inputs.logits,
        inputs.target,
        weight=inputs.weight,
        label_smoothing=inputs.label_smoothing,
    )


def _timed_call(fn: LossFn, inputs: CaseInputs, mode: str, measure_memory: bool) -> tuple[float, Any]:
    """One measured call; returns (milliseconds, peak bytes above the start or None)."""
    inputs.logits.grad = None
    gc.collect()
    gc.disable()
    try:
        with PeakMeter(measure_memory) as meter:
            start = time.perf_counter()
            loss = _call(fn, inputs)
            if mode == "fwdbwd":
                loss.backward()
            elapsed = time.perf_counter() - start
            del loss
    finally:
        gc.enable()
    inputs.logits.grad = None
    return elapsed * 1e3, meter.peak_bytes


_CHUNK = 2**22  # elements per slice of the error computation


def _relative_error(value: torch.Tensor, expected: torch.Tensor) -> float:
    """max |value - expected| / max |expected|, in float32 slices (NaN propagates).

    Why slices: converting a 128M-element gradient to float64 whole allocated and
    faulted in several GiB per check and took longer than the timed rounds of a case;
    float32 differences are exact enough for tolerances of 1e-4 and above.
    """
    flat_value, flat_expected = value.reshape(-1), expected.reshape(-1)
    worst = torch.zeros(())
    scale = torch.zeros(())
    for start in range(0, flat_value.numel(), _CHUNK):
        got = flat_value[start:start + _CHUNK].float()
        want = flat_expected[start:start + _CHUNK].float()
        worst = torch.maximum(worst, (got - want).abs().max())
        scale = torch.maximum(scale, want.abs().max())
    return float(worst / scale.clamp_min(1e-30))


def _stock_result(inputs: CaseInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and input gradient of stock eager ``F.cross_entropy`` (what the others are checked against)."""
    import torch.nn.functional as F

    inputs.logits.grad = None
    expected_loss = _call(F.cross_entropy, inputs)
    expected_loss.backward()
    expected_grad = inputs.logits.grad
    inputs.logits.grad = None
    return expected_loss.detach(), expected_grad


def _check_against_stock(
    case: Case, inputs: CaseInputs, fns: dict[str, LossFn], expected: tuple[torch.Tensor, torch.Tensor]
) -> dict[str, dict]:
    """Untimed forward+backward per implementation; compares loss and gradient with stock eager.

    Doubles as the compile/build warm-up.  Records the autograd node name so a
    silent fallback to the stock path would be visible in the JSON.
    """
    expected_loss, expected_grad = expected
    checks: dict[str, dict] = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        loss = _call(fn, inputs)
        grad_fn = type(loss.grad_fn).__name__ if loss.grad_fn is not None else None
        loss.backward()
        first_call_s = time.perf_counter() - start
        loss_error = _relative_error(loss.detach(), expected_loss.detach())
        grad_error = _relative_error(inputs.logits.grad, expected_grad)
        tolerance = _TOLERANCE[case.dtype]
        checks[name] = {
            "grad_fn": grad_fn,
            "loss_rel_error": loss_error,
            "grad_rel_error": grad_error,
            "agrees_with_stock": loss_error <= tolerance and grad_error <= tolerance,
            "first_call_s": first_call_s,  # includes torch.compile's compilation
        }
        inputs.logits.grad = None
        del loss
    return checks


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """Move every object alive now out of the collector's reach while rounds run.

    Why: each call is preceded by ``gc.collect()`` (so its garbage is freed before the
    peak-memory baseline); after ``torch.compile`` the heap holds so many objects that a
    full collection took 0.3-0.5 s, more than many of the timed calls, 14 of 27 s of a
    case.  Frozen objects are only skipped, not freed or changed; the collection before
    each call still frees everything the previous call left.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _measure_mode(
    fns: dict[str, LossFn], inputs: CaseInputs, mode: str, reps: int, warmup: int,
    measure_memory: bool, policy: QuietPolicy,
) -> Any:
    """Warm-up rounds, then quiet rounds (see the module docstring)."""
    for _ in range(warmup):
        for fn in fns.values():
            _timed_call(fn, inputs, mode, measure_memory)

    def measure(fn: LossFn) -> Callable[[], tuple[float, Any]]:
        return lambda: _timed_call(fn, inputs, mode, measure_memory)

    return collect_quiet_rounds({name: measure(fn) for name, fn in fns.items()}, reps,
                                policy.max_rounds, policy.busy_limit, check_after=True,
                                window_s=policy.window_s, max_wait_s=policy.max_wait_s)


def run_case(
    case: Case,
    impl_set: Any,
    thread_counts: list[int],
    modes: list[str],
    reps: int,
    warmup: int,
    measure_memory: bool,
    policy: QuietPolicy = QuietPolicy(),
) -> list[dict]:
    """Measure one case; one record per (thread count, mode, implementation) with the raw samples."""
    inputs = make_inputs(case)
    expected = _stock_result(inputs)
    shape = parse_shape(case.shape)
    itemsize = inputs.logits.element_size()
    records = []
    default_threads = torch.get_num_threads()
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            fns = impl_set.for_case()  # fresh: compile specialises on the thread count
            checks = _check_against_stock(case, inputs, fns, expected)
            for mode in modes:
                with _frozen_heap():
                    rounds = _measure_mode(fns, inputs, mode, reps, warmup, measure_memory, policy)
                quiet = rounds.kept() >= reps
                for name in fns:
                    samples = rounds.samples[name]
                    records.append({
                        "case": dataclasses.asdict(case),
                        "label": case.label,
                        "mode": mode,
                        "impl": name,
                        "threads": threads,
                        "times_ms": [sample[0] for sample in samples],
                        "peak_bytes": [sample[1] for sample in samples],
                        "grad_bytes": inputs.grad_bytes,
                        "bytes_moved": bytes_moved(shape, itemsize, case.target, case.weighted, mode),
                        "check": checks[name],
                        "quiet": quiet,
                        "rounds": {"kept": rounds.kept(), "dropped": rounds.dropped,
                                   "waited_s": rounds.waited_s,
                                   "busy_before": rounds.busy_seen, "busy_after": rounds.busy_after,
                                   "busy_limit": policy.busy_limit},
                    })
            del fns
    finally:
        torch.set_num_threads(default_threads)
    return records


def run_cases(
    cases: list[Case],
    impl_set: Any,
    thread_counts: list[int],
    modes: list[str],
    reps: int,
    warmup: int,
    measure_memory: bool,
    policy: QuietPolicy = QuietPolicy(),
    on_case: Optional[Callable[[list[dict]], None]] = None,
) -> list[dict]:
    """Measure every case in turn, printing progress to stderr.

    Each record also carries how busy the CPUs were with other processes just before
    its case (``machine.others_busy``, 0..1) and the load average.  ``on_case``
    receives all records so far after each case (the CLI saves them, so an
    interrupted run keeps what it measured).
    """
    records: list[dict] = []
    started = time.perf_counter()
    for index, case in enumerate(cases, 1):
        others_busy, waited_s = wait_until_idle(policy.wait_idle_s, threshold=policy.busy_limit)
        machine = {"others_busy": others_busy, "waited_s": waited_s, "loadavg": load_average()}
        case_start = time.perf_counter()
        case_records = run_case(case, impl_set, thread_counts, modes, reps, warmup, measure_memory,
                                policy)
        for record in case_records:
            record["machine"] = machine
        records.extend(case_records)
        if on_case is not None:
            on_case(records)
        for record in case_records:
            if record["mode"] == modes[0] and not record["check"]["agrees_with_stock"]:
                print(
                    f"  WARNING {record['impl']} at {record['threads']} thread(s) disagrees with "
                    f"stock on {case.label}: {record['check']}",
                    file=sys.stderr,
                )
        first_calls = ", ".join(
            f"{record['impl']}@{record['threads']} {record['check']['first_call_s']:.1f} s"
            for record in case_records if record["mode"] == modes[0]
        )
        rounds = ", ".join(
            f"{record['threads']}t {record['mode']} {record['rounds']['kept']} kept/"
            f"{record['rounds']['dropped']} dropped"
            for record in case_records if record["impl"] == case_records[0]["impl"]
        )
        print(
            f"[{index}/{len(cases)}] {case.label}: {time.perf_counter() - case_start:.1f} s "
            f"(first fwd+bwd: {first_calls}; rounds: {rounds}; others busy "
            f"{100 * others_busy:.0f}% before the case, waited {waited_s:.0f} s) "
            f"(total {time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    return records
