"""Command line: ``python -m bench [options]``.

The parent process only orchestrates: for each allocator setting it starts a child
(``python -m bench ... --child-out FILE``) with ``THP_MEM_ALLOC_ENABLE`` set or
removed *before* torch initialises, because c10 reads the variable once.  Each child
records the parallel backend and torch's default thread count, measures the copy
bandwidth at every thread count (before and after the cases), measures every case at
every thread count (``--threads``, default ``1,default``) with the implementations
alternating in quiet rounds only, and writes raw samples as JSON; the parent merges
them, prints one markdown report with issue 10's verdicts (``bench.verdict``) and
writes the optional JSON and PNG.  ``python -m bench.docgen RUN.json`` turns a
run's JSON into ``docs/benchmarks.md``'s matrix section.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
ALLOCATORS = {"default": None, "thp": "1"}
QUICK = {
    "impls": "torch,compile,patch",
    "shapes": "4096x32768",
    "dtypes": "float32",
    "targets": "prob,index",
    "smoothing": "0",
    "weight": "off",
    "modes": "fwd,fwdbwd",
    "reps": 5,
}
# The full matrix of issue 10: its targets are all fwd+bwd against torch.compile, and it
# must run in 25 minutes, so stock eager (`torch`) and the `fwd` mode are opt-in here.
FULL = {
    "impls": "compile,patch",
    "shapes": "4096x32768,32768x1024,16x21x256x256",
    "dtypes": "float32,bfloat16",
    "targets": "prob,index",
    "smoothing": "0,0.1",
    "weight": "off,on",
    "modes": "fwdbwd",
    "reps": 5,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="CPU benchmark of cross_entropy implementations (alternating, one process "
        "per allocator setting). Ratios are 'ratio of medians / median of paired ratios'.",
    )
    parser.add_argument("--impls", help="comma list of torch,compile,patch "
                        "(default: compile,patch; with --quick also torch)")
    parser.add_argument("--quick", action="store_true", help="4096x32768 float32, both targets, no options")
    parser.add_argument("--shapes", help="comma list of NxC[xd1...] shapes "
                        "(the issue's: 4096x32768,32768x1024,16x21x256x256)")
    parser.add_argument("--dtypes", help="comma list of float32,bfloat16")
    parser.add_argument("--targets", help="comma list of prob,index")
    parser.add_argument("--smoothing", help="comma list of label_smoothing values, e.g. 0,0.1")
    parser.add_argument("--weight", help="comma list of off,on")
    parser.add_argument("--modes", help="comma list of fwd,fwdbwd (default fwdbwd; with --quick both)")
    parser.add_argument("--threads", default="1,default",
                        help="comma list of thread counts; 'default' is torch.get_num_threads() at start")
    parser.add_argument("--reps", type=int, help="timed rounds per case and mode (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before the timed ones")
    parser.add_argument("--allocator", choices=["default", "thp", "both"], default="both")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                        help="before each case wait up to SECONDS for other processes to use at most "
                        "--busy-limit of the CPUs")
    parser.add_argument("--busy-limit", type=float, default=0.10,
                        help="discard a round if others used more than this share of the CPUs just "
                        "before or just after it (default 0.10)")
    parser.add_argument("--busy-window", type=float, default=0.25, metavar="SECONDS",
                        help="length of each others-busy sample (default 0.25)")
    parser.add_argument("--max-rounds", type=int,
                        help="rounds run per case, thread count and mode, discarded ones included "
                        "(default 2 x reps + 2); fewer quiet ones than --reps -> 'not measured'")
    parser.add_argument("--max-wait", type=float, default=30.0, metavar="SECONDS",
                        help="per case, thread count and mode: how long to wait for others to go "
                        "quiet before rounds (default 30)")
    parser.add_argument("--bandwidth-mib", type=int, default=256,
                        help="MiB per tensor of the copy-bandwidth measurement (default 256)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS measurement")
    parser.add_argument("--json", metavar="PATH", help="write raw samples and metadata here")
    parser.add_argument("--plot", metavar="PATH", default="bench_cpu.png",
                        help="PNG of time ratios (default bench_cpu.png; '' to skip)")
    parser.add_argument("--compact", action="store_true",
                        help="one row per case and mode with all implementations side by side")
    parser.add_argument("--from-json", nargs="+", metavar="PATH",
                        help="measure nothing: report saved child files (<--json>.<allocator>.json)")
    parser.add_argument("--distributed", action="store_true",
                        help="run `python -m bench.distributed` (class-sharded logits on gloo ranks) with the "
                        "remaining options instead; see `python -m bench.distributed --help`")
    parser.add_argument("--child-out", metavar="PATH", help=argparse.SUPPRESS)
    return parser


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill unset selection options from --quick or the full matrix."""
    preset = QUICK if args.quick else FULL
    for field, value in preset.items():
        if getattr(args, field) is None:
            setattr(args, field, value)
    if args.reps < 1 or args.warmup < 0:
        raise SystemExit("--reps must be >= 1 and --warmup >= 0")
    if args.max_rounds is None:
        args.max_rounds = 2 * args.reps + 2
    if args.max_rounds < args.reps:
        raise SystemExit("--max-rounds must be >= --reps")
    thread_tokens = _split(args.threads)
    if not thread_tokens or any(token != "default" and not token.isdigit() for token in thread_tokens):
        raise SystemExit(f"--threads takes positive integers and 'default', got {args.threads!r}")
    modes = _split(args.modes)
    if not modes or any(mode not in ("fwd", "fwdbwd") for mode in modes):
        raise SystemExit(f"--modes takes fwd,fwdbwd, got {args.modes!r}")
    if any(value not in ("off", "on") for value in _split(args.weight)):
        raise SystemExit(f"--weight takes off,on, got {args.weight!r}")
    return args


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def thread_counts(text: str, default: int) -> list[int]:
    """``"1,default"`` -> ``[1, default]`` in order, duplicates removed (one entry on a 1-thread box)."""
    counts = [default if token == "default" else int(token) for token in _split(text)]
    if any(count < 1 for count in counts):
        raise SystemExit("--threads must be positive")
    return list(dict.fromkeys(counts))


def parallel_backend() -> str:
    """The 'ATen parallel backend' line of ``torch.__config__.parallel_info()``."""
    import torch

    return next((line.split(":", 1)[1].strip() for line in torch.__config__.parallel_info().splitlines()
                 if line.startswith("ATen parallel backend")), "unknown")


def _patch_series_digest() -> Optional[str]:
    """SHA-256 (first 12 hex digits) of the patch files in series order: which build `patch` was."""
    import hashlib

    series = REPO_ROOT / "patches" / "series"
    if not series.exists():
        return None
    digest = hashlib.sha256()
    for name in series.read_text().split():
        if not name.startswith("#") and (REPO_ROOT / "patches" / name).exists():
            digest.update((REPO_ROOT / "patches" / name).read_bytes())
    return digest.hexdigest()[:12]


def _machine_meta() -> dict:
    import torch

    from bench.memory import hwm_reset_works

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    try:
        thp_sys = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        thp_sys = "unknown"
    works, note = hwm_reset_works()
    return {
        "torch": torch.__version__,
        "torch_git": torch.version.git_version,
        "threads": torch.get_num_threads(),  # torch's default here, before any set_num_threads
        "parallel_backend": parallel_backend(),
        "parallel_info": torch.__config__.parallel_info(),
        "cpu": cpu,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "kernel_thp": thp_sys,
        "memory_method": note,
        "memory_ok": works,
        "loadavg_start": os.getloadavg(),
        "patch_series_sha256": _patch_series_digest(),
    }


def _bandwidths(counts: list[int], args: argparse.Namespace) -> dict[str, dict]:
    from bench.roofline import copy_bandwidth

    return {str(threads): copy_bandwidth(threads, args.bandwidth_mib, busy_limit=args.busy_limit,
                                         window_s=args.busy_window)
            for threads in counts}


def _roofline_bandwidth(start: dict, end: dict) -> Optional[float]:
    """The larger of the quiet start and end medians: the roofline is the best the machine showed."""
    values = [entry["bytes_per_s"] for entry in (start, end) if entry.get("bytes_per_s")]
    return max(values) if values else None


def _child(args: argparse.Namespace) -> int:
    """Measure in this process (allocator already fixed by the environment)."""
    from bench.cases import build_cases
    from bench.impls import ImplSet
    from bench.report import gbps
    from bench.runner import QuietPolicy, run_cases

    meta = _machine_meta()
    counts = thread_counts(args.threads, meta["threads"])
    impl_set = ImplSet(_split(args.impls))
    for note in impl_set.notes:
        print(note, file=sys.stderr, flush=True)
    cases = build_cases(
        _split(args.shapes), _split(args.dtypes), _split(args.targets),
        [float(value) for value in _split(args.smoothing)],
        [value == "on" for value in _split(args.weight)],
    )
    measure_memory = meta["memory_ok"] and not args.no_memory
    if not meta["memory_ok"]:
        print(f"memory not measured: {meta['memory_method']}", file=sys.stderr)
    meta["impl_notes"] = impl_set.notes
    meta["impls"] = impl_set.names
    meta["allocator"] = args.allocator
    meta["reps"], meta["warmup"] = args.reps, args.warmup
    meta["thread_counts"] = counts
    policy = QuietPolicy(busy_limit=args.busy_limit, max_rounds=args.max_rounds, window_s=args.busy_window,
                         max_wait_s=args.max_wait, wait_idle_s=args.wait_idle)
    meta["quiet_policy"] = dataclasses.asdict(policy)
    started = time.perf_counter()
    meta["bandwidth_start"] = _bandwidths(counts, args)
    print("copy bandwidth: " + ", ".join(
        f"{threads} thread(s) {gbps(entry)}" for threads, entry in meta["bandwidth_start"].items()),
        file=sys.stderr, flush=True)

    def save(records: list[dict], complete: bool) -> None:
        meta["seconds"] = time.perf_counter() - started
        meta["loadavg_end"] = os.getloadavg()
        meta["complete"] = complete
        for record in records:
            record["allocator"] = args.allocator
        Path(args.child_out).write_text(json.dumps({"meta": meta, "records": records}))

    records = run_cases(cases, impl_set, counts, _split(args.modes), args.reps, args.warmup,
                        measure_memory, policy, on_case=lambda so_far: save(so_far, complete=False))
    meta["bandwidth_end"] = _bandwidths(counts, args)
    meta["bandwidth_used"] = {
        threads: _roofline_bandwidth(meta["bandwidth_start"][threads], meta["bandwidth_end"][threads])
        for threads in meta["bandwidth_start"]}
    for record in records:
        threads = str(record["threads"])
        record["bandwidth_bytes_per_s"] = meta["bandwidth_used"][threads]
        busy = [entry["busy_max"] for entry in (meta["bandwidth_start"][threads], meta["bandwidth_end"][threads])
                if entry.get("bytes_per_s") and entry["busy_max"] is not None]
        record["bandwidth_busy_max"] = max(busy) if busy else None
    save(records, complete=True)
    return 0


def _child_argv(args: argparse.Namespace, allocator: str, out: str) -> list[str]:
    argv = [sys.executable, "-m", "bench", "--allocator", allocator, "--child-out", out,
            "--impls", args.impls, "--shapes", args.shapes, "--dtypes", args.dtypes,
            "--targets", args.targets, "--smoothing", args.smoothing, "--weight", args.weight,
            "--modes", args.modes, "--reps", str(args.reps), "--warmup", str(args.warmup),
            "--wait-idle", str(args.wait_idle), "--threads", args.threads,
            "--busy-limit", str(args.busy_limit), "--busy-window", str(args.busy_window),
            "--max-rounds", str(args.max_rounds), "--max-wait", str(args.max_wait),
            "--bandwidth-mib", str(args.bandwidth_mib)]
    if args.no_memory:
        argv.append("--no-memory")
    return argv


def _run_allocator(args: argparse.Namespace, allocator: str) -> Optional[dict]:
    """Run one child; its samples go to ``<--json>.<allocator>.json`` (kept, written after
    every case, so an interrupted run can still be reported with ``--from-json``) or to a
    temporary file."""
    env = dict(os.environ)
    env.pop("THP_MEM_ALLOC_ENABLE", None)
    if ALLOCATORS[allocator] is not None:
        env["THP_MEM_ALLOC_ENABLE"] = ALLOCATORS[allocator]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.abspath(f"{args.json}.{allocator}.json") if args.json else os.path.join(scratch, "records.json")
        print(f"== allocator {allocator} (THP_MEM_ALLOC_ENABLE={ALLOCATORS[allocator]}) -> {out} ==",
              file=sys.stderr, flush=True)
        code = subprocess.call(_child_argv(args, allocator, out), env=env, cwd=REPO_ROOT)
        if code != 0 or not os.path.exists(out):
            print(f"allocator {allocator}: child failed with exit code {code}", file=sys.stderr)
            return None
        return json.loads(Path(out).read_text())


def main(argv: Optional[list[str]] = None) -> int:
    """Parse arguments; run as orchestrating parent or as measuring child."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--distributed" in argv:  # ``python -m bench --distributed ...`` is ``python -m bench.distributed ...``
        from bench.distributed import main as distributed_main

        argv.remove("--distributed")
        return distributed_main(argv)
    args = _resolve(_parser().parse_args(argv))
    if args.child_out:
        return _child(args)

    from bench import report, verdict
    from bench.plot import save_plot

    command = "python -m bench " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    started = time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if args.from_json:
        results = {}
        for path in args.from_json:
            result = json.loads(Path(path).read_text())
            results[result["meta"]["allocator"]] = result
        allocators = list(results)
    else:
        allocators = ["default", "thp"] if args.allocator == "both" else [args.allocator]
        results = {name: _run_allocator(args, name) for name in allocators}
    finished = {name: result for name, result in results.items() if result is not None}
    if not finished:
        return 1
    records = [record for result in finished.values() for record in result["records"]]
    elapsed = time.perf_counter() - started

    if args.from_json:
        seconds = sum(result["meta"]["seconds"] for result in finished.values())
        when = f"report of saved samples (children measured for {seconds / 60:.1f} min)"
    else:
        seconds = elapsed
        when = f"wall time {elapsed / 60:.1f} min"
    print(report.header(command, date, when, {name: result["meta"] for name, result in finished.items()}))
    print(report.compact_table(records) if args.compact else report.table(records))
    print()
    print(report.target_summary(records, seconds, verdict.covers_full_matrix(records)))
    mismatches = report.disagreements(records)
    if mismatches:
        print("\nDisagreements with stock (⚠ rows):\n" + mismatches)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"command": command, "date": date, "seconds": seconds,
             "meta": {name: result["meta"] for name, result in finished.items()}, "records": records},
            indent=1))
        print(f"\nraw samples written to {args.json}")
    if args.plot:
        print(save_plot(records, args.plot))
    return 0 if len(finished) == len(allocators) else 1
