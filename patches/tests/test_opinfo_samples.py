"""The series' cross_entropy OpInfo samples construct, and the patched op agrees with the spec on them.

The series edits ``sample_inputs_cross_entropy`` in
``torch/testing/_internal/common_methods_invocations.py``; upstream's test_ops, decomposition,
meta and functorch tests would run every sample through the patched op.  Out of tree this
test takes the patched function (the wheel's copy with the series applied), generates its
samples and checks the patched ``cross_entropy`` against ``reference.cross_entropy``
(float64 transcription of docs/semantics.md): loss and input gradient, finite where the
spec says so.
"""

from __future__ import annotations

import ast

import pytest
import torch

from patches import codegen

OPINFO_PY = "torch/testing/_internal/common_methods_invocations.py"


def patched_sample_function():
    """``sample_inputs_cross_entropy`` as the series leaves it, in the installed module's namespace."""
    import torch.testing._internal.common_methods_invocations as module

    text = codegen.patched_text(OPINFO_PY)
    node = next(n for n in ast.parse(text).body
                if isinstance(n, ast.FunctionDef) and n.name == "sample_inputs_cross_entropy")
    namespace = dict(vars(module))
    exec(compile(ast.Module(body=[node], type_ignores=[]), f"<series: {OPINFO_PY}>", "exec"), namespace)
    return namespace["sample_inputs_cross_entropy"]


def _series_samples(dtype: torch.dtype) -> list:
    """The samples the series adds (after the wheel's own)."""
    import torch.testing._internal.common_methods_invocations as module

    samples = list(patched_sample_function()(None, "cpu", dtype, True))
    stock = len(list(module.sample_inputs_cross_entropy(None, "cpu", dtype, True)))
    assert len(samples) == stock + 3, "the series adds three samples"
    return samples[stock:]


def _grad(fn, sample):
    x = sample.input.detach().clone().requires_grad_()
    loss = fn(x, sample.args[0], **sample.kwargs)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_series_samples_match_the_reference(dtype: torch.dtype) -> None:
    from patches import oot
    from reference import cross_entropy as reference

    samples = _series_samples(dtype)
    masked, padded, large = samples
    assert torch.isneginf(masked.input[:, 1]).all() and (masked.args[0][:, 1] == 0).all()
    assert not masked.args[0].requires_grad  # d(loss)/d(target) is inf at the masked class
    assert torch.isneginf(padded.input[0]).all() and padded.args[0][0].item() == -100
    assert (large.input > 998).all()

    tolerance = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {}
    for sample in samples:
        loss, grad = _grad(oot.patched_cross_entropy, sample)
        # The reference evaluates the same input values in float64.
        wide = sample.transform(lambda t: t.double() if t.is_floating_point() else t)
        expected_loss, expected_grad = _grad(reference, wide)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        torch.testing.assert_close(loss.double(), expected_loss, **tolerance)
        torch.testing.assert_close(grad.double(), expected_grad, **tolerance)
    assert (_grad(oot.patched_cross_entropy, padded)[1][0] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_series_samples_construct_in_half_precision(dtype: torch.dtype) -> None:
    for sample in _series_samples(dtype):
        assert sample.input.dtype == dtype and sample.input.requires_grad


@pytest.mark.parametrize("index", [0, 1, 2])
def test_series_samples_forward_ad(index: int) -> None:
    """The OpInfo says supports_forward_ad: the JVP must equal gradient . tangent (from the reference)."""
    import torch.autograd.forward_ad as fwAD

    from patches import oot
    from reference import cross_entropy as reference

    sample = _series_samples(torch.float64)[index]
    tangent = torch.randn(sample.input.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with fwAD.dual_level():
        dual = fwAD.make_dual(sample.input.detach(), tangent)
        jvp = fwAD.unpack_dual(oot.patched_cross_entropy(dual, sample.args[0], **sample.kwargs)).tangent
    _, grad = _grad(reference, sample)
    torch.testing.assert_close(jvp, (grad * tangent).sum())
