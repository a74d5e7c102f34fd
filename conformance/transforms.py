"""Helpers for grading an implementation under functorch transforms (CE-SYS-VMAP).

functorch silently runs an operator without a batch rule as a per-example Python
loop (the "vmap fallback").  Values stay right, so a value check alone cannot see a
missing batch rule; CE-SYS-VMAP requires the rules to exist, so the suite runs its
transforms with the fallback switched off, turning a missing rule into an error.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def vmap_fallback_disabled() -> Iterator[None]:
    """Switch off functorch's per-example fallback, restoring the previous setting."""
    functorch = torch._C._functorch
    previous = functorch._is_vmap_fallback_enabled()
    functorch._set_vmap_fallback_enabled(False)
    try:
        yield
    finally:
        functorch._set_vmap_fallback_enabled(previous)
