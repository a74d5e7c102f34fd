"""CE-SYS-SUBCLASS: the loss on fake, meta, mode-intercepted, wrapped and unusual-layout tensors.

Tracing (FakeTensor, meta) needs a shape/dtype rule for every operator the call
reaches; tensor subclasses and ``TorchDispatchMode`` see the call after autograd,
one operator at a time, and must get the plain call's values and gradients.
Layouts without kernels (sparse COO, mkldnn, nested) must fail the way stock
fails, with the same exception type, measured here on stock ``F.cross_entropy``.
"""

from __future__ import annotations

import ast
from typing import Callable, List, Optional, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from conformance import compare
from conformance.crash_isolation import CallServer, assert_survived
from conformance.samples import SampleSpec
from conformance.subsystem_cases import (REFERENCE_DATA_DEPENDENT, clause_params, named_params,
                                         reference_loss)

SPECS = (
    SampleSpec("index", (4, 5), "mean", weight=True, ignored="some", label_smoothing=0.1),
    SampleSpec("index", (3, 5, 4), "none", ignored="some"),
    SampleSpec("prob", (4, 5), "none", label_smoothing=0.1),
    SampleSpec("prob", (2, 5, 3, 2), "mean", weight=True),
)
SHAPE_PARAMS = clause_params("subclasses", ("fake", "meta"), SPECS, (torch.float32, torch.bfloat16))
VALUE_PARAMS = clause_params("subclasses", ("dispatch-mode", "wrapper"), SPECS, (torch.float32,))
LAYOUT_CASES = named_params("subclasses", ("sparse-coo/index", "sparse-coo/prob", "mkldnn/index", "mkldnn/prob",
                                           "nested/index", "nested/prob", "nested-jagged/index"))
# Loads the implementation and warms the meta/fake machinery (lazy imports of the meta
# registrations and decompositions) once in the server, with no real kernel run, so that
# each forked child does not repeat seconds of imports.
ISOLATED_SETUP = """
from torch._subclasses.fake_tensor import FakeTensorMode
from conformance.impls import get_impl
from conformance.samples import SampleSpec
from conformance.subsystem_cases import traced_signature
from conformance.tests.test_subclasses import layout_outcomes
get_impl({impl_name!r})
_x, _t = torch.randn(2, 3, device="meta"), torch.zeros(2, dtype=torch.long, device="meta")
torch.nn.functional.cross_entropy(_x, _t, label_smoothing=0.1)
torch.nn.functional.cross_entropy(_x, _x.softmax(1))
with FakeTensorMode() as _mode:
    torch.nn.functional.cross_entropy(_mode.from_tensor(torch.empty(2, 3)), _mode.from_tensor(torch.empty(2, dtype=torch.long)))
"""
REFERENCE_LAYOUT_SKIP = ("the reference is plain strided torch ops transcribing the spec; which exception an "
                         "unsupported layout raises is a property of the operators a kernel registers")


class RecordingMode(TorchDispatchMode):
    """Passes every operator through unchanged and records its name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: List[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


class Wrapper(torch.Tensor):
    """A wrapper subclass: holds a plain tensor and unwraps it for every operator.

    ``__tensor_flatten__`` / ``__tensor_unflatten__`` make it a traceable wrapper
    subclass, the protocol torch.compile and export need to see through one.
    """

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, elem: torch.Tensor, requires_grad: bool = False) -> "Wrapper":
        out = torch.Tensor._make_wrapper_subclass(cls, elem.shape, strides=elem.stride(), dtype=elem.dtype,
                                                  device=elem.device, requires_grad=requires_grad)
        out.elem = elem
        return out

    def __repr__(self) -> str:
        return f"Wrapper({self.elem!r})"

    def __tensor_flatten__(self):
        return ["elem"], None

    @staticmethod
    def __tensor_unflatten__(inner_tensors, meta, outer_size, outer_stride) -> "Wrapper":
        return Wrapper(inner_tensors["elem"])

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        unwrap = lambda t: t.elem if isinstance(t, Wrapper) else t  # noqa: E731
        wrap = lambda t: Wrapper(t) if isinstance(t, torch.Tensor) and not isinstance(t, Wrapper) else t  # noqa: E731
        return tree_map(wrap, func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {})))


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.elem if isinstance(t, Wrapper) else t


@pytest.fixture(scope="module")
def isolated(impl_name):
    """A crash-isolated interpreter with the implementation loaded (see ``traced_signature``)."""
    with CallServer(ISOLATED_SETUP.format(impl_name=impl_name)) as server:
        yield server


@pytest.mark.parametrize("case,spec", SHAPE_PARAMS)
def test_shape_propagation(case, spec, impl_name, device, isolated):
    """Under FakeTensorMode / on meta: the real call's shape and dtype, and the expected device."""
    if impl_name == "reference" and spec.kind == "index":
        pytest.skip(REFERENCE_DATA_DEPENDENT)
    clause = case.name.split("/", 1)[0]
    expression = f"traced_signature({impl_name!r}, {clause!r}, {spec!r}, {case.dtype!r}, {device!r})"
    answer = isolated.run(expression)
    assert_survived(answer, f"the call under {clause}")
    assert answer["outcome"] == "returned", f"the call under {clause} raised {answer['type']}: {answer['detail']}"
    got = ast.literal_eval(answer["detail"])
    real_shape, real_dtype, real_device = got["real"]
    expected = (real_shape, real_dtype, "meta" if clause == "meta" else real_device)
    assert tuple(got[clause]) == expected, f"{clause}: (shape, dtype, device) {got[clause]}, expected {expected}"


@pytest.fixture
def fresh_dynamo():
    """Dynamo remembers a frame it refused (e.g. under a dispatch mode) and then skips it for good;
    reset afterwards so that ``compile`` is graded afresh by the tests that follow."""
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("case,spec", VALUE_PARAMS)
def test_values_and_gradients(case, spec, impl, device, fresh_dynamo):
    """A dispatch mode / wrapper subclass sees the call op by op and must not change a value or gradient."""
    plain = spec.build(device, case.dtype)
    plain_leaves = compare.differentiable_inputs(plain)
    plain_out = compare.forward(impl, plain)
    grad_out = compare.seeded_like(plain_out, f"subclasses|{spec.id}", case.dtype)
    plain_grads = torch.autograd.grad(plain_out, plain_leaves, grad_out)

    sample = spec.build(device, case.dtype)
    if case.name.startswith("dispatch-mode/"):
        leaves = compare.differentiable_inputs(sample)
        with RecordingMode() as mode:
            out = compare.forward(impl, sample)
            grads = torch.autograd.grad(out, leaves, grad_out)
        assert mode.ops, "the dispatch mode saw no operator"
    else:
        prob = spec.kind == "prob"
        sample.input = Wrapper(sample.input, requires_grad=True)
        sample.target = Wrapper(sample.target, requires_grad=prob)
        sample.weight = None if sample.weight is None else Wrapper(sample.weight)
        leaves = [sample.input] + ([sample.target] if prob else [])
        out = compare.forward(impl, sample)
        assert isinstance(out, Wrapper), f"the loss of Wrapper inputs is a {type(out).__name__}"
        grads = torch.autograd.grad(out, leaves, Wrapper(grad_out))
    out, grads = _plain(out), [_plain(g) for g in grads]
    compare.assert_matches(case, out, reference_loss(plain), "loss")
    torch.testing.assert_close(out, plain_out, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"loss vs plain call: {m}")
    for name, g, p in zip(("input gradient", "target gradient"), grads, plain_grads):
        torch.testing.assert_close(g, p, rtol=0, atol=0, equal_nan=True, msg=lambda m, n=name: f"{n} vs plain call: {m}")


def _layout_call(name: str, device: str) -> Optional[Tuple[tuple, dict]]:
    """The call on an unusual layout, or None where this build lacks the layout."""
    layout, kind = name.split("/")
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(4, 5, generator=gen).to(device)
    target = (torch.tensor([0, 1, 2, 3], device=device) if kind == "index"
              else torch.softmax(torch.randn(4, 5, generator=gen), 1).to(device))
    if layout == "sparse-coo":
        return (x.to_sparse(), target), {}
    if layout == "mkldnn":
        if device != "cpu" or not torch.backends.mkldnn.is_available():
            return None
        return (x.to_mkldnn(), target.to_mkldnn() if kind == "prob" else target), {}
    nested_layout = torch.jagged if layout == "nested-jagged" else torch.strided
    rows = [x[:2], x[2:]]
    targets = [target[:2], target[2:]]
    return (torch.nested.nested_tensor(rows, layout=nested_layout),
            torch.nested.nested_tensor(targets, layout=nested_layout)), {}


def _outcome(fn: Callable, args: tuple, kwargs: dict):
    """The exception type's name raised, or the result."""
    try:
        return fn(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - the type is what is compared
        return type(error).__name__


def layout_outcomes(impl_name: str, name: str, device: str) -> str:
    """``repr`` of {"stock": ..., "impl": ...}: the exception type name each raises, or "returned".

    Runs in the crash-isolated child: ``torch.compile`` aborts the process on a nested input.
    Where both return, "equal" says whether the values agree.
    """
    from conformance.impls import get_impl

    args, kwargs = _layout_call(name, device)
    stock = _outcome(F.cross_entropy, args, kwargs)
    args, kwargs = _layout_call(name, device)
    got = _outcome(get_impl(impl_name), args, kwargs)
    answer = {"stock": stock if isinstance(stock, str) else "returned",
              "impl": got if isinstance(got, str) else "returned"}
    if not isinstance(stock, str) and not isinstance(got, str):
        answer["equal"] = bool(torch.allclose(got.to_dense(), stock.to_dense(), equal_nan=True))
    return repr(answer)


@pytest.mark.parametrize("case", LAYOUT_CASES, ids=str)
def test_layouts(case, impl_name, device, isolated):
    """Stock's exception type (measured in the same child) for layouts without kernels."""
    if impl_name == "reference":
        pytest.skip(REFERENCE_LAYOUT_SKIP)
    if _layout_call(case.name, device) is None:
        pytest.skip(f"{case.name.split('/')[0]} tensors are not available in this build/device")
    answer = isolated.run(f"layout_outcomes({impl_name!r}, {case.name!r}, {device!r})")
    assert_survived(answer, f"the call on a {case.name.split('/')[0]} input")
    assert answer["outcome"] == "returned", f"measuring raised {answer['type']}: {answer['detail']}"
    got = ast.literal_eval(answer["detail"])
    if got["stock"] != "returned":
        assert got["impl"] == got["stock"], f"stock raises {got['stock']}; the implementation: {got['impl']}"
    else:
        assert got["impl"] == "returned", f"stock returns a result; the implementation raises {got['impl']}"
        assert got["equal"], "stock and the implementation return different values"
