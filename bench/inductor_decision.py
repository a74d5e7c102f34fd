"""``python -m bench.inductor_decision``: should Inductor decompose ``_fused_cross_entropy``?

Why: once the series lists ``aten._fused_cross_entropy`` (and its backward) in
``core_aten_decompositions()``, Inductor decomposes them by default and generates its
own loops; the alternative is to exclude them from Inductor's table and call the
fused kernels (``make_fallback``), as upstream does for ``_fused_rms_norm``.  Which
one the series ships is decided by this measurement, not by taste.

One process compiles the patched ``F.cross_entropy`` (``patches.oot``) twice per case,
with Inductor's decomposition table with and without the two ops, checks that each
compiled function really does what its name says (the fused op is absent from, or
called by, the generated code) and that both match the eager fused kernels, then
times forward+backward of the two alternately, round by round, and prints medians,
quartiles, the ratio of medians and the median of paired ratios (decomposed /
fallback: above 1 means the fused kernels are faster).  Like ``bench.threads``, a
round taken while other processes used more than ``--busy-limit`` of the CPUs is
dropped; with ``--keep-busy`` it is kept, and then no verdict is printed.
"""
from __future__ import annotations

import argparse
import functools
import re
import sys
from typing import Callable, Dict, List, Optional

import torch

from bench import stats
from bench.cases import Case, make_inputs
from bench.load import collect_quiet_rounds, load_average
from bench.runner import _call, _timed_call

VARIANTS = ("decomposed", "fallback")
_FUSED_CALL = re.compile(r"torch\.ops\.aten\._fused_cross_entropy(_backward)?\.default\(")
DEFAULT_CASES = ("4096x32768:index", "4096x32768:prob", "32768x1024:index", "32768x1024:prob")


def _fused_ops() -> List[torch._ops.OpOverload]:
    aten = torch.ops.aten
    return [aten._fused_cross_entropy.default, aten._fused_cross_entropy_backward.default]


def _tables() -> Dict[str, dict]:
    """Inductor's decomposition table with the fused ops' decompositions, and without."""
    from torch._decomp import decomposition_table
    from torch._inductor.decomposition import select_decomp_table

    base = {op: fn for op, fn in select_decomp_table().items() if op not in _fused_ops()}
    missing = [str(op) for op in _fused_ops() if op not in decomposition_table]
    if missing:
        raise RuntimeError(f"no decomposition registered for {missing}: the series' decompositions "
                           "were not applied (patches.python_hunks)")
    return {"decomposed": {**base, **{op: decomposition_table[op] for op in _fused_ops()}},
            "fallback": base}


def _ensure_fallback_lowerings() -> None:
    """Lowerings that call the fused kernels, for graphs in which they are not decomposed."""
    from torch._inductor import lowering

    for op in _fused_ops():
        if op not in lowering.lowerings:
            # The table of this process may list the op; the "fallback" variant does not use it.
            lowering.make_fallback(op, warn=False, get_decomp_fn=dict)


def _compiled(variant: str, table: dict) -> Callable[..., torch.Tensor]:
    """``patched_cross_entropy`` under Inductor with the given decomposition table.

    Each variant gets its own Python frame, so Dynamo caches the two separately.
    """
    from torch._inductor.compile_fx import compile_fx
    from patches.oot import patched_cross_entropy

    def backend(gm, example_inputs):
        return compile_fx(gm, example_inputs, decompositions=table)

    if variant == "decomposed":
        def loss(input, target, weight=None, label_smoothing=0.0):
            return patched_cross_entropy(input, target, weight=weight, label_smoothing=label_smoothing)
    else:
        def loss(input, target, weight=None, label_smoothing=0.0):  # noqa: F811 (a second frame)
            return patched_cross_entropy(input, target, weight=weight, label_smoothing=label_smoothing)
    return torch.compile(loss, backend=backend, dynamic=False)


def _check(variant: str, fn, inputs, expected_loss, expected_grad) -> None:
    """Compile, and assert the variant's generated code and its values."""
    from torch._inductor.utils import run_and_get_code

    def step():
        inputs.logits.grad = None
        loss = _call(fn, inputs)
        loss.backward()
        return loss

    loss, code = run_and_get_code(step)
    # Comments of the generated code name the ATen ops a kernel came from; only a
    # call of the operator counts.
    calls_fused = any(_FUSED_CALL.search(source) for source in code)
    if calls_fused != (variant == "fallback"):
        raise AssertionError(f"{variant}: the generated code {'calls' if calls_fused else 'does not call'} "
                             "the fused kernels")
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(inputs.logits.grad, expected_grad, rtol=1e-4, atol=1e-7)
    inputs.logits.grad = None


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.inductor_decision", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                        help="comma-separated SHAPE:TARGET (float32, reduction mean)")
    parser.add_argument("--reps", type=int, default=5, help="rounds to collect per case (>= 5 for a verdict)")
    parser.add_argument("--busy-limit", type=float, default=0.10,
                        help="drop a round if others used more than this share of the CPUs just before it")
    parser.add_argument("--max-rounds", type=int, default=30, help="give up on a case after this many rounds")
    parser.add_argument("--keep-busy", action="store_true",
                        help="keep rounds taken on a busy machine (a table, but no verdict)")
    return parser.parse_args(argv)


def _timed_variant(fn: Callable, inputs) -> float:
    return _timed_call(fn, inputs, "fwdbwd", measure_memory=False)[0]


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from patches import oot

    oot.load()
    _ensure_fallback_lowerings()
    tables = _tables()
    print(f"torch {torch.__version__}; {torch.get_num_threads()} threads; load average {load_average():.2f}")
    print(f"{'case':<26} {'decomposed ms':>14} {'fallback ms':>12} {'ratio':>6} {'paired':>7} "
          f"{'rounds':>6} {'dropped':>7} {'others busy':>11}")
    ratios: List[float] = []
    quiet = True
    for spec in args.cases.split(","):
        shape, target = spec.split(":")
        case = Case(shape, "float32", target, 0.0, False)
        inputs = make_inputs(case)
        torch._dynamo.reset()
        from patches.oot import patched_cross_entropy

        expected_loss = _call(patched_cross_entropy, inputs)
        expected_loss.backward()
        expected_grad = inputs.logits.grad
        inputs.logits.grad = None
        fns = {variant: _compiled(variant, tables[variant]) for variant in VARIANTS}
        for variant, fn in fns.items():
            _check(variant, fn, inputs, expected_loss, expected_grad)
            _timed_call(fn, inputs, "fwdbwd", measure_memory=False)  # warm-up
        del expected_grad
        # The order flips every round, so that drift does not favour one variant.
        rounds = collect_quiet_rounds(
            {variant: functools.partial(_timed_variant, fns[variant], inputs) for variant in VARIANTS},
            args.reps, args.max_rounds, args.busy_limit, keep_busy=args.keep_busy)
        samples, dropped, busy_seen = rounds.samples, rounds.dropped, rounds.busy_seen
        worst = max(busy_seen, default=float("nan"))
        quiet = quiet and len(samples["fallback"]) >= args.reps and worst <= args.busy_limit
        if not samples["fallback"]:
            print(f"{case.label:<26} not measured: the machine was not quiet for any round")
            continue
        dec, fb = samples["decomposed"], samples["fallback"]
        ratio = stats.ratio_of_medians(dec, fb)
        ratios.append(ratio)
        print(f"{case.label:<26} {stats.median(dec):14.1f} {stats.median(fb):12.1f} {ratio:6.2f} "
              f"{stats.median_paired_ratio(dec, fb):7.2f} {len(fb):6d} {dropped:7d} {worst:11.1%}")
        for variant in VARIANTS:
            q1, q3 = stats.quartiles(samples[variant])
            print(f"    {variant:<10} IQR {q1:.1f}-{q3:.1f}  min-max {min(samples[variant]):.1f}-"
                  f"{max(samples[variant]):.1f}")
        del fns, inputs
    print(f"load average now {load_average():.2f}")
    if not quiet or args.reps < 5:
        print(f"no verdict: some rounds ran while others used more than {args.busy_limit:.0%} of the CPUs, "
              "or fewer than 5 rounds per case; rerun on a quiet machine")
        return 1
    if all(r > 1 for r in ratios):
        print("verdict: fallback (the fused kernels are faster in every case)")
    elif all(r < 1 for r in ratios):
        print("verdict: decompose (Inductor's code is faster in every case)")
    else:
        print("verdict: mixed (neither is faster in every case)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
