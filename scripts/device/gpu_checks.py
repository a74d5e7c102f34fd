"""One prepared run of every GPU check of the CUDA kernels, within one device lease.

``python3 scripts/device/gpu_checks.py --out DIR`` on a machine with a CUDA GPU:

1. environment: GPU, driver, torch, nvcc;
2. builds the out-of-tree extension from the series (``python -m patches build``);
3. ``python -m conformance --impl patch --device cuda`` (its tests under pytest-xdist when
   installed, see conformance_command);
4. large-index cases (more than 2^31 elements: rows and K-dim layouts) against a
   float64 reference computed chunk by chunk, plus run-to-run bitwise determinism
   and ``torch.use_deterministic_algorithms(True)`` on the K-dim class-index path;
5. the benchmark (``cuda_bench``): stock eager, ``torch.compile``, ``patch`` and
   Liger-Kernel (class indices, 2-D shapes, when importable), alternating, timed with
   CUDA events, against a measured device-to-device copy.

Each step runs in its own process with a time limit taken from one overall budget,
so a failing or slow step still leaves the others' results.  ``--part check`` runs
steps 1-5 and ``--part bench`` steps 1-2 and 6 (the build is cached on a machine
that is still warm), for two device calls of under 10 minutes each.  Everything lands in
DIR: ``summary.md`` and ``results.json`` (the benchmark table and every step's
status) and one log per step (at most 8 files, as the device tool returns).

``--dry-run`` runs the same steps on the CPU with small shapes and a lowered
"large index" threshold, so the script's logic can be exercised without a GPU; its
numbers mean nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_step(name: str, command: list[str], out_dir: Path, timeout_s: float, env: dict | None = None) -> dict:
    """Run one step as a child process, its output teed to out_dir/<name>.log."""
    log_path = out_dir / f"{name}.log"
    start = time.monotonic()
    print(f"== {name}: {' '.join(command)} (limit {timeout_s:.0f} s)", flush=True)
    if timeout_s < 5:
        log_path.write_text("skipped: no time left in the budget\n")
        return {"step": name, "status": "skipped (budget)", "seconds": 0.0, "log": log_path.name}
    with open(log_path, "w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env={**os.environ, **(env or {})})
        last_lines: list[str] = []
        try:
            deadline = start + timeout_s
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                sys.stdout.write(line)
                last_lines = (last_lines + [line.rstrip()])[-5:]
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(command, timeout_s)
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            status = f"timed out after {timeout_s:.0f} s"
            log.write(f"\n{status}\n")
    seconds = time.monotonic() - start
    print(f"== {name}: {status} in {seconds:.1f} s", flush=True)
    return {"step": name, "status": status, "seconds": round(seconds, 1), "log": log_path.name,
            "last_lines": last_lines}


def conformance_command(python: str, impl: str, device: str, families: list[str], workers: int,
                        extra: list[str]) -> list[str]:
    """``python -m conformance``, or the same tests under pytest-xdist when it is installed.

    The suite is thousands of small cases (gradcheck, gradgradcheck, forward AD), bound by
    Python overhead rather than by the device: on a 16-core machine xdist workers cut its
    time several-fold, which the device lease needs.  The conformance plugin is loaded with
    ``-p`` so that every worker gets its options, and it prints the same per-family table.
    """
    if workers > 1 and importlib.util.find_spec("xdist") is not None:
        tests = REPO_ROOT / "conformance" / "tests"
        files = [tests / f"test_{family}.py" for family in families] or sorted(tests.glob("test_*.py"))
        return [python, "-m", "pytest", "-p", "conformance.plugin", "-p", "no:cacheprovider",
                "-o", "python_files=test_*.py", "--impl", impl, "--device", device, "-n", str(workers),
                "-q", "-rfE", *extra, *map(str, files)]
    return [python, "-m", "conformance", "--impl", impl, "--device", device, "-q",
            *[arg for family in families for arg in ("--family", family)], *extra]


def environment() -> dict:
    info: dict = {"python": platform.python_version(), "machine": platform.machine()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = props.name
            info["sm_count"] = props.multi_processor_count
            info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
            info["capability"] = f"{props.major}.{props.minor}"
    except Exception as error:  # report, never hide
        info["torch_error"] = repr(error)
    try:
        sys.path.insert(0, str(REPO_ROOT))
        from patches import build

        # False means the extension gets no CUDA kernels and --impl patch --device cuda
        # would grade stock torch: the large-index step fails loudly in that case.
        info["patch_build_with_cuda"] = build.cuda_wanted()
    except Exception as error:
        info["patch_build_with_cuda"] = f"unknown ({error.__class__.__name__}: {error})"
    for tool, args in (("nvcc", ["--version"]), ("nvidia-smi", ["--query-gpu=name,driver_version,clocks.max.sm",
                                                               "--format=csv,noheader"])):
        try:
            out = subprocess.run([tool, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 timeout=30).stdout.strip().splitlines()
            info[tool] = out[-1] if out else ""
        except Exception as error:
            info[tool] = f"unavailable ({error.__class__.__name__})"
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_out")),
                        help="results folder (default $OUT)")
    parser.add_argument("--budget-s", type=float, default=540.0,
                        help="overall time for all steps (default 540 s, inside the device tool's 600 s)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, small shapes: exercise the logic only")
    parser.add_argument("--part", choices=["all", "check", "bench"], default="all",
                        help="check: build, conformance, large index; bench: build (cached when the "
                             "machine is still warm) and the benchmark; all: both in one run")
    parser.add_argument("--skip", action="append", default=[],
                        choices=["build", "conformance_patch", "conformance_torch", "large_index", "bench"])
    parser.add_argument("--conformance-args", default="",
                        help="extra arguments for the conformance run (pytest's, when xdist is used)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    device = "cpu" if args.dry_run else "cuda"
    python = sys.executable
    env = {"PYTHONUNBUFFERED": "1", "MAX_JOBS": str(os.cpu_count() or 4)}
    if not args.dry_run:
        env["TORCH_CUDA_ARCH_LIST"] = os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0")

    def left() -> float:
        return args.budget_s - (time.monotonic() - started)

    if args.part == "check":
        args.skip.append("bench")
    elif args.part == "bench":
        args.skip += ["conformance_patch", "conformance_torch", "large_index"]
    info = environment()
    print(json.dumps(info, indent=1), flush=True)
    steps: list[dict] = []
    # Most valuable first: a later step only gets what the earlier ones left.
    bench_reserve = 0.0 if "bench" in args.skip else 180.0
    if "build" not in args.skip:
        steps.append(run_step("build", [python, "-m", "patches", "build"], out_dir,
                              min(300.0, left() - 30), env))
    workers = min(16, os.cpu_count() or 1)

    def conformance(impl: str, limit: float) -> None:
        name = f"conformance_{impl}"
        if name in args.skip:
            return
        families = ["forward"] if args.dry_run else []
        command = conformance_command(python, impl, device, families, workers, args.conformance_args.split())
        steps.append(run_step(name, command, out_dir, limit, env))

    conformance("patch", min(240.0, left() - bench_reserve - 60))
    large_json = out_dir / "large_index.json"
    if "large_index" not in args.skip:
        command = [python, str(REPO_ROOT / "scripts/device/large_index.py"), "--json", str(large_json)]
        if args.dry_run:
            command.append("--dry-run")
        steps.append(run_step("large_index", command, out_dir, min(120.0, left() - bench_reserve - 10), env))
    conformance("torch", min(240.0, left() - bench_reserve - 10))
    bench_json = out_dir / "bench.json"
    if "bench" not in args.skip:
        command = [python, str(REPO_ROOT / "scripts/device/cuda_bench.py"), "--json", str(bench_json),
                   "--budget-s", str(max(0.0, left() - 40))]
        if args.dry_run:
            command.append("--dry-run")
        steps.append(run_step("bench", command, out_dir, left() - 10, env))

    results = {"environment": info, "dry_run": args.dry_run, "steps": steps,
               "total_seconds": round(time.monotonic() - started, 1)}
    for key, path in (("large_index", large_json), ("bench", bench_json)):
        if path.exists():
            results[key] = json.loads(path.read_text())
            path.unlink()  # folded into results.json: the device tool returns at most 8 files
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    summary = render_summary(results)
    (out_dir / "summary.md").write_text(summary)
    print(summary)
    return 0 if all(step["status"] == "ok" for step in steps) else 1


def render_summary(results: dict) -> str:
    lines = ["# GPU checks of the fused cross entropy" + (" (DRY RUN on CPU: numbers mean nothing)"
                                                          if results["dry_run"] else ""), ""]
    env = results["environment"]
    lines.append("Environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    lines += ["", "| step | status | seconds |", "| --- | --- | --- |"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} |" for s in results["steps"]]
    large = results.get("large_index")
    if large:
        lines += ["", "## Large index (> 2^31 elements) and determinism", ""]
        lines += [f"- {case['name']}: {case['status']} ({case.get('detail', '')})" for case in large["cases"]]
    bench = results.get("bench")
    if bench:
        lines += ["", "## Benchmark", "", bench.get("table", "")]
        lines += [f"- {note}" for note in bench.get("notes", [])]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
