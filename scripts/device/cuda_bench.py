"""CUDA benchmark of cross_entropy: stock eager, torch.compile, the patch, and Liger-Kernel.

For each case (shape x dtype x target kind, reduction 'mean', no weight, no
smoothing) every implementation is warmed up once (torch.compile compiles
then; its compile time is reported apart), then timed in rounds that alternate
the implementations (the order rotates each round), with CUDA events around one
call: forward (on logits that require grad, as in training), and forward +
backward (``torch.autograd.grad`` of the loss, so no ``.grad`` accumulation is
timed).  Medians are reported.

Achieved bandwidth counts the bytes a single-pass implementation must move:
forward reads the logits (and probability targets); forward + backward reads
them twice and writes the gradient.  It is compared with a measured
device-to-device copy (read + write bytes over time).  Memory is
``torch.cuda.max_memory_allocated`` during one forward + backward above what was
allocated before it (the inputs), the gradient included, and its ratio to the
gradient's size.

Liger-Kernel (``liger_kernel.transformers.functional.liger_cross_entropy``) has
no probability targets and takes (N, C) only, so it runs on class indices of the
2-D shapes.  It writes the gradient into the logits during the forward, so it
gets its own copy of the logits (allocated before the measurement).

``--dry-run`` runs on the CPU with small shapes and wall-clock timing: it checks
the script, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

GPU_SHAPES = [(8192, 32768), (8192, 131072), (16, 21, 512, 512)]
DRY_SHAPES = [(64, 512), (64, 2048), (2, 21, 16, 16)]
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
IMPLS = ("torch", "compile", "patch", "liger")


def load_impls(names: list[str], notes: list[str]) -> dict[str, Callable]:
    """The callables that could be loaded; each failure becomes a note, never a number."""
    loaded: dict[str, Callable] = {}
    for name in names:
        try:
            if name == "torch":
                loaded[name] = F.cross_entropy
            elif name == "compile":
                loaded[name] = None  # made fresh per case, see fresh_compile
            elif name == "patch":
                from conformance.impls import get_impl

                loaded[name] = get_impl("patch")
            elif name == "liger":
                from liger_kernel.transformers.functional import liger_cross_entropy

                loaded[name] = liger_cross_entropy
        except Exception as error:
            notes.append(f"{name} unavailable: {traceback.format_exception_only(type(error), error)[-1].strip()}")
    return loaded


def fresh_compile() -> Callable:
    """A new torch.compile of F.cross_entropy, so each case compiles for its own shapes."""
    import torch._dynamo

    torch._dynamo.reset()
    return torch.compile(F.cross_entropy, dynamic=False)


class Timer:
    """CUDA events on a GPU, perf_counter on the CPU (dry run)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def time_ms(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        begin = time.perf_counter()
        fn()
        return (time.perf_counter() - begin) * 1e3


def copy_bandwidth_gbs(device: str, timer: Timer, nbytes: int) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second), median of 10."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = [timer.time_ms(lambda: dst.copy_(src)) for _ in range(10)]
    del src, dst
    return 2 * nbytes / (statistics.median(times) * 1e-3) / 1e9


def make_inputs(shape: tuple, dtype: torch.dtype, kind: str, device: str):
    gen = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(*shape, device=device, generator=gen, dtype=torch.float32).to(dtype)
    if kind == "prob":
        target = torch.softmax(torch.randn(*shape, device=device, generator=gen), 1).to(dtype)
    else:
        target = torch.randint(0, shape[1], (shape[0], *shape[2:]), device=device, generator=gen)
    return logits, target


def one_call(fn: Callable, logits: torch.Tensor, target: torch.Tensor, backward: bool) -> Callable[[], object]:
    """One training-style call: the forward on logits that require grad (so a
    compiled function reuses one graph for both modes), then the backward."""
    def run():
        x = logits.detach().requires_grad_(True)
        loss = fn(x, target)
        if not isinstance(loss, torch.Tensor):
            loss = loss[0]
        if not backward:
            return loss
        return torch.autograd.grad(loss, x)
    return run


def peak_above_inputs(run: Callable[[], object], cuda: bool) -> Optional[int]:
    if not cuda:
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = run()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del result
    return peak


def bench_case(shape: tuple, dtype_name: str, kind: str, impls: dict[str, Callable], device: str,
               timer: Timer, reps: int) -> list[dict]:
    dtype = DTYPES[dtype_name]
    cuda = device == "cuda"
    logits, target = make_inputs(shape, dtype, kind, device)
    numel = logits.numel()
    elem = logits.element_size()
    units_fwd = 1 + (1 if kind == "prob" else 0)
    units_fwdbwd = 3 + (2 if kind == "prob" else 0)
    rows: dict[str, dict] = {}
    runners: dict[str, dict[str, Callable]] = {}
    for name, fn in impls.items():
        if name == "liger" and (kind == "prob" or len(shape) != 2):
            continue
        row = {"shape": "x".join(map(str, shape)), "dtype": dtype_name, "target": kind, "impl": name}
        rows[name] = row
        try:
            if name == "compile":
                fn = fresh_compile()
            own_logits = logits.clone() if name == "liger" else logits
            calls = {"fwd": one_call(fn, own_logits, target, False), "fwdbwd": one_call(fn, own_logits, target, True)}
            start = time.monotonic()
            calls["fwd"]()
            calls["fwdbwd"]()
            if cuda:
                torch.cuda.synchronize()
            row["warmup_s"] = round(time.monotonic() - start, 2)
            row["peak_above_inputs_bytes"] = peak_above_inputs(calls["fwdbwd"], cuda)
            runners[name] = calls
        except Exception as error:
            row["error"] = traceback.format_exception_only(type(error), error)[-1].strip()[:200]
    samples: dict[str, dict[str, list[float]]] = {name: {"fwd": [], "fwdbwd": []} for name in runners}
    order = list(runners)
    for rep in range(reps):
        rotated = order[rep % len(order):] + order[:rep % len(order)] if order else []
        for mode in ("fwd", "fwdbwd"):
            for name in rotated:
                samples[name][mode].append(timer.time_ms(runners[name][mode]))
    grad_bytes = numel * elem
    for name, row in rows.items():
        if name not in samples:
            continue
        fwd = statistics.median(samples[name]["fwd"])
        fwdbwd = statistics.median(samples[name]["fwdbwd"])
        row.update(fwd_ms=round(fwd, 4), fwdbwd_ms=round(fwdbwd, 4),
                   fwd_gbs=round(units_fwd * numel * elem / (fwd * 1e-3) / 1e9, 1),
                   fwdbwd_gbs=round(units_fwdbwd * numel * elem / (fwdbwd * 1e-3) / 1e9, 1))
        peak = row.get("peak_above_inputs_bytes")
        if peak is not None:
            row["peak_over_grad"] = round(peak / grad_bytes, 3)
    del logits, target, runners
    if cuda:
        torch.cuda.empty_cache()
    return list(rows.values())


def render_table(rows: list[dict], copy_gbs: float) -> str:
    header = ("| shape | dtype | target | impl | fwd ms | fwd+bwd ms | fwd+bwd GB/s | % of copy | "
              "peak above inputs GB | / grad size | warm-up s |")
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['shape']} | {row['dtype']} | {row['target']} | {row['impl']} | "
                         f"error: {row['error']} | | | | | | |")
            continue
        peak = row.get("peak_above_inputs_bytes")
        lines.append(
            f"| {row['shape']} | {row['dtype']} | {row['target']} | {row['impl']} | {row['fwd_ms']:.3f} | "
            f"{row['fwdbwd_ms']:.3f} | {row['fwdbwd_gbs']:.0f} | {100 * row['fwdbwd_gbs'] / copy_gbs:.0f}% | "
            f"{'' if peak is None else f'{peak / 1e9:.2f}'} | {row.get('peak_over_grad', '')} | "
            f"{row.get('warmup_s', '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write rows, notes and the table here")
    parser.add_argument("--budget-s", type=float, default=300.0, help="stop starting new cases after this")
    parser.add_argument("--reps", type=int, default=15, help="timed rounds per mode (median)")
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--dry-run", action="store_true", help="CPU, small shapes, wall-clock timing")
    args = parser.parse_args(argv)
    started = time.monotonic()
    cuda = not args.dry_run
    if cuda and not torch.cuda.is_available():
        print("no CUDA device; use --dry-run on a CPU machine")
        return 2
    device = "cuda" if cuda else "cpu"
    timer = Timer(cuda)
    notes: list[str] = []
    impls = load_impls([name for name in args.impls.split(",") if name], notes)
    if "liger" in impls:
        notes.append("liger: class indices of 2-D shapes only (no probability targets, (N, C) input); "
                     "it writes the gradient into the logits, so its memory above inputs excludes the gradient")
    copy_gbs = copy_bandwidth_gbs(device, timer, (2 << 30) if cuda else (64 << 20))
    notes.append(f"device-to-device copy: {copy_gbs:.0f} GB/s (read + write bytes)")
    shapes = DRY_SHAPES if args.dry_run else GPU_SHAPES
    rows: list[dict] = []
    # Class indices first: if the budget runs out, probability cases are skipped first.
    cases = [(shape, dtype, kind) for kind in ("index", "prob") for shape in shapes for dtype in DTYPES]
    for index, (shape, dtype, kind) in enumerate(cases):
        elapsed = time.monotonic() - started
        # Each case costs about as much as the average so far (compiles dominate).
        per_case = elapsed / index if index else 0.0
        if elapsed + per_case > args.budget_s:
            notes.append(f"budget of {args.budget_s:.0f} s reached: skipped {len(cases) - index} case(s) "
                         f"from {shape} {dtype} {kind} on")
            break
        case_rows = bench_case(shape, dtype, kind, impls, device, timer, args.reps)
        for row in case_rows:
            print(json.dumps(row), flush=True)
        rows.extend(case_rows)
    table = render_table(rows, copy_gbs)
    print(table)
    for note in notes:
        print("note:", note)
    if args.json:
        args.json.write_text(json.dumps({"device": device, "copy_gbs": copy_gbs, "rows": rows, "notes": notes,
                                         "table": table, "seconds": round(time.monotonic() - started, 1)},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
