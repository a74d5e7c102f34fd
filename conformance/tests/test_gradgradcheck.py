"""Second-order gradient checks in float64 (CE-GRAD-HIGHER)."""

import pytest
import torch

from conformance.cases import cases
from conformance.samples import small_samples
from conformance.tests.test_gradcheck import _call, checkable


@pytest.mark.parametrize("case", cases("gradgradcheck", filter(checkable, small_samples()), (torch.float64,)),
                         ids=str)
def test_gradgradcheck(case, impl, device):
    fn, leaves = _call(impl, case.spec.build(device, case.dtype))
    assert torch.autograd.gradgradcheck(fn, leaves, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
