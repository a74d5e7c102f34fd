"""Forward parity with the reference evaluated in float64 (every CE-* value rule)."""

import pytest
import torch

from conformance import compare
from conformance.cases import cases
from conformance.samples import all_samples


@pytest.mark.parametrize("case", cases("forward", all_samples()), ids=str)
def test_forward(case, impl, device):
    sample = case.spec.build(device, case.dtype)
    actual = compare.forward(impl, sample)
    expected = compare.forward(compare.reference(), sample.cast(torch.float64))
    compare.assert_matches(case, actual, expected, "loss")
