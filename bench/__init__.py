"""Benchmark of ``F.cross_entropy`` implementations on CPU: ``python -m bench``.

Why a package of its own: the numbers in ``docs/benchmarks.md`` decide whether the
fused kernels are worth proposing upstream, and this machine's timings swing by 2x
between runs.  So every implementation is measured in the same process, alternating
round by round (``compile`` round 1, ``patch`` round 1, then the other order in round
2, ...), every case at 1 thread and at torch's default thread count, and ratios are
reported both as a ratio of medians and as the median of per-round paired ratios.
Only quiet rounds count: a round is discarded when other processes used more than
10% of the CPUs just before or just after it, and a case without enough quiet rounds
is reported as ``not measured``, never with a verdict.  Each allocator setting runs
in its own child process because ``THP_MEM_ALLOC_ENABLE`` is read once, when torch
first allocates.

Modules: ``cases`` (the case matrix and its inputs), ``impls`` (the implementations
under test), ``memory`` (peak RSS above the inputs), ``load`` (others' CPU share and
the quiet-round loop), ``roofline`` (bytes model, copy bandwidth, roofline share),
``runner`` (the measurement loop over cases and thread counts), ``stats`` (medians,
spreads, ratios), ``verdict`` (issue 10's targets), ``report`` (markdown tables),
``docgen`` (the generated section of ``docs/benchmarks.md``), ``plot`` (optional
PNG), ``cli`` (arguments and the per-allocator child processes).
"""
