"""``python -m bench.per_sample_grad``: per-sample gradients, the series against stock.

Why: under ``torch.func.vmap(torch.func.grad(...))`` the fused op runs its composite
form (functorch decomposes it; the backward's graph is recorded, so the differentiable
composite backward runs).  The fused kernels do not help there, so the question is
only whether the series makes per-sample gradients slower than stock's own
decomposition.  One process times both alternately, round by round, drops rounds
taken while other processes used more than ``--busy-limit`` of the CPUs, checks the
two agree, and prints medians, quartiles and the ratios (patch / stock: above 1 means
the series is slower).
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from bench import stats
from bench.load import collect_quiet_rounds, load_average


def per_sample_grads(loss_fn: Callable) -> Callable:
    """vmap over samples of grad of the loss of one (C,) logit row (and its target)."""
    def one(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return loss_fn(x.unsqueeze(0), t.unsqueeze(0), label_smoothing=0.1)

    return torch.func.vmap(torch.func.grad(one))


def _timed_ms(fn: Callable, x: torch.Tensor, t: torch.Tensor) -> float:
    start = time.perf_counter()
    fn(x, t)
    return (time.perf_counter() - start) * 1e3


def make_problem(samples: int, classes: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples, classes, generator=generator)
    if kind == "index":
        return x, torch.randint(0, classes, (samples,), generator=generator)
    return x, torch.softmax(torch.randn(samples, classes, generator=generator), 1)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.per_sample_grad", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=7, help="quiet rounds to collect")
    parser.add_argument("--busy-limit", type=float, default=0.10)
    parser.add_argument("--max-rounds", type=int, default=40)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from patches import oot

    oot.load()
    print(f"per-sample gradients, {args.samples} samples x {args.classes} classes, float32, "
          f"label_smoothing 0.1; {torch.get_num_threads()} threads; load average {load_average():.2f}")
    print(f"{'target':8} {'stock ms':>10} {'patch ms':>10} {'ratio':>7} {'paired':>7}  rounds dropped")
    verdicts = []
    for kind in ("index", "prob"):
        x, t = make_problem(args.samples, args.classes, kind)
        fns: Dict[str, Callable] = {"stock": per_sample_grads(F.cross_entropy),
                                    "patch": per_sample_grads(oot.patched_cross_entropy)}
        torch.testing.assert_close(fns["patch"](x, t), fns["stock"](x, t), rtol=1e-4, atol=1e-6)
        kept = collect_quiet_rounds(
            {name: functools.partial(_timed_ms, fn, x, t) for name, fn in fns.items()},
            args.reps, args.max_rounds, args.busy_limit)
        samples, dropped = kept.samples, kept.dropped
        if len(samples["stock"]) < args.reps:
            print(f"{kind:8} not measured: only {len(samples['stock'])} quiet rounds "
                  f"in {len(samples['stock']) + dropped}")
            continue
        ratio = stats.ratio_of_medians(samples["patch"], samples["stock"])
        paired = stats.median_paired_ratio(samples["patch"], samples["stock"])
        print(f"{kind:8} {stats.median(samples['stock']):10.1f} {stats.median(samples['patch']):10.1f} "
              f"{ratio:7.2f} {paired:7.2f}  {len(samples['stock']):6} {dropped:7}")
        for name in ("stock", "patch"):
            low, high = stats.quartiles(samples[name])
            print(f"    {name} IQR {low:.1f}-{high:.1f}  min-max {min(samples[name]):.1f}-{max(samples[name]):.1f}")
        verdicts.append(ratio)
    return 0 if verdicts else 1


if __name__ == "__main__":
    sys.exit(main())
