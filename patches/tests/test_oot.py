"""Smoke tests of the out-of-tree execution; the conformance suite
(``python -m conformance --impl patch``) is the full grading."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from patches import oot


def test_routes_to_the_fused_op_and_matches_stock() -> None:
    x = torch.randn(6, 11, dtype=torch.float64, requires_grad=True)
    t = torch.rand(6, 11, dtype=torch.float64)
    loss = oot.patched_cross_entropy(x, t, label_smoothing=0.1)
    assert "_fused_cross_entropy" in type(loss.grad_fn).__name__
    torch.testing.assert_close(loss, F.cross_entropy(x, t, label_smoothing=0.1))


def test_invalid_arguments_fall_back_to_stock_errors() -> None:
    x = torch.randn(3, 4)
    for kwargs in ({"label_smoothing": 1.5}, {"weight": torch.ones(3)}):
        try:
            F.cross_entropy(x, torch.tensor([0, 1, 2]), **kwargs)
        except RuntimeError as stock:
            expected = str(stock)
        try:
            oot.patched_cross_entropy(x, torch.tensor([0, 1, 2]), **kwargs)
        except RuntimeError as patched:
            assert str(patched) == expected
        else:
            raise AssertionError(f"no error for {kwargs}")


def test_autograd_comes_from_the_derivatives_hunk() -> None:
    # Only the forward has an entry: the fused backward runs with GradMode off,
    # and the differentiable backward and the jvp are CompositeImplicitAutograd.
    assert oot.registered()["autograd"] == ["_fused_cross_entropy"]


def test_avx2_copy_of_the_kernels_is_vector_code() -> None:
    # Without ATen's CPU_CAPABILITY macros at::vec::Vectorized is scalar;
    # the AVX2 object must use 256-bit registers.
    from patches.tests.objects import binutils_output

    for name, listing in binutils_output("objdump", "-d", "*.AVX2.o").items():
        assert listing.count("%ymm") > 100, name


def test_tracing_rejects_zero_classes_as_the_kernels_do() -> None:
    """The meta functions (FakeTensor, torch.compile, export) raise the kernels' error for C = 0."""
    import pytest
    from torch._subclasses.fake_tensor import FakeTensorMode

    oot.load()
    message = r"expected input with at least one class, got input of size \[3, 0\]"
    x, t = torch.randn(3, 0), torch.randn(3, 0)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.aten._fused_cross_entropy(x, t, None, 1, -100, 0.0)
    with FakeTensorMode() as mode, pytest.raises(RuntimeError, match=message):
        torch.ops.aten._fused_cross_entropy(mode.from_tensor(x), mode.from_tensor(t), None, 1, -100, 0.0)
    lse = torch.empty(3)
    with FakeTensorMode() as mode, pytest.raises(RuntimeError, match=message):
        torch.ops.aten._fused_cross_entropy_backward(
            mode.from_tensor(torch.ones(())), mode.from_tensor(x), mode.from_tensor(t), None, 1, -100, 0.0,
            mode.from_tensor(lse), [True, True])


@pytest.mark.parametrize("kind", ["index", "prob"])
def test_class_last_input_is_read_in_place(kind: str) -> None:
    # channels_last (N, C, H, W): the classes of a position are contiguous, so
    # the kernels read it as (positions, C) rows: same values as the contiguous
    # input, gradients in the input's layout, and no copy of the logits.
    torch.manual_seed(0)
    x = torch.randn(2, 7, 3, 5, dtype=torch.float64)
    if kind == "index":
        target = torch.randint(0, 7, (2, 3, 5))
    else:
        target = torch.softmax(torch.randn(2, 7, 3, 5, dtype=torch.float64), 1).contiguous(
            memory_format=torch.channels_last)
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        leaf = x.clone(memory_format=layout).requires_grad_()
        loss = oot.patched_cross_entropy(leaf, target, reduction="none", label_smoothing=0.1)
        (grad,) = torch.autograd.grad(loss, leaf, torch.ones_like(loss))
        results.append((loss, grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=1e-15)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=0, atol=1e-15)
    assert results[1][1].is_contiguous(memory_format=torch.channels_last)

    leaf = x.clone(memory_format=torch.channels_last).requires_grad_()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        loss = oot.patched_cross_entropy(leaf, target, label_smoothing=0.1)
        loss.backward()
    copies = [e.key for e in profile.key_averages() if e.key in ("aten::copy_", "aten::clone")]
    assert copies == [], copies


def test_functorch_transforms_record_the_composite_not_the_op() -> None:
    # Under functorch's grad (which records the backward's graph) the routing
    # records the composite's ATen ops; a plain call runs the fused op.
    torch.manual_seed(0)
    x = torch.randn(4, 6)
    target = torch.randint(0, 6, (4,))

    def fused_calls(fn) -> int:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            fn()
        return sum(e.count for e in profile.key_averages() if e.key == "aten::_fused_cross_entropy")

    def one(x, t):
        return oot.patched_cross_entropy(x.unsqueeze(0), t.unsqueeze(0))

    per_sample = torch.func.vmap(torch.func.grad(one))
    assert fused_calls(lambda: oot.patched_cross_entropy(x, target)) >= 1
    assert fused_calls(lambda: per_sample(x, target)) == 0
    expected = torch.func.vmap(torch.func.grad(lambda x, t: F.cross_entropy(x.unsqueeze(0), t.unsqueeze(0))))(x, target)
    torch.testing.assert_close(per_sample(x, target), expected)


def test_fused_backward_has_torchgens_not_implemented_derivative() -> None:
    # No derivatives.yaml entry: torchgen registers autogradNotImplementedFallback,
    # so a direct call that requires grad runs, and its backward raises.
    torch.manual_seed(0)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 2, 4])
    _, lse = torch.ops.aten._fused_cross_entropy(x.detach(), target, None, 1, -100, 0.0)
    grad_input, _ = torch.ops.aten._fused_cross_entropy_backward(
        torch.ones((), dtype=torch.float64), x, target, None, 1, -100, 0.0, lse, [True, False])
    with pytest.raises(RuntimeError, match="derivative for aten::_fused_cross_entropy_backward is not implemented"):
        grad_input.sum().backward()
