"""Backward parity: input gradients and probability-target gradients (CE-GRAD-*)."""

import pytest
import torch

from conformance import compare
from conformance.cases import cases
from conformance.samples import all_samples


@pytest.mark.parametrize("case", cases("backward", all_samples()), ids=str)
def test_backward(case, impl, device):
    sample = case.spec.build(device, case.dtype)
    salt = case.spec.id
    actual = compare.gradients(impl, sample, salt, case.dtype)
    expected = compare.gradients(compare.reference(), sample.cast(torch.float64), salt, case.dtype)
    names = ["input gradient", "target gradient"][: len(actual)]
    compare.assert_all_match(case, actual, expected, names)
