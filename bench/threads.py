"""``python -m bench.threads``: does an implementation use the cores it is given?

Why: ``at::parallel_for`` only runs in parallel where the kernel's translation unit
was compiled with OpenMP; compiled without it, a kernel runs on one thread whatever
``torch.get_num_threads()`` says, and every time measured for it stands for a build
nobody ships.  This command times one implementation at 1 thread and at N threads,
alternating the two settings round by round in one process (the machine drifts; a
round's two samples are taken back to back), and reports medians, quartiles, the
ratio of medians and the median of paired ratios, next to the parallel backend and
the share of the CPUs that other processes used before each round.  A round measured
while others used more than ``--busy-limit`` of the CPUs is dropped and repeated, so
the ratio printed is from quiet rounds only, or the command says it has none.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

import torch

from bench import stats
from bench.cases import Case, make_inputs
from bench.impls import ImplSet
from bench.load import collect_quiet_rounds, load_average
from bench.runner import _timed_call


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.threads", description=__doc__.splitlines()[0])
    parser.add_argument("--impl", default="patch", choices=("torch", "compile", "patch"))
    parser.add_argument("--shape", default="4096x32768")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--target", default="prob", choices=("prob", "index"))
    parser.add_argument("--mode", default="fwdbwd", choices=("fwd", "fwdbwd"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="the thread count compared with 1 (default: torch's default here)")
    parser.add_argument("--reps", type=int, default=7, help="quiet rounds to collect")
    parser.add_argument("--busy-limit", type=float, default=0.10,
                        help="drop a round if others used more than this share of the CPUs just before it")
    parser.add_argument("--max-rounds", type=int, default=40, help="give up after this many rounds")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    impls = ImplSet([args.impl])
    for note in impls.notes:
        print(note)
    if args.impl not in impls.names:
        return 1
    fn = impls.for_case()[args.impl]
    case = Case(args.shape, args.dtype, args.target, 0.0, False)
    inputs = make_inputs(case)
    backend = next((line.strip() for line in torch.__config__.parallel_info().splitlines()
                    if line.startswith("ATen parallel backend")), "ATen parallel backend: unknown")
    print(f"{args.impl} {case.label} {args.mode}; {backend}; threads 1 vs {args.threads}; "
          f"load average {load_average():.2f}")
    counts = list(dict.fromkeys([1, args.threads]))  # one entry when --threads is 1
    for _ in range(2):  # warm-up: builds, first-touch of the gradient's pages
        for threads in counts:
            torch.set_num_threads(threads)
            _timed_call(fn, inputs, args.mode, measure_memory=False)

    def at(threads: int):
        def measure() -> float:
            torch.set_num_threads(threads)
            return _timed_call(fn, inputs, args.mode, measure_memory=False)[0]
        return measure

    rounds = collect_quiet_rounds({threads: at(threads) for threads in counts}, args.reps,
                                  args.max_rounds, args.busy_limit, alternate=False)
    samples, dropped, busy_seen = rounds.samples, rounds.dropped, rounds.busy_seen
    torch.set_num_threads(args.threads)
    print(f"rounds kept {len(samples[1])}, dropped {dropped} (others above {args.busy_limit:.0%} of the CPUs); "
          f"others busy in kept rounds: max {max(busy_seen, default=float('nan')):.1%}; "
          f"load average now {load_average():.2f}")
    if len(samples[1]) < args.reps:
        print("not measured: the machine was not quiet for enough rounds")
        return 1
    for threads, values in samples.items():
        q1, q3 = stats.quartiles(values)
        print(f"  {threads} thread(s): median {stats.median(values):8.1f} ms  IQR {q1:.1f}-{q3:.1f}  "
              f"min-max {min(values):.1f}-{max(values):.1f}")
    one, many = samples[1], samples[args.threads]
    print(f"speed-up 1 -> {args.threads} threads: ratio of medians {stats.ratio_of_medians(one, many):.2f}, "
          f"median paired ratio {stats.median_paired_ratio(one, many):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
