"""The series' decompositions of ``_fused_cross_entropy`` compute what the fused kernels compute.

Export (``run_decompositions``) replaces the fused ops by these decompositions, so
an exported model must get the kernels' loss, log-sum-exp and gradients: compared
here on the conformance samples, non-finite logits and ignored non-finite rows
included, in every dtype the kernels take.
"""

from __future__ import annotations

import pytest
import torch

from conformance import samples, tolerances
from patches import oot, python_hunks

aten = torch.ops.aten
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def _fused_path_specs() -> list:
    """Small samples the fused op itself takes (the others never reach it)."""
    return [spec for spec in samples.small_samples()
            if spec.shape[0 if len(spec.shape) == 1 else 1] > 0
            and not (spec.kind == "prob" and spec.ignore_index is not None and spec.ignore_index >= 0)
            and not (len(spec.shape) == 1 and spec.kind == "index" and spec.shape[0] == 1)]


SPECS = _fused_path_specs()


@pytest.fixture(scope="module")
def decompositions():
    oot.load()
    python_hunks.apply()
    from torch._decomp import decomposition_table

    return (decomposition_table[aten._fused_cross_entropy.default],
            decomposition_table[aten._fused_cross_entropy_backward.default])


def _assert_close(actual, expected, dtype, what: str) -> None:
    ratio = tolerances.error_ratio(actual, expected, dtype)
    assert ratio <= 1, f"{what}: error {ratio:.3g} x tolerance\n{actual}\n{expected}"


def test_the_spread_covers_the_hard_cases() -> None:
    logits = {spec.logits for spec in SPECS}
    assert {"neginf", "neginf_target", "nan", "extreme", "ignored_neginf_row"} <= logits
    assert {spec.kind for spec in SPECS} == {"index", "prob"}
    assert any(len(spec.shape) == 1 for spec in SPECS) and any(len(spec.shape) >= 4 for spec in SPECS)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.id)
def test_decomposition_matches_the_kernels(spec, dtype, decompositions) -> None:
    forward, backward = decompositions
    sample = spec.build("cpu", dtype)
    args = (sample.input, sample.target, sample.weight, REDUCTIONS[spec.reduction],
            spec.ignore_value, spec.label_smoothing)
    loss, lse = aten._fused_cross_entropy(*args)
    loss_d, lse_d = forward(*args)
    _assert_close(loss_d, loss, dtype, "loss")
    assert loss_d.dtype == loss.dtype
    # log_sum_exp: float64 for float32/float64 input, float for Half/BFloat16.
    assert lse_d.dtype == (torch.float32 if dtype in (torch.float16, torch.bfloat16) else torch.float64)
    # Stored wider, it is still computed in the op-math type: compared at that type's tolerance.
    _assert_close(lse_d, lse, torch.float64 if dtype == torch.float64 else torch.float32, "log_sum_exp")

    is_prob = spec.kind == "prob"
    grad_output = torch.randn(loss.shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
    rest = (sample.weight, REDUCTIONS[spec.reduction], spec.ignore_value, spec.label_smoothing)
    grads = aten._fused_cross_entropy_backward(grad_output, sample.input, sample.target, *rest,
                                               lse, [True, is_prob])
    grads_d = backward(grad_output, sample.input, sample.target, *rest, lse_d, [True, is_prob])
    _assert_close(grads_d[0], grads[0], dtype, "grad_input")
    if is_prob:
        _assert_close(grads_d[1], grads[1], dtype, "grad_target")
    else:
        assert grads_d[1] is None
    if spec.logits == "ignored_neginf_row":
        ignored = (sample.target == spec.ignore_value).unsqueeze(1).expand_as(sample.input)
        assert bool((grads_d[0][ignored] == 0).all()), "ignored positions must get exactly 0"


def test_symbolic_ignore_index_is_not_specialised(decompositions) -> None:
    """ignore_index may be a SymInt: tracing the decomposition must not branch on it."""
    from torch.fx.experimental.proxy_tensor import make_fx

    forward, backward = decompositions
    x, y = torch.randn(4, 5), torch.tensor([0, 3, 2, 3])

    def loss_and_grad(x, y, ignore):
        loss, lse = forward(x, y, None, 1, ignore.item(), 0.1)
        return loss, backward(torch.ones(()), x, y, None, 1, ignore.item(), 0.1, lse, [True, False])[0]

    graph = make_fx(loss_and_grad, tracing_mode="symbolic")(x, y, torch.tensor(3))
    for ignore in (3, -100):
        loss, grad = graph(x, y, torch.tensor(ignore))
        expected = aten._fused_cross_entropy(x, y, None, 1, ignore, 0.1)
        expected_grad = aten._fused_cross_entropy_backward(torch.ones(()), x, y, None, 1, ignore, 0.1,
                                                           expected[1], [True, False])[0]
        _assert_close(loss, expected[0], torch.float32, f"loss, ignore_index={ignore}")
        _assert_close(grad, expected_grad, torch.float32, f"grad_input, ignore_index={ignore}")
