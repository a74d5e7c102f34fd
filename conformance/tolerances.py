"""Per-dtype tolerances: the one place they are stated.

Every implementation is compared with the reference evaluated in float64 on the
same (exactly representable) input values, so the tolerance only has to absorb the
implementation's own rounding:

* float64: the fused kernels and stock accumulate in float64 in a different order
  than the reference; sums of a few thousand terms stay within ~1e-13 relative.
* float32: accumulation over C <= 1000 classes and up to 70000 positions in float32;
  a relative error of a few 1e-6 is expected, 2e-5 leaves room for the long sums.
* float16 (eps 9.8e-4) and bfloat16 (eps 7.8e-3): the spec (CE-PRECISION) allows one
  final rounding of a float32 result, i.e. half an ulp; stock rounds its intermediate
  log-softmax too, so the bound is two ulps of the dtype, plus an absolute term for
  results near zero.
Gradients use the same numbers: each element is one product of a softmax term and
the incoming gradient, rounded once.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch

# dtype -> (rtol, atol)
TOLERANCES: Dict[torch.dtype, Tuple[float, float]] = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 2e-6),
    torch.float16: (2e-3, 1e-3),
    torch.bfloat16: (1.6e-2, 8e-3),
}


def tolerance(dtype: torch.dtype) -> Tuple[float, float]:
    """(rtol, atol) for results of ``dtype``."""
    return TOLERANCES[dtype]


def error_ratio(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> float:
    """max |actual - expected| / (atol + rtol * |expected|); <= 1 means within tolerance.

    Matching non-finite values (same inf, both NaN) count as exact; a mismatch in
    finiteness is reported as ``inf``.
    """
    rtol, atol = tolerance(dtype)
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if a.shape != e.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    same_nonfinite = (a == e) | (a.isnan() & e.isnan())
    finite = e.isfinite() & a.isfinite()
    if bool((~finite & ~same_nonfinite).any()):
        return float("inf")
    ratio = ((a - e).abs() / (atol + rtol * e.abs())).masked_fill(~finite, 0)
    return float(ratio.max())
