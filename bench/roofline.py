"""Bytes an ideal cross_entropy must move, the machine's copy bandwidth, and the roofline share.

Why: a ratio against ``torch.compile`` says whether the fused kernels beat another
implementation, not whether anything is left to gain.  A loss over N x C logits does
almost no arithmetic per byte, so its floor is memory traffic: the minimum bytes an
ideal implementation must move, divided by the bandwidth this machine reaches in a
plain copy measured in the same run.  ``share = (bytes / bandwidth) / time``: 1.0
means the call ran as fast as a copy of its unavoidable traffic.

Bytes model (``bytes_moved``), per call, for an ideal single-pass forward and
single-pass backward (nothing else is counted: no re-reads, no temporaries):

* forward: read the logits once, read the target once (``N x C`` probabilities in
  the logits' dtype, or one int64 class index per position), read the class
  weight once if there is one (C elements), write one float32 log-sum-exp per
  position (saved for the backward);
* backward (mode ``fwdbwd`` only): read the logits and the target again, the weight
  again, the saved log-sum-exp, and write the input gradient (N x C in the logits'
  dtype).

The reduced scalar loss and the scalar incoming gradient are not counted.  The
gradient is written once; the page faults of a freshly allocated gradient are not
traffic and are not in the model, so under the default allocator they count against
the share (with ``THP_MEM_ALLOC_ENABLE=1`` they cost far less).

Bandwidth (``copy_bandwidth``): ``dst.copy_(src)`` of two float32 tensors of
``size_mib`` each (far beyond the last-level cache), ``dst`` touched beforehand so no
page faults are timed; bytes counted = read ``src`` + write ``dst`` = ``2 x size``
(the STREAM "copy" convention, which, like the model above, does not count the
cache's read-for-ownership of the written lines).  Median of the quiet rounds.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch

from bench import stats
from bench.load import collect_quiet_rounds

LSE_ITEMSIZE = 4  # the saved log-sum-exp is float32 per position
INDEX_ITEMSIZE = 8  # int64 class indices


def bytes_moved(shape: tuple[int, ...], itemsize: int, target: str, weighted: bool, mode: str) -> int:
    """Minimum bytes of one call (see the module docstring for what is counted)."""
    numel = math.prod(shape)
    classes = shape[1]
    positions = numel // classes
    logits = numel * itemsize
    target_bytes = numel * itemsize if target == "prob" else positions * INDEX_ITEMSIZE
    weight = classes * itemsize if weighted else 0
    lse = positions * LSE_ITEMSIZE
    forward = logits + target_bytes + weight + lse
    if mode == "fwd":
        return forward
    if mode != "fwdbwd":
        raise ValueError(f"unknown mode {mode!r}")
    backward = logits + target_bytes + weight + lse + numel * itemsize  # ... + gradient write
    return forward + backward


def roofline_share(nbytes: int, bandwidth_bytes_per_s: float, milliseconds: float) -> float:
    """Fraction of the copy-bandwidth roofline reached: (bytes / bandwidth) / time."""
    if bandwidth_bytes_per_s <= 0 or milliseconds <= 0:
        raise ValueError("bandwidth and time must be positive")
    return (nbytes / bandwidth_bytes_per_s) / (milliseconds / 1e3)


def copy_bytes(size_mib: int) -> int:
    """Bytes one copy of ``size_mib`` moves: read the source and write the destination."""
    return 2 * size_mib * 2**20


def copy_bandwidth(
    threads: int,
    size_mib: int = 256,
    reps: int = 7,
    busy_limit: float = 0.10,
    max_rounds: int = 20,
    window_s: float = 0.25,
    busy: Optional[Callable[[float], float]] = None,
) -> dict:
    """Median copy bandwidth (bytes/s) at ``threads`` threads, from quiet rounds only.

    Returns the samples and ``bytes_per_s`` (``None`` when fewer than ``reps`` quiet
    rounds could be had: no roofline is then computed from it).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        numel = size_mib * 2**20 // 4
        src = torch.rand(numel)
        dst = torch.zeros(numel)  # written once here: its pages are resident before timing
        dst.copy_(src)

        def one_copy() -> float:
            start = time.perf_counter()
            dst.copy_(src)
            return time.perf_counter() - start

        rounds = collect_quiet_rounds({"copy": one_copy}, reps, max_rounds, busy_limit,
                                      check_after=True, window_s=window_s, busy=busy)
    finally:
        torch.set_num_threads(previous)
    seconds = rounds.samples["copy"]
    nbytes = copy_bytes(size_mib)
    quiet = len(seconds) >= reps
    return {
        "threads": threads,
        "size_mib": size_mib,
        "bytes_per_copy": nbytes,
        "seconds": rounds.samples["copy"],
        "dropped": rounds.dropped,
        "busy_max": max(rounds.busy_seen + rounds.busy_after, default=None),
        "bytes_per_s": nbytes / stats.median(seconds) if quiet else None,
    }
