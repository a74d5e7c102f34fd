"""Running an implementation and the float64 reference on one sample, and comparing."""

from __future__ import annotations

import zlib
from typing import List, Optional, Sequence, Tuple

import torch

from conformance import tolerances
from conformance.cases import Case
from conformance.impls import CrossEntropy, get_impl
from conformance.plugin import record_error
from conformance.samples import SampleInput


def reference() -> CrossEntropy:
    return get_impl("reference")


def forward(fn: CrossEntropy, sample: SampleInput) -> torch.Tensor:
    return fn(sample.input, sample.target, **sample.kwargs)


def seeded_like(t: torch.Tensor, salt: str, values_dtype: torch.dtype) -> torch.Tensor:
    """A random tensor shaped like ``t`` that every implementation sees identically.

    Its values are representable in ``values_dtype`` (the sample's dtype), so the
    float64 reference receives exactly the incoming gradient the implementation does.
    """
    gen = torch.Generator().manual_seed(zlib.crc32(salt.encode()))
    values = torch.randn(t.shape, generator=gen, dtype=torch.float64).to(values_dtype)
    return values.to(device=t.device, dtype=t.dtype)


def differentiable_inputs(sample: SampleInput) -> List[torch.Tensor]:
    """Leaves that carry gradients: the input, and probability targets (CE-GRAD-TARGET)."""
    x = sample.input.detach().requires_grad_()
    leaves = [x]
    target = sample.target
    if sample.spec.kind == "prob":
        target = target.detach().requires_grad_()
        leaves.append(target)
    sample.input, sample.target = x, target
    return leaves


def gradients(fn: CrossEntropy, sample: SampleInput, salt: str,
              values_dtype: torch.dtype) -> Tuple[torch.Tensor, ...]:
    leaves = differentiable_inputs(sample)
    out = forward(fn, sample)
    grad_out = seeded_like(out, salt, values_dtype)
    return torch.autograd.grad(out, leaves, grad_out)


def assert_matches(case: Case, actual: torch.Tensor, expected: torch.Tensor, what: str,
                   dtype: Optional[torch.dtype] = None) -> None:
    """Same shape, the implementation's dtype, and values within the dtype's tolerance."""
    dtype = dtype or case.dtype
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype} != {dtype}"
    ratio = tolerances.error_ratio(actual, expected, dtype)
    record_error(case, ratio)
    rtol, atol = tolerances.tolerance(dtype)
    if ratio > 1:
        a = actual.detach().to("cpu", torch.float64)
        e = expected.detach().to("cpu", torch.float64)
        diff = (a - e).abs().nan_to_num(nan=float("inf"))
        where = int(diff.flatten().argmax()) if diff.numel() else 0
        raise AssertionError(
            f"{what} differs from the reference beyond rtol={rtol}, atol={atol} "
            f"(error/tolerance {ratio:.3g}); at flat index {where}: got "
            f"{a.flatten()[where].item() if a.numel() else None}, expected {e.flatten()[where].item() if e.numel() else None}"
        )


def assert_all_match(case: Case, actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor],
                     names: Sequence[str]) -> None:
    for a, e, name in zip(actual, expected, names):
        assert_matches(case, a, e, name)
