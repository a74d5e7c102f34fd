"""The generated autograd must behave as torchgen's generated C++ would in a
patched build: derivatives the series does not define raise (never a silent
zero), and exceptions reach the caller as themselves."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from patches import autograd_gen, oot

def _index_problem(dtype=torch.float64):
    torch.manual_seed(0)
    x = torch.randn(3, 5, dtype=dtype)
    return x, torch.tensor([0, 2, 4]), torch.randn_like(x)


def _prob_problem(dtype=torch.float64):
    torch.manual_seed(1)
    x = torch.randn(3, 5, dtype=dtype)
    return x, torch.softmax(torch.randn(3, 5, dtype=dtype), 1), torch.randn_like(x)


def test_torchgen_message_is_the_installed_one() -> None:
    # The text is torchgen's; keep it in step with the wheel's template.
    import inspect

    from torchgen.packaged.autograd import gen_variable_type

    source = inspect.getsource(gen_variable_type)
    assert "Trying to use forward AD with ${name} that does not support it ${msg}" in source
    assert "because it has not been implemented yet.\\\\nPlease file an issue " in source
    assert "https://github.com/pytorch/pytorch/issues/new?template=feature-request.yml" in source


@pytest.mark.parametrize("problem", [_index_problem, _prob_problem], ids=["index", "prob"])
def test_first_order_forward_ad_matches_stock(problem) -> None:
    x, target, tangent = problem()
    _, patched = torch.func.jvp(lambda x: oot.patched_cross_entropy(x, target, label_smoothing=0.1), (x,), (tangent,))
    _, stock = torch.func.jvp(lambda x: F.cross_entropy(x, target, label_smoothing=0.1), (x,), (tangent,))
    torch.testing.assert_close(patched, stock)


@pytest.mark.parametrize("problem", [_index_problem, _prob_problem], ids=["index", "prob"])
@pytest.mark.parametrize("transform", ["jvp(grad)", "jacfwd(grad)", "hessian", "forward_ad+autograd.grad"])
def test_forward_over_reverse_matches_stock(problem, transform: str) -> None:
    # With GradMode on, the derivatives.yaml formula picks the differentiable
    # backward, whose forward-mode derivative comes from its ATen ops (it used
    # to raise NotImplementedError, and before that to return zeros).
    x, target, tangent = problem()

    def second_order(loss_fn):
        def f(x):
            return loss_fn(x, target, label_smoothing=0.1)

        if transform == "jvp(grad)":
            return torch.func.jvp(torch.func.grad(f), (x,), (tangent,))[1]
        if transform == "jacfwd(grad)":
            return torch.func.jacfwd(torch.func.grad(f))(x)
        if transform == "hessian":
            return torch.func.hessian(f)(x)
        import torch.autograd.forward_ad as fwAD

        with fwAD.dual_level():
            dual = fwAD.make_dual(x, tangent).requires_grad_()
            (grad,) = torch.autograd.grad(f(dual), dual, create_graph=True)
            return fwAD.unpack_dual(grad).tangent

    patched, stock = second_order(oot.patched_cross_entropy), second_order(F.cross_entropy)
    assert stock.abs().max() > 1e-3  # a zero derivative would pass a weaker check
    torch.testing.assert_close(patched, stock)


def test_missing_forward_formula_raises_torchgens_error() -> None:
    # No op of the series lacks a forward formula any more; the generated
    # Function must still raise torchgen's error (never a silent zero
    # tangent) when one does.  Drop the formula from a real entry.
    import dataclasses

    from patches import codegen

    info = codegen.derivative_infos()["_fused_cross_entropy"]
    _, function = autograd_gen.make_autograd_function(dataclasses.replace(info, forward_derivatives=[]))
    x, target, tangent = _index_problem()
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level(), pytest.raises(NotImplementedError) as error:
        function.apply(fwAD.make_dual(x, tangent), target, None, 1, -100, 0.0)
    assert str(error.value) == autograd_gen.FORWARD_AD_NOT_IMPLEMENTED.format(name="_fused_cross_entropy")


@pytest.mark.parametrize("create_graph", [False, True])
def test_grad_mode_selects_the_backward_as_torchgen_does(create_graph: bool, monkeypatch) -> None:
    # "GradMode::is_enabled() ? differentiable : fused": the fused kernel only
    # when the backward's own graph is not recorded.
    called = []
    for name in ("_fused_cross_entropy_backward", "_fused_cross_entropy_differentiable_backward"):
        op = getattr(torch.ops.aten, name)
        monkeypatch.setattr(torch.ops.aten, name, _Recording(op, name, called))
    x, target, _ = _prob_problem()
    x.requires_grad_()
    loss = oot.patched_cross_entropy(x, target)
    torch.autograd.grad(loss, x, create_graph=create_graph)
    expected = "_fused_cross_entropy_differentiable_backward" if create_graph else "_fused_cross_entropy_backward"
    assert called == [expected]


class _Recording:
    def __init__(self, op, name: str, calls: list) -> None:
        self.op, self.name, self.calls = op, name, calls

    def __call__(self, *args):
        self.calls.append(self.name)
        return self.op(*args)


@pytest.mark.parametrize(
    ("formula", "python"),
    [
        ("f(grad, self)", "f(grad, self)"),
        ("GradMode::is_enabled() ? a(x) : b(x, y)", "(a(x)) if (grad_mode_is_enabled()) else (b(x, y))"),
        ("c ? f(a ? b : c) : d", "(f(a ? b : c)) if (c) else (d)"),
    ],
)
def test_cpp_conditionals_become_python(formula: str, python: str) -> None:
    assert autograd_gen.to_python(formula) == python


def test_forward_over_reverse_is_what_stock_computes_where_defined() -> None:
    # Stock has the formula, so the test above is about the series, not the
    # transform: check the stock value is non-zero (zeros would be a bug).
    x, target, tangent = _index_problem()
    _, hvp = torch.func.jvp(torch.func.grad(lambda x: F.cross_entropy(x, target)), (x,), (tangent,))
    assert hvp.abs().max() > 1e-3


def test_reverse_over_reverse_still_matches_stock() -> None:
    x, target, _ = _prob_problem()
    patched = torch.func.jacrev(torch.func.grad(lambda x: oot.patched_cross_entropy(x, target)))(x)
    stock = torch.func.jacrev(torch.func.grad(lambda x: F.cross_entropy(x, target)))(x)
    torch.testing.assert_close(patched, stock)


def test_input_without_formula_that_requires_grad_raises_like_torchgen() -> None:
    # derivatives.yaml gives weight no formula and does not mark it
    # non_differentiable: torchgen emits check_no_requires_grad(weight, ...).
    x, target, _ = _index_problem()
    x.requires_grad_()
    weight = torch.rand(5, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError) as error:
        torch.ops.aten._fused_cross_entropy(x, target, weight, 1, -100, 0.0)
    assert str(error.value) == autograd_gen.NO_REQUIRES_GRAD.format(name="_fused_cross_entropy", arg="weight")
    # Not raised when nothing with a formula requires grad, or grad mode is off.
    torch.ops.aten._fused_cross_entropy(x.detach(), target, weight, 1, -100, 0.0)
    with torch.no_grad():
        torch.ops.aten._fused_cross_entropy(x, target, weight, 1, -100, 0.0)


def test_routing_with_weight_requiring_grad_raises_stocks_error() -> None:
    # The routing does not send such calls to the fused op (see 0002's
    # message); stock nll_loss_forward has no weight derivative either, so
    # both raise nll_loss_forward's check_no_requires_grad error.
    x, target, _ = _index_problem()
    weight = torch.rand(5, dtype=torch.float64, requires_grad=True)
    messages = []
    for fn in (oot.patched_cross_entropy, F.cross_entropy):
        with pytest.raises(RuntimeError) as error:
            fn(x.clone().requires_grad_(), target, weight=weight)
        messages.append(str(error.value))
    assert messages[0] == messages[1]
    assert "not differentiable with respect to argument 'weight'" in messages[0]


def test_not_implemented_formula_raises_not_implemented_error() -> None:
    with pytest.raises(NotImplementedError, match="the derivative for 'weight' is not implemented."):
        autograd_gen._evaluate(compile('not_implemented("weight")', "<test>", "eval"), {})


@pytest.mark.parametrize("bad", [7, -5])
def test_invalid_index_inside_vmap_grad_raises_like_stock(bad: int) -> None:
    # Under vmap both run a composite (stock: functorch's nll_loss
    # decomposition, the series: the CompositeImplicitAutograd form), whose
    # gather / scatter rejects the index.  The error must come out as itself
    # (not a SystemError from a Python kernel that lost the exception), of
    # stock's type.
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5)
    target = torch.zeros(3, 4, dtype=torch.long)
    target[1, 2] = bad
    errors = []
    for loss_fn in (oot.patched_cross_entropy, F.cross_entropy):
        with pytest.raises((IndexError, RuntimeError), match="out of bounds") as error:
            torch.func.vmap(torch.func.grad(lambda x, t: loss_fn(x, t)))(x, target)
        errors.append(error.type)
    assert errors[0] is errors[1]


def test_vmap_decomposes_the_routing_like_aten_cross_entropy_loss() -> None:
    # aten::cross_entropy_loss is decomposed by functorch under vmap; the
    # routing op must be too, or it runs the per-sample fallback instead.
    from patches import codegen

    oot.load()
    stock = codegen.installed_kernel_keys("aten::cross_entropy_loss")
    routing = codegen.installed_kernel_keys(f"{codegen.ROUTING_NAMESPACE}::cross_entropy_loss")
    assert ("FuncTorchBatchedDecomposition" in stock) == ("FuncTorchBatchedDecomposition" in routing)
