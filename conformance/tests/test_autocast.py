"""CE-SYS-AUTOCAST: the loss under ``torch.autocast`` has stock's result dtype and values.

Autocast's policy lives in the dispatcher: ``cross_entropy_loss`` is on the
float32 list (CPU and CUDA), so a half-precision activation is upcast before the
loss and the loss comes out in float32.  A routing operator in front of
``cross_entropy_loss`` that has no autocast rule of its own lets the half-precision
activation reach the kernel, and the loss comes out in bfloat16 / float16.

Each case measures stock ``F.cross_entropy`` on the same tensors under the same
autocast region and requires the implementation's dtype and (within that dtype's
tolerance) its values.  The ``cuda-policy`` cases check the spec's float32 on CUDA
and are skipped where no CUDA device exists.
"""

from __future__ import annotations

import zlib
from typing import Tuple

import pytest
import torch
import torch.nn.functional as F

from conformance import compare
from conformance.cases import Case
from conformance.samples import SampleInput, SampleSpec
from conformance.subsystem_cases import clause_params

AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)
SPECS = (
    SampleSpec("index", (4, 5), "mean", weight=True, label_smoothing=0.1),
    SampleSpec("index", (3, 5, 4), "none", ignored="some"),
    SampleSpec("prob", (4, 5), "sum", weight=True),
)
FEATURES = 3
REFERENCE_SKIP = ("the reference is plain torch ops transcribing the spec; the autocast policy graded here is "
                  "the dispatcher's rule for aten::cross_entropy_loss, which the reference never calls")


def _params(clauses: Tuple[str, ...]) -> list:
    return clause_params("autocast", clauses, SPECS, AUTOCAST_DTYPES)


def _linear_and_features(spec: SampleSpec, device: str) -> Tuple[torch.nn.Linear, torch.Tensor]:
    """A float32 Linear producing the logits, and its float32 input (N, *d, FEATURES)."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"autocast|{spec.id}".encode()))
    classes = spec.shape[1]
    linear = torch.nn.Linear(FEATURES, classes)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(classes, FEATURES, generator=gen))
        linear.bias.copy_(torch.randn(classes, generator=gen))
    features = torch.randn((spec.shape[0],) + spec.shape[2:] + (FEATURES,), generator=gen)
    return linear.to(device), features.to(device)


def _loss(fn, clause: str, sample: SampleInput, device: str) -> torch.Tensor:
    """(a) ``direct``: the loss of float32 logits; (b) ``linear``: Linear -> loss, both under autocast."""
    if clause.endswith("direct"):
        return fn(sample.input, sample.target, **sample.kwargs)
    linear, features = _linear_and_features(sample.spec, device)
    logits = linear(features).movedim(-1, 1)
    return fn(logits, sample.target, **sample.kwargs)


def _run(case: Case, spec: SampleSpec, impl, device: str) -> Tuple[torch.Tensor, torch.Tensor]:
    clause = case.name.split("/", 1)[0]
    sample = spec.build(device, torch.float32)
    with torch.autocast(device_type=device, dtype=case.dtype):
        expected = _loss(F.cross_entropy, clause, sample, device)
        actual = _loss(impl, clause, sample, device)
    return actual, expected


@pytest.mark.parametrize("case,spec", _params(("direct", "linear")))
def test_autocast(case, spec, impl, impl_name, device):
    if impl_name == "reference":
        pytest.skip(REFERENCE_SKIP)
    actual, stock = _run(case, spec, impl, device)
    compare.assert_matches(case, actual, stock, f"loss under autocast({case.dtype_name}) vs stock",
                           dtype=stock.dtype)


@pytest.mark.parametrize("case,spec", _params(("cuda-policy-direct", "cuda-policy-linear")))
def test_autocast_cuda_policy(case, spec, impl, impl_name):
    """On CUDA the spec states the dtype outright (CE-SYS-AUTOCAST): cross_entropy_loss has no CUDA
    policy, but its composite reaches log_softmax and nll_loss, which are on the float32 lists."""
    if impl_name == "reference":
        pytest.skip(REFERENCE_SKIP)
    if not torch.cuda.is_available():
        pytest.skip("CUDA autocast policy: torch.cuda.is_available() is False")
    actual, stock = _run(case, spec, impl, "cuda")
    assert actual.dtype == torch.float32, f"loss under CUDA autocast({case.dtype_name}) is {actual.dtype}, not float32"
    compare.assert_matches(case, actual, stock, f"loss under CUDA autocast({case.dtype_name}) vs stock",
                           dtype=torch.float32)
