"""Benchmark of ``F.cross_entropy`` implementations on CPU: ``python -m bench``.

Why a package of its own: the numbers in ``docs/benchmarks.md`` decide whether the
fused kernels are worth proposing upstream, and this machine's timings swing by 2x
between runs.  So every implementation is measured in the same process, alternating
rep by rep (``torch`` rep 1, ``compile`` rep 1, ``patch`` rep 1, ``torch`` rep 2, ...),
and ratios are reported both as a ratio of medians and as the median of per-rep
paired ratios.  Each allocator setting runs in its own child process because
``THP_MEM_ALLOC_ENABLE`` is read once, when torch first allocates.

Modules: ``cases`` (the case matrix and its inputs), ``impls`` (the implementations
under test), ``memory`` (peak RSS above the inputs), ``runner`` (the alternating
measurement loop), ``stats`` (medians, spreads, ratios), ``report`` (markdown table),
``plot`` (optional PNG), ``cli`` (arguments and the per-allocator child processes).
"""
