"""The case matrix and the inputs of one case.

Why: the issue fixes which shapes, dtypes, target kinds and options count; keeping
them in one place lets the CLI select a subset by name and lets the report group by
the same fields.  Inputs are made once per case, outside any timing, from a fixed
seed, so every implementation sees the very same tensors.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch

SHAPES: dict[str, tuple[int, ...]] = {
    "4096x32768": (4096, 32768),
    "32768x1024": (32768, 1024),
    "16x21x256x256": (16, 21, 256, 256),
}
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TARGETS: tuple[str, ...] = ("prob", "index")
MODES: tuple[str, ...] = ("fwd", "fwdbwd")


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmarked configuration of ``cross_entropy`` (reduction ``mean``)."""

    shape: str
    dtype: str
    target: str  # "prob" (class probabilities) or "index" (int64 class indices)
    label_smoothing: float
    weighted: bool

    @property
    def label(self) -> str:
        """Short, stable name used in tables, JSON and the plot."""
        options = []
        if self.label_smoothing > 0:
            options.append(f"ls={self.label_smoothing:g}")
        if self.weighted:
            options.append("w")
        suffix = (" " + ",".join(options)) if options else ""
        return f"{self.shape} {self.dtype} {self.target}{suffix}"


@dataclasses.dataclass
class CaseInputs:
    """Tensors for one case; ``logits.grad`` is the gradient whose size memory is compared to."""

    logits: torch.Tensor
    target: torch.Tensor
    weight: Optional[torch.Tensor]
    label_smoothing: float

    @property
    def grad_bytes(self) -> int:
        """Bytes of the input gradient: ``input.numel() * itemsize``."""
        return self.logits.numel() * self.logits.element_size()


def parse_shape(name: str) -> tuple[int, ...]:
    """``"4096x32768"`` -> ``(4096, 32768)``; any ``N x C [x d1 ...]`` is accepted (small ones for smoke runs)."""
    if name in SHAPES:
        return SHAPES[name]
    try:
        shape = tuple(int(size) for size in name.lower().split("x"))
    except ValueError:
        raise ValueError(f"bad shape {name!r}: expected sizes joined by 'x', e.g. 4096x32768") from None
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"bad shape {name!r}: need N x C [x d1 ...] with positive sizes")
    return shape


def build_cases(
    shapes: list[str],
    dtypes: list[str],
    targets: list[str],
    smoothings: list[float],
    weights: list[bool],
) -> list[Case]:
    """The cross product of the selected options, in a fixed order (names are validated here)."""
    for shape in shapes:
        parse_shape(shape)
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPES)}")
    for target in targets:
        if target not in TARGETS:
            raise ValueError(f"unknown target kind {target!r}; choose from {TARGETS}")
    return [
        Case(shape, dtype, target, smoothing, weighted)
        for shape in shapes
        for dtype in dtypes
        for target in targets
        for smoothing in smoothings
        for weighted in weights
    ]


def make_inputs(case: Case, seed: int = 0) -> CaseInputs:
    """Random logits (std 2), a target of the case's kind and an optional positive weight.

    Probability targets are a softmax of random values in the input dtype (the only
    floating target dtype the stock op accepts); class indices are uniform int64.
    """
    shape = parse_shape(case.shape)
    dtype = DTYPES[case.dtype]
    num_classes = shape[1]
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(shape, generator=gen) * 2.0).to(dtype).requires_grad_(True)
    if case.target == "prob":
        target = torch.randn(shape, generator=gen).softmax(dim=1).to(dtype)
    elif case.target == "index":
        positions = shape[:1] + shape[2:]
        target = torch.randint(0, num_classes, positions, generator=gen, dtype=torch.int64)
    else:
        raise ValueError(f"unknown target kind {case.target!r}")
    weight = None
    if case.weighted:
        weight = (torch.rand(num_classes, generator=gen) + 0.5).to(dtype)
    if not math.isfinite(case.label_smoothing):
        raise ValueError("label_smoothing must be finite here")
    return CaseInputs(logits, target, weight, case.label_smoothing)
