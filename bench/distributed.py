"""``python -m bench.distributed``: bytes and time per training step of cross entropy on
class-sharded logits (vocabulary parallelism), for W = 2, 4, ... gloo ranks on this machine.

Compared, in one group of W processes per world size, alternating round by round:
``patch`` (the series inside ``loss_parallel()``), ``stock`` (stock ``loss_parallel``,
class indices only) and ``gather`` (all-gather the logits, then the fused op on the
full tensor).  Bytes are counted per rank, per forward and per backward, by collective
kind (see :mod:`bench.comm_count` for the convention); times are the max over ranks
of each step, summarised as median and quartiles, with ratios of medians against
``stock`` and ``gather`` on the same kind of target.  The issue's target: at most
16 bytes per position per rank per step, independent of C; faster than both at 4
ranks, 4096 positions, 131072 classes, float32.

The parent only launches ranks (``python -m bench.distributed --rank R ...``, see
:mod:`bench.dist_rank`) and reports; it samples the load before and after.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

from bench import stats
from bench.load import busy_fraction, load_average

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
BYTES_PER_POSITION_TARGET = 16


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    from bench.dist_rank import DEFAULT_VARIANTS

    parser = argparse.ArgumentParser(prog="python -m bench.distributed", description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", default="2,4", help="comma list of world sizes (default 2,4)")
    parser.add_argument("--positions", type=int, default=4096, help="N (default 4096)")
    parser.add_argument("--classes", type=int, default=131072, help="C (default 131072)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help="comma list of impl/target[/ls=S], impl in patch,stock,gather")
    parser.add_argument("--reduction", default="mean", choices=("mean", "sum", "none"))
    parser.add_argument("--reps", type=int, default=5, help="timed rounds kept (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (default 1)")
    parser.add_argument("--busy-limit", type=float, default=0.10,
                        help="drop a round when others used more than this share of the CPUs before it")
    parser.add_argument("--keep-busy", action="store_true", help="keep busy rounds (the verdict is withheld)")
    parser.add_argument("--max-rounds", type=int, default=40)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per rank (default max(1, cores // W))")
    parser.add_argument("--memory-fraction", type=float, default=0.8,
                        help="share of MemAvailable the W ranks may use (memory guard)")
    parser.add_argument("--probe-classes", type=int, default=0,
                        help="C of the memory guard's probe (default C // 8; keep N x C/W x 4 bytes above 32 MiB)")
    parser.add_argument("--no-guard", action="store_true", help="skip the memory guard")
    parser.add_argument("--check-max-elements", type=int, default=1 << 22,
                        help="compare losses with the float64 reference up to N*C elements")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per world size")
    parser.add_argument("--json", metavar="PATH", help="write the merged per-rank results here")
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--selftest", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- launcher

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def threads_per_rank(world: int, requested: int = 0) -> int:
    """``requested``, or the cores shared out: max(1, cores // W)."""
    return requested if requested > 0 else max(1, (os.cpu_count() or 1) // world)


def launch(world: int, rank_argv: List[str], threads: int, timeout: float) -> Dict[int, Any]:
    """Start W ranks of ``python -m bench.distributed <rank_argv> --rank R --world W --out DIR``.

    Returns each rank's JSON; raises with the logs' tails if a rank fails or times out.
    """
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world),
                   OMP_NUM_THREADS=str(threads),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
        procs = []
        for rank in range(world):
            log = open(pathlib.Path(tmp) / f"rank{rank}.log", "wb")
            argv = [sys.executable, "-m", "bench.distributed", *rank_argv, "--rank", str(rank), "--world", str(world),
                    "--out", tmp, "--threads", str(threads), "--timeout", str(timeout)]
            procs.append((subprocess.Popen(argv, cwd=REPO_ROOT, env=dict(env, RANK=str(rank)), stdout=log,
                                           stderr=subprocess.STDOUT), log))
        problems = _wait_all([proc for proc, _ in procs], timeout)
        for rank, (proc, log) in enumerate(procs):
            log.close()
            if proc.returncode != 0:
                tail = (pathlib.Path(tmp) / f"rank{rank}.log").read_text(errors="replace")[-3000:]
                problems.append(f"rank {rank}: exit code {proc.returncode}\n{tail}")
        results = {}
        for rank in range(world):
            path = pathlib.Path(tmp) / f"rank{rank}.json"
            if path.exists():
                results[rank] = json.loads(path.read_text())
        if problems:
            raise RuntimeError(f"world {world}: " + "\n".join(problems) + f"\npartial results: {sorted(results)}")
        return results


def _wait_all(procs: List[subprocess.Popen], timeout: float) -> List[str]:
    """Wait for every rank; once one fails or the time is up, kill the rest (they would wait in a
    collective until gloo's timeout)."""
    deadline = time.monotonic() + timeout
    while any(proc.poll() is None for proc in procs):
        failed = any(proc.poll() not in (None, 0) for proc in procs)
        if failed or time.monotonic() > deadline:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            return [] if failed else [f"killed after {timeout:.0f} s"]
        time.sleep(0.2)
    return []


def _rank_argv(args: argparse.Namespace) -> List[str]:
    argv = ["--positions", str(args.positions), "--classes", str(args.classes), "--variants", args.variants,
            "--reduction", args.reduction, "--reps", str(args.reps), "--warmup", str(args.warmup),
            "--busy-limit", str(args.busy_limit), "--max-rounds", str(args.max_rounds),
            "--memory-fraction", str(args.memory_fraction), "--probe-classes", str(args.probe_classes),
            "--check-max-elements", str(args.check_max_elements), "--seed", str(args.seed)]
    return argv + ["--keep-busy"] * args.keep_busy + ["--no-guard"] * args.no_guard


def run_world(args: argparse.Namespace, world: int) -> Dict[str, Any]:
    """One group of ``world`` ranks, with the load sampled before and after."""
    threads = threads_per_rank(world, args.threads)
    before = {"busy": busy_fraction(1.0), "load": load_average()}
    started = time.perf_counter()
    ranks = launch(world, _rank_argv(args), threads, args.timeout)
    after = {"busy": busy_fraction(1.0), "load": load_average()}
    return {"world": world, "threads": threads, "before": before, "after": after,
            "seconds": time.perf_counter() - started, "ranks": ranks}


# --------------------------------------------------------------------------- merging and report

def merge_shape(ranks: Dict[int, Any], index: int) -> Dict[str, Dict[str, Any]]:
    """Per variant of shape ``index``: bytes (max over ranks), step times (max over ranks per round)."""
    shapes = [ranks[r]["shapes"][index] for r in sorted(ranks)]
    merged: Dict[str, Dict[str, Any]] = {}
    for label, first in shapes[0]["variants"].items():
        per_rank = [shape["variants"][label] for shape in shapes]
        times = [max(rounds) for rounds in zip(*(shape["samples"][label] for shape in shapes))]
        merged[label] = {
            **{key: max(v[key] for v in per_rank) for key in ("fwd_payload", "bwd_payload", "fwd_wire", "bwd_wire")},
            "bytes_equal_on_ranks": len({(v["fwd_payload"], v["bwd_payload"]) for v in per_rank}) == 1,
            "collectives": first["collectives"],
            "records": first["records"],
            "dtensor_ops": first["dtensor_ops"],
            "peak_bytes": max((v["peak_bytes"] or 0) for v in per_rank) if first["peak_bytes"] is not None else None,
            "peak_rss_bytes": (max((v["peak_rss_bytes"] or 0) for v in per_rank)
                               if first["peak_rss_bytes"] is not None else None),
            "loss": first["loss"],
            "losses_equal_on_ranks": len({v["loss"] for v in per_rank}) == 1,
            "reference_loss": first.get("reference_loss"),
            "times": times,
        }
    return merged


def _relative(value: float, reference: float) -> float:
    return abs(value - reference) / max(abs(reference), 1e-30)


def _mib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def _ratio(merged: Dict[str, Dict[str, Any]], label: str, other_impl: str) -> str:
    kind = label.split("/", 1)[1]
    other = merged.get(f"{other_impl}/{kind}")
    if other is None or other is merged[label] or not other["times"] or not merged[label]["times"]:
        return "-"
    return f"{stats.ratio_of_medians(merged[label]['times'], other['times']):.2f}"


def _kinds(collectives: Dict[str, Dict[str, Dict[str, float]]], phase: str) -> str:
    parts = [f"{int(v['count'])}x {kind}" for kind, v in sorted(collectives.get(phase, {}).items())]
    return ", ".join(parts) or "none"


def table(merged: Dict[str, Dict[str, Any]], world: int, positions: int, classes: int, local: int) -> List[str]:
    lines = ["| impl/target | W | N | C | C/rank | fwd bytes/rank | bwd bytes/rank | bytes/position "
             f"(<= {BYTES_PER_POSITION_TARGET}?) | wire est. fwd+bwd | step ms median [q1-q3] | vs stock | vs gather "
             "| peak RSS MiB/rank (+ during step) | loss (rel. err vs float64 reference, or vs the others) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, m in merged.items():
        per_position = (m["fwd_payload"] + m["bwd_payload"]) / positions
        verdict = "yes" if per_position <= BYTES_PER_POSITION_TARGET else "no"
        if m["times"]:
            q1, q3 = stats.quartiles(m["times"])
            timing = f"{stats.median(m['times']) * 1e3:.1f} [{q1 * 1e3:.1f}-{q3 * 1e3:.1f}]"
        else:
            timing = "not timed"
        loss = f"{m['loss']:.6g}"
        if m["reference_loss"] is not None:
            loss += f" ({_relative(m['loss'], m['reference_loss']):.1e})"
        else:  # too large for the float64 reference: agreement with the other implementations instead
            kind = label.split("/", 1)[1]
            others = {impl: merged[f"{impl}/{kind}"]["loss"] for impl in ("gather", "stock")
                      if f"{impl}/{kind}" in merged and f"{impl}/{kind}" != label}
            loss += "".join(f" (vs {impl} {_relative(m['loss'], value):.1e})" for impl, value in others.items())
        flags = "" if m["bytes_equal_on_ranks"] and m["losses_equal_on_ranks"] else " ⚠ ranks differ"
        lines.append(
            f"| {label}{flags} | {world} | {positions} | {classes} | {local} | {m['fwd_payload']:,.0f} | "
            f"{m['bwd_payload']:,.0f} | {per_position:.1f} ({verdict}) | {m['fwd_wire'] + m['bwd_wire']:,.0f} | "
            f"{timing} | {_ratio(merged, label, 'stock')} | {_ratio(merged, label, 'gather')} | "
            f"{_mib(m['peak_rss_bytes'])} (+{_mib(m['peak_bytes'])}) | {loss} |")
    return lines


def details(merged: Dict[str, Dict[str, Any]]) -> List[str]:
    """Collectives by kind and phase, and the aten ops each variant ran on DTensors."""
    lines = []
    for label, m in merged.items():
        ops = ", ".join(sorted(op for op in m["dtensor_ops"] if "cross_entropy" in op or "nll" in op
                               or "log_softmax" in op)) or "none"
        lines.append(f"- `{label}`: forward {_kinds(m['collectives'], 'forward')}; backward "
                     f"{_kinds(m['collectives'], 'backward')}; loss ops on DTensors: {ops}")
    return lines


def verdicts(merged: Dict[str, Dict[str, Any]]) -> List[str]:
    """For each ``patch`` row: faster than both alternatives on the same kind of target?"""
    lines = []
    for label in merged:
        if not label.startswith("patch/"):
            continue
        ratios = {other: _ratio(merged, label, other) for other in ("stock", "gather")}
        known = {k: float(v) for k, v in ratios.items() if v != "-"}
        if known:
            faster = all(value < 1 for value in known.values())
            lines.append(f"- time verdict `{label}`: {'faster' if faster else 'NOT faster'} than "
                         + " and ".join(f"{k} ({v:.2f}x)" for k, v in known.items()))
    return lines


def report(args: argparse.Namespace, runs: List[Dict[str, Any]], command: str) -> str:
    out = [f"Command: `{command}`  ",
           f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; cores {os.cpu_count()}; "
           f"reduction {args.reduction}; float32; gloo on localhost",
           "",
           "Bytes: per rank, the payload it contributes (all-reduce: the tensor's nbytes; all-gather: the local "
           "shard's nbytes), max over ranks; wire est.: ring algorithm (all-reduce 2(W-1)/W x nbytes, all-gather "
           "(W-1) x shard nbytes). bytes/position = (fwd + bwd payload) / N. Step time: forward + backward, max "
           "over ranks of each round (barrier before each step), variants alternating; ratios are ratios of "
           "medians against the same kind of target.", ""]
    quiet = True
    for run in runs:
        ranks = run["ranks"]
        first = ranks[0]
        plan = first.get("plan")
        rank_busy = [b for shape in first["shapes"] for b in shape["busy_seen"]]
        dropped = sum(shape["dropped"] for shape in first["shapes"])
        noisy = max([run["before"]["busy"], run["after"]["busy"], *rank_busy]) > args.busy_limit
        quiet &= not noisy
        out.append(f"### W = {run['world']}: {run['threads']} torch thread(s) per rank ({os.cpu_count()} cores); "
                   f"{run['seconds']:.0f} s")
        out.append(f"Load average {run['before']['load']:.2f} before, {run['after']['load']:.2f} after; others busy "
                   f"{run['before']['busy']:.0%} before, {run['after']['busy']:.0%} after, max "
                   f"{max(rank_busy, default=float('nan')):.0%} before a kept round; "
                   f"rounds dropped as busy: {dropped}.")
        if run["world"] * run["threads"] > (os.cpu_count() or 1):
            out.append(f"Note: {run['world']} ranks x {run['threads']} thread(s) exceed the {os.cpu_count()} cores: "
                       "ranks time-share the cores, and a step's time includes waiting for other ranks' turns.")
        if plan is not None:
            peaks = ", ".join(f"{k} {_mib(v)} MiB" for k, v in plan["predicted_peak_bytes"].items())
            out.append(f"Memory guard (probe at C={plan['probe_classes']}): predicted peak per rank during a step "
                       f"at C={args.classes}: {peaks} (+{_mib(plan['own_bytes'])} MiB own data); budget "
                       f"{_mib(plan['budget_bytes'])} MiB for {run['world']} ranks.")
            if plan["fallback_classes"]:
                skipped = [k for k, ok in plan["fits"].items() if not ok]
                out.append(f"**Does not fit at C={args.classes}: {', '.join(skipped)}; every variant also measured at "
                           f"C={plan['fallback_classes']}, the largest power of two that fits.**")
        out.append("")
        for index, shape in enumerate(first["shapes"]):
            merged = merge_shape(ranks, index)
            kept = len(next(iter(shape["samples"].values()), []))
            out.append(f"C = {shape['classes']}: {kept} timed round(s) kept of {args.reps} wanted, after "
                       f"{args.warmup} warm-up round(s).")
            out += table(merged, run["world"], shape["positions"], shape["classes"], shape["local_classes"])
            out.append("")
            out += details(merged)
            if not noisy and kept >= args.reps:
                out += verdicts(merged)
            out.append("")
    if not quiet:
        out.append(f"**No time verdict: other processes used more than {args.busy_limit:.0%} of the CPUs "
                   "(bytes are still valid).**")
    return "\n".join(out)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.rank is not None:
        from bench import dist_rank

        (dist_rank.selftest_main if args.selftest else dist_rank.rank_main)(args)
        return 0
    from bench.dist_rank import Variant

    try:
        [Variant.parse(text) for text in args.variants.split(",") if text]
    except ValueError as error:
        raise SystemExit(f"--variants: {error}")
    command = "python -m bench.distributed " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                                  else sys.argv[1:]))
    runs = [run_world(args, int(w)) for w in args.worlds.split(",") if w]
    print(report(args, runs, command))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"command": command, "runs": runs}, indent=1))
        print(f"\nper-rank results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
