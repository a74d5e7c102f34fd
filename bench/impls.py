"""The implementations under test, each with ``F.cross_entropy``'s signature.

* ``torch``   -- stock eager ``torch.nn.functional.cross_entropy``.
* ``compile`` -- ``torch.compile(F.cross_entropy, dynamic=False)``, made fresh per case
  after ``torch._dynamo.reset()`` so that the 48 cases never hit the recompile limit
  and the compile caches of earlier cases do not sit in memory.
* ``patch``   -- the fused kernels, from ``conformance.impls.get_impl("patch")`` (or
  ``patches.oot.patched_cross_entropy`` directly).  If it cannot be imported, built
  or called, the bench says so and measures the others: it never invents numbers.
"""
from __future__ import annotations

import traceback
from typing import Callable, Optional

import torch
import torch.nn.functional as F

LossFn = Callable[..., torch.Tensor]
KNOWN_IMPLS: tuple[str, ...] = ("torch", "compile", "patch")


def _load_patch() -> LossFn:
    try:
        from conformance.impls import get_impl
    except ImportError:
        from patches.oot import patched_cross_entropy

        return patched_cross_entropy
    return get_impl("patch")


def _probe(fn: LossFn) -> None:
    """Run both target kinds forward and backward on a tiny input (triggers any build)."""
    logits = torch.randn(4, 8, requires_grad=True)
    fn(logits, torch.tensor([0, 3, 7, 1])).backward()
    fn(logits, torch.randn(4, 8).softmax(1), label_smoothing=0.1).backward()


def load_patch() -> tuple[Optional[LossFn], str]:
    """The patched ``cross_entropy`` and a one-line status; ``None`` with the reason if unusable."""
    try:
        fn = _load_patch()
        _probe(fn)
    except Exception as error:  # any failure means: not measurable, say why
        last = traceback.format_exception_only(type(error), error)[-1].strip()
        return None, f"patch unavailable ({last}); measuring the other implementations only"
    return fn, "patch available"


class ImplSet:
    """Holds the selected implementations; ``for_case`` gives fresh callables per case."""

    def __init__(self, names: list[str]) -> None:
        unknown = [name for name in names if name not in KNOWN_IMPLS]
        if unknown:
            raise ValueError(f"unknown implementations {unknown}; choose from {KNOWN_IMPLS}")
        self.names = list(names)
        self.notes: list[str] = []
        self._patch: Optional[LossFn] = None
        if "patch" in self.names:
            self._patch, note = load_patch()
            self.notes.append(note)
            if self._patch is None:
                self.names.remove("patch")

    def for_case(self) -> dict[str, LossFn]:
        """Callables for one case, in measurement order."""
        fns: dict[str, LossFn] = {}
        for name in self.names:
            if name == "torch":
                fns[name] = F.cross_entropy
            elif name == "compile":
                torch._dynamo.reset()
                fns[name] = torch.compile(F.cross_entropy, dynamic=False)
            elif name == "patch":
                assert self._patch is not None
                fns[name] = self._patch
        return fns
