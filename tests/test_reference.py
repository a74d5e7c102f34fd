"""The reference against stock ``F.cross_entropy`` and against the NumPy statement of the spec.

Both run in float64 over the whole sample matrix.  Against stock, the cases that
``conformance/divergences.py`` declares for ``torch`` are strict xfails, so the
reference differs from stock exactly where the spec says it does, and nowhere else.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conformance import divergences
from conformance.cases import Case
from conformance.compare import gradients, seeded_like
from conformance.samples import all_samples
from reference import cross_entropy
from tests import numpy_spec

F64 = torch.float64


def _case(family: str, spec) -> Case:
    return Case(family, F64, spec)


def _params(family: str):
    params = []
    for spec in all_samples():
        entry = divergences.find("torch", _case(family, spec).conformance_id)
        marks = [pytest.mark.xfail(strict=True, reason=f"{entry.rule}: {entry.reason}")] if entry else []
        params.append(pytest.param(spec, id=spec.id, marks=marks))
    return params


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("spec", _params("forward"))
def test_forward_matches_stock(spec):
    sample = spec.build("cpu", F64)
    _close(cross_entropy(sample.input, sample.target, **sample.kwargs),
           F.cross_entropy(sample.input, sample.target, **sample.kwargs))


@pytest.mark.parametrize("spec", _params("backward"))
def test_backward_matches_stock(spec):
    ours = gradients(cross_entropy, spec.build("cpu", F64), spec.id, F64)
    stock = gradients(F.cross_entropy, spec.build("cpu", F64), spec.id, F64)
    for a, e in zip(ours, stock):
        _close(a, e)


def _numpy_args(sample):
    weight = None if sample.weight is None else sample.weight.numpy()
    return (sample.input.detach().numpy(), sample.target.detach().numpy(), weight,
            sample.spec.ignore_value, sample.spec.reduction, sample.spec.label_smoothing)


@pytest.mark.parametrize("spec", all_samples(), ids=lambda s: s.id)
def test_forward_matches_numpy_statement(spec):
    sample = spec.build("cpu", F64)
    expected = numpy_spec.cross_entropy(*_numpy_args(sample))
    actual = cross_entropy(sample.input, sample.target, **sample.kwargs)
    np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("spec", [s for s in all_samples() if s.finite], ids=lambda s: s.id)
def test_gradients_match_closed_form(spec):
    sample = spec.build("cpu", F64)
    grads = gradients(cross_entropy, sample, spec.id, F64)
    out = cross_entropy(sample.input.detach(), sample.target.detach(), **sample.kwargs)
    grad_out = seeded_like(out, spec.id, F64).numpy()
    expected_x, expected_t = numpy_spec.gradients(*_numpy_args(sample), grad_out)
    np.testing.assert_allclose(grads[0].numpy(), expected_x, rtol=1e-9, atol=1e-12)
    if expected_t is not None:
        np.testing.assert_allclose(grads[1].numpy(), expected_t, rtol=1e-9, atol=1e-12)
