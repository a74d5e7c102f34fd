"""Consistency properties an implementation must have on its own, whatever the reference says."""

from unittest import mock

import pytest
import torch

from conformance import compare
from conformance.cases import cases
from conformance.samples import all_samples

F32_F64 = (torch.float64, torch.float32)


def _mean_denominator(sample) -> torch.Tensor:
    """CE-INDEX-MEAN: summed weights of kept targets; CE-PROB-MEAN: number of positions."""
    spec = sample.spec
    x = sample.input
    n_classes = x.shape[0 if x.dim() == 1 else 1]
    if spec.kind == "prob":
        return torch.tensor(x.numel() / n_classes, dtype=torch.float64)
    kept = sample.target != spec.ignore_value
    weight = sample.weight if sample.weight is not None else torch.ones(n_classes, dtype=x.dtype, device=x.device)
    return weight.double()[sample.target.clamp(0, n_classes - 1)].masked_fill(~kept, 0).sum().cpu()


@pytest.mark.parametrize("case", cases("properties", (s for s in all_samples() if s.reduction == "mean"), F32_F64),
                         ids=lambda c: f"mean_is_sum_over_denominator:{c}")
def test_mean_is_sum_over_denominator(case, impl, device):
    sample = case.spec.build(device, case.dtype)
    mean = impl(sample.input, sample.target, **sample.kwargs)
    kwargs = dict(sample.kwargs, reduction="sum")
    total = impl(sample.input, sample.target, **kwargs)
    compare.assert_matches(case, mean, (total.double().cpu() / _mean_denominator(sample)).to(case.dtype),
                           "mean vs sum / denominator")


MODULE_SAMPLES = [s for s in all_samples() if s.layout == "contiguous" and s.logits == "normal"
                  and s.tag != "accumulate"]


@pytest.mark.parametrize("case", cases("properties", MODULE_SAMPLES, (torch.float32,)),
                         ids=lambda c: f"module_matches_functional:{c}")
def test_module_matches_functional(case, impl, device):
    """``nn.CrossEntropyLoss`` forwards every argument to the functional unchanged."""
    sample = case.spec.build(device, case.dtype)
    kwargs = sample.kwargs
    module = torch.nn.CrossEntropyLoss(**kwargs)
    with mock.patch.object(torch.nn.functional, "cross_entropy", impl):
        via_module = module(sample.input, sample.target)
    direct = impl(sample.input, sample.target, **kwargs)
    torch.testing.assert_close(via_module, direct, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("case", cases("properties", (s for s in all_samples() if len(s.shape) == 1), F32_F64),
                         ids=lambda c: f"unbatched_is_batch_of_one:{c}")
def test_unbatched_is_batch_of_one(case, impl, device):
    sample = case.spec.build(device, case.dtype)
    unbatched = impl(sample.input, sample.target, **sample.kwargs)
    batched = impl(sample.input.unsqueeze(0), sample.target.unsqueeze(0), **sample.kwargs)
    if case.spec.reduction == "none":
        batched = batched.squeeze(0)
    compare.assert_matches(case, unbatched, batched.double(), "unbatched vs batch of one")


@pytest.mark.parametrize("case", cases("properties", (s for s in all_samples() if s.layout != "contiguous")),
                         ids=lambda c: f"layout_independent:{c}")
def test_layout_independent(case, impl, device):
    """CE-LAYOUT: strides change nothing but (at most) summation order."""
    sample = case.spec.build(device, case.dtype)
    strided = impl(sample.input, sample.target, **sample.kwargs)
    dense = impl(sample.input.contiguous(), sample.target.contiguous(), **sample.kwargs)
    compare.assert_matches(case, strided, dense.double(), "strided vs contiguous")


DETERMINISM_SAMPLES = [s for s in all_samples() if s.tag in ("wide", "vector-tail", "accumulate")]


@pytest.mark.parametrize("case", cases("properties", DETERMINISM_SAMPLES, (torch.float32, torch.bfloat16)),
                         ids=lambda c: f"deterministic:{c}")
def test_deterministic(case, impl, device):
    """CE-DETERMINISM: the same inputs give bit-identical losses and gradients."""
    runs = []
    for _ in range(2):
        sample = case.spec.build(device, case.dtype)
        runs.append(compare.gradients(impl, sample, case.spec.id, case.dtype)
                    + (impl(sample.input.detach(), sample.target.detach(), **sample.kwargs),))
    for first, second in zip(*runs):
        torch.testing.assert_close(first, second, rtol=0, atol=0, equal_nan=True)
