"""The measurement loop: all implementations of one case, alternating rep by rep.

Why this shape: on this machine the same call swings by 2x over minutes, so a
fair comparison needs each implementation's rep r to run right next to the others'
rep r.  Per case and mode we first run one untimed forward+backward per
implementation (``torch.compile`` compiles here; the losses and gradients are
compared with stock), then ``warmup`` untimed and ``reps`` timed rounds of
``torch, compile, patch``.  Before every call the input gradient is set to ``None``
(as ``zero_grad()`` does by default, so each call allocates and writes a fresh
gradient), garbage is collected, the collector is paused, and the peak-memory meter
is reset; the timer covers only the call (and ``backward()``).
"""
from __future__ import annotations

import dataclasses
import gc
import sys
import time
from typing import Any, Callable, Optional

import torch

from bench.cases import Case, CaseInputs, make_inputs
from bench.impls import LossFn
from bench.load import load_average, wait_until_idle
from bench.memory import PeakMeter

# Agreement with stock that we expect from a correct implementation; a larger
# difference is reported (never hidden) next to the timing.
_TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2}


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


def _relative_error(value: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.double().abs().max().clamp_min(1e-30)
    return float((value.double() - expected.double()).abs().max() / scale)


def _check_against_stock(case: Case, inputs: CaseInputs, fns: dict[str, LossFn]) -> dict[str, dict]:
    """Untimed forward+backward per implementation; compares loss and gradient with stock eager.

    Doubles as the compile/build warm-up.  Records the autograd node name so a
    silent fallback to the stock path would be visible in the JSON.
    """
    import torch.nn.functional as F

    inputs.logits.grad = None
    expected_loss = _call(F.cross_entropy, inputs)
    expected_loss.backward()
    expected_grad = inputs.logits.grad
    inputs.logits.grad = None
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
    del expected_grad, expected_loss
    return checks


def run_case(
    case: Case,
    fns: dict[str, LossFn],
    modes: list[str],
    reps: int,
    warmup: int,
    measure_memory: bool,
) -> list[dict]:
    """Measure one case; one record per (mode, implementation) with the raw samples."""
    inputs = make_inputs(case)
    checks = _check_against_stock(case, inputs, fns)
    records = []
    for mode in modes:
        times: dict[str, list[float]] = {name: [] for name in fns}
        peaks: dict[str, list[Any]] = {name: [] for name in fns}
        for round_index in range(warmup + reps):
            for name, fn in fns.items():
                elapsed_ms, peak = _timed_call(fn, inputs, mode, measure_memory)
                if round_index >= warmup:
                    times[name].append(elapsed_ms)
                    peaks[name].append(peak)
        for name in fns:
            records.append(
                {
                    "case": dataclasses.asdict(case),
                    "label": case.label,
                    "mode": mode,
                    "impl": name,
                    "times_ms": times[name],
                    "peak_bytes": peaks[name],
                    "grad_bytes": inputs.grad_bytes,
                    "check": checks[name],
                }
            )
    return records


def run_cases(
    cases: list[Case],
    impl_set: Any,
    modes: list[str],
    reps: int,
    warmup: int,
    measure_memory: bool,
    wait_idle_s: float = 0.0,
    on_case: Optional[Callable[[list[dict]], None]] = None,
) -> list[dict]:
    """Measure every case in turn, printing progress to stderr.

    Each record carries how busy the CPUs were with other processes just before its
    case (``others_busy``, 0..1) and the load average, so noisy results can be told apart.
    ``on_case`` receives all records so far after each case (the CLI saves them, so an
    interrupted run keeps what it measured).
    """
    records: list[dict] = []
    started = time.perf_counter()
    for index, case in enumerate(cases, 1):
        others_busy, waited_s = wait_until_idle(wait_idle_s)
        machine = {"others_busy": others_busy, "waited_s": waited_s, "loadavg": load_average()}
        case_start = time.perf_counter()
        case_records = run_case(case, impl_set.for_case(), modes, reps, warmup, measure_memory)
        for record in case_records:
            record["machine"] = machine
        records.extend(case_records)
        if on_case is not None:
            on_case(records)
        for record in case_records:
            if record["mode"] == modes[0] and not record["check"]["agrees_with_stock"]:
                print(
                    f"  WARNING {record['impl']} disagrees with stock on {case.label}: "
                    f"{record['check']}",
                    file=sys.stderr,
                )
        first_calls = ", ".join(
            f"{record['impl']} {record['check']['first_call_s']:.1f} s"
            for record in case_records if record["mode"] == modes[0]
        )
        print(
            f"[{index}/{len(cases)}] {case.label}: {time.perf_counter() - case_start:.1f} s "
            f"(first fwd+bwd: {first_calls}; others busy {100 * others_busy:.0f}% before, "
            f"waited {waited_s:.0f} s) "
            f"(total {time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    return records
