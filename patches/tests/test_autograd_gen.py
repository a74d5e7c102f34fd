"""The generated autograd must behave as torchgen's generated C++ would in a
patched build: derivatives the series does not define raise (never a silent
zero), and exceptions reach the caller as themselves."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from patches import autograd_gen, oot

FORWARD_AD_MESSAGE = autograd_gen.FORWARD_AD_NOT_IMPLEMENTED.format(name="_fused_cross_entropy_backward")


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
def test_forward_over_reverse_raises_not_implemented(problem, transform: str) -> None:
    # _fused_cross_entropy_backward has no forward formula in derivatives.yaml:
    # torchgen's kernel raises NotImplementedError; it used to return zeros
    # (jvp(grad)) or die on an INTERNAL ASSERT (hessian).
    x, target, tangent = problem()

    def f(x):
        return oot.patched_cross_entropy(x, target)

    with pytest.raises(NotImplementedError) as error:
        if transform == "jvp(grad)":
            torch.func.jvp(torch.func.grad(f), (x,), (tangent,))
        elif transform == "jacfwd(grad)":
            torch.func.jacfwd(torch.func.grad(f))(x)
        elif transform == "hessian":
            torch.func.hessian(f)(x)
        else:
            import torch.autograd.forward_ad as fwAD

            with fwAD.dual_level():
                dual = fwAD.make_dual(x, tangent).requires_grad_()
                (grad,) = torch.autograd.grad(f(dual), dual, create_graph=True)
    assert str(error.value) == FORWARD_AD_MESSAGE


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
def test_invalid_index_inside_vmap_grad_raises_itself(bad: int) -> None:
    # The kernel's own IndexError must come out, not a SystemError from a
    # Python kernel that lost the exception.
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5)
    target = torch.zeros(3, 4, dtype=torch.long)
    target[1, 2] = bad

    def f(x, t):
        return oot.patched_cross_entropy(x, t)

    with pytest.raises(IndexError, match=f"^Target {bad} is out of bounds.$"):
        torch.func.vmap(torch.func.grad(f))(x, target)
    # Stock raises an out-of-bounds error too (its vmap decomposition's gather).
    with pytest.raises((IndexError, RuntimeError), match="out of bounds"):
        torch.func.vmap(torch.func.grad(lambda x, t: F.cross_entropy(x, t)))(x, target)


def test_vmap_decomposes_the_routing_like_aten_cross_entropy_loss() -> None:
    # aten::cross_entropy_loss is decomposed by functorch under vmap; the
    # routing op must be too, or it runs the per-sample fallback instead.
    from patches import codegen

    oot.load()
    stock = codegen.installed_kernel_keys("aten::cross_entropy_loss")
    routing = codegen.installed_kernel_keys(f"{codegen.ROUTING_NAMESPACE}::cross_entropy_loss")
    assert ("FuncTorchBatchedDecomposition" in stock) == ("FuncTorchBatchedDecomposition" in routing)
