"""Numerical gradient checks in float64 (CE-GRAD-INPUT, CE-GRAD-TARGET, CE-GRAD-HIGHER).

Only finite samples with non-overlapping memory take part: numerical differences
are meaningless at infinite logits, and gradcheck rejects inputs whose elements
share memory (the expanded layout).  A NaN mean over nothing has no derivative
to compare; its (zero) gradients are checked by the backward family.
"""

import pytest
import torch

from conformance import compare
from conformance.cases import cases
from conformance.samples import small_samples


def checkable(spec) -> bool:
    return spec.finite and spec.layout != "expanded" and not spec.undefined_mean


def _call(impl, sample):
    leaves = compare.differentiable_inputs(sample)
    target = sample.target
    kwargs = sample.kwargs

    def fn(*args):
        return impl(args[0], args[1] if len(args) > 1 else target, **kwargs)

    return fn, tuple(leaves)


@pytest.mark.parametrize("case", cases("gradcheck", filter(checkable, small_samples()), (torch.float64,)), ids=str)
def test_gradcheck(case, impl, device):
    fn, leaves = _call(impl, case.spec.build(device, case.dtype))
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)
