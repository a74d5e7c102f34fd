"""Peak resident memory of one call, above what the process held just before it.

Method (Linux): before each measured call we write ``5`` to ``/proc/self/clear_refs``,
which resets the kernel's high-water mark ``VmHWM`` to the current ``VmRSS``; after
the call ``VmHWM - VmRSS(before)`` is the largest amount of *touched* physical memory
the call added at any instant -- temporaries, saved activations and the gradient
itself, whatever allocator (glibc, THP-aligned) served them.  Pages that were
reserved but never written are not counted, which is what a user pays for.

Why not ``ru_maxrss`` in a forked child: it cannot be reset, and a fork per rep would
also re-fault every page.  Why not ``torch.profiler``: it sees only tensors, not the
allocator's page-level cost.  Caveat: memory that glibc keeps mapped after an earlier
rep (blocks under its mmap threshold, at most 32 MiB each) is already in the baseline
and is reused without showing up; every N x C temporary here is far above that, so
it is always returned to the kernel and counted again.  ``hwm_reset_works`` checks
the mechanism on this kernel before any number is reported.
"""
from __future__ import annotations

import gc
from typing import Optional

import torch

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _status_kib(field: str) -> int:
    with open(_STATUS) as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from {_STATUS}")


def rss_bytes() -> int:
    """Current resident set size."""
    return _status_kib("VmRSS") * 1024


def hwm_bytes() -> int:
    """Resident high-water mark since the process start or the last reset."""
    return _status_kib("VmHWM") * 1024


def reset_hwm() -> None:
    """Reset ``VmHWM`` to the current ``VmRSS`` (Linux >= 4.0)."""
    with open(_CLEAR_REFS, "w") as clear_refs:
        clear_refs.write("5")


def hwm_reset_works() -> tuple[bool, str]:
    """Touch and free 256 MiB, reset, and check that the high-water mark came back down."""
    try:
        block = torch.ones(64 * 2**20, dtype=torch.float32)
        del block
        gc.collect()
        reset_hwm()
        excess = hwm_bytes() - rss_bytes()
    except (OSError, RuntimeError) as error:
        return False, f"VmHWM reset unavailable: {error}"
    if excess > 16 * 2**20:
        return False, f"VmHWM stayed {excess / 2**20:.0f} MiB above VmRSS after reset"
    return True, "VmHWM reset via /proc/self/clear_refs works"


class PeakMeter:
    """Context manager: ``peak_bytes`` is the call's peak RSS above its start (None if unsupported)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.peak_bytes: Optional[int] = None
        self._base = 0

    def __enter__(self) -> "PeakMeter":
        if self.enabled:
            reset_hwm()
            self._base = rss_bytes()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.enabled:
            self.peak_bytes = hwm_bytes() - self._base
