"""Accuracy on hard logits, measured against stock (CE-SYS-NUMERICS).

A fused kernel must not be less accurate than stock where stock is accurate.  The
hard cases are large logits (every row shifted by 30, 60 or 1000: shift-invariant
mathematically, but the logits and log-sum-exp lose low bits) and confident rows
(one logit 20..40 above the rest, the target being that class -- a gradient that is a
tiny difference ``p - 1`` -- or another class).  For each case the implementation and
stock ``torch.nn.functional.cross_entropy`` run in the same dtype on the same values,
and the float64 reference on those values is the truth.  With

    error(r) = max |r - float64 reference|   (over all elements)

the test asserts ``error(impl) <= 1.5 * error(stock) + floor`` for the input
gradient (incoming gradient all ones) and, separately, for the loss.

The floor is ``FLOOR_ULPS = 2`` ulps of the dtype at the result's scale (the largest
magnitude of the float64 result).  Why 2: where stock happens to be exact, an accurate
kernel may still carry one rounding of the result (1/2 ulp, CE-PRECISION), of the
softmax term ``exp(x - lse)`` (up to 1 ulp with the exp's own error) and of the
reduction scale ``1/N`` (1/2 ulp) -- 2 ulps together; anything above that is error the
implementation adds and stock does not.  At the result's scale, because an error
far below the largest element's ulp is invisible in the dtype anyway.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from typing import List, Tuple

import pytest
import torch
import torch.nn.functional as F

from conformance import compare
from conformance.cases import Case
from conformance.plugin import record_error

FAMILY = "numerics"
FLOOR_ULPS = 2.0
STOCK_FACTOR = 1.5
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One hard case: target kind, shape, reduction and how the logits are made hard."""

    kind: str                   # "index" or "prob"
    shape: Tuple[int, ...]      # (N, C, d1, ...)
    reduction: str              # "mean" or "none"
    logits: str                 # "offsetK" (every logit + K), "confident-hit", "confident-miss"

    @property
    def id(self) -> str:
        dims = "N,C" + "".join(f",d{i + 1}" for i in range(len(self.shape) - 2))
        return f"{self.kind}/{dims}={'x'.join(map(str, self.shape))}/{self.reduction}/{self.logits}"


def _scenarios() -> List[Scenario]:
    out = []
    for kind in ("index", "prob"):
        for reduction in ("mean", "none"):
            for logits in ("offset30", "offset60", "offset1000", "confident-hit", "confident-miss"):
                out.append(Scenario(kind, (64, 1000), reduction, logits))
            for logits in ("offset60", "confident-hit"):
                out.append(Scenario(kind, (4, 100, 4, 4), reduction, logits))
    return out


def _make(scenario: Scenario) -> Tuple[torch.Tensor, torch.Tensor]:
    """float64 logits and target (class indices, or probabilities) of the scenario."""
    gen = torch.Generator().manual_seed(zlib.crc32(scenario.id.encode()))
    shape = scenario.shape
    classes = shape[1]
    positions = shape[:1] + shape[2:]
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if scenario.logits.startswith("offset"):
        x = x + float(scenario.logits[len("offset"):])
        y = torch.randint(0, classes, positions, generator=gen)
    else:
        top = torch.randint(0, classes, positions, generator=gen)
        bump = 20 + 20 * torch.rand(positions, generator=gen, dtype=torch.float64)
        x = x + F.one_hot(top, classes).movedim(-1, 1) * bump.unsqueeze(1)
        other = (top + torch.randint(1, classes, positions, generator=gen)) % classes
        y = top if scenario.logits == "confident-hit" else other
    if scenario.kind == "prob":
        if scenario.logits.startswith("offset"):
            y = torch.softmax(2 * torch.randn(shape, generator=gen, dtype=torch.float64), 1)
        else:
            y = F.one_hot(y, classes).movedim(-1, 1).to(torch.float64)
    return x, y


def _loss_and_grad(fn, x: torch.Tensor, target: torch.Tensor, reduction: str) -> Tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_()
    loss = fn(x, target, reduction=reduction)
    (grad,) = torch.autograd.grad(loss, x, torch.ones_like(loss))
    return loss.detach(), grad


@functools.lru_cache(maxsize=None)
def _truth_and_stock(scenario: Scenario, dtype: torch.dtype, device: str):
    """(float64 reference on the CPU, stock on ``device``) on the scenario's values rounded to ``dtype``."""
    x64, y64 = _make(scenario)
    x = x64.to(dtype)
    y = y64.to(dtype) if scenario.kind == "prob" else y64
    y_ref = y.to(torch.float64) if scenario.kind == "prob" else y
    truth = _loss_and_grad(compare.reference(), x.to(torch.float64), y_ref, scenario.reduction)
    x, y = x.to(device), y.to(device)
    stock = _loss_and_grad(F.cross_entropy, x, y, scenario.reduction)
    return (x, y), truth, tuple(r.cpu() for r in stock)


def ulp(dtype: torch.dtype, scale: float) -> float:
    """Spacing of ``dtype`` numbers at magnitude ``scale`` (subnormal spacing below the normal range)."""
    info = torch.finfo(dtype)
    if scale < info.tiny:
        return info.tiny * info.eps
    return info.eps * 2.0 ** math.floor(math.log2(scale))


def _error(result: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    return (result.to(torch.float64) - truth).abs().nan_to_num(nan=math.inf)


def assert_not_worse_than_stock(case: Case, what: str, actual: torch.Tensor, stock: torch.Tensor,
                                truth: torch.Tensor) -> None:
    """error(actual) <= STOCK_FACTOR * error(stock) + FLOOR_ULPS ulps at the truth's scale."""
    assert actual.shape == truth.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(truth.shape)}"
    assert actual.dtype == case.dtype, f"{what}: dtype {actual.dtype} != {case.dtype}"
    errors = _error(actual, truth)
    error = float(errors.max())
    stock_error = float(_error(stock, truth).max())
    scale = float(truth.abs().max())
    floor = FLOOR_ULPS * ulp(case.dtype, scale)
    bound = STOCK_FACTOR * stock_error + floor
    record_error(case, error / bound if bound > 0 else (0.0 if error == 0 else math.inf))
    if not error <= bound:
        where = int(errors.flatten().argmax())
        raise AssertionError(
            f"{what}: max error {error:.3g} > {STOCK_FACTOR} x stock's {stock_error:.3g} + floor {floor:.3g} "
            f"({FLOOR_ULPS:g} ulps of {case.dtype_name} at scale {scale:.3g}); ratio to stock "
            f"{error / stock_error if stock_error else math.inf:.3g}; at flat index {where}: got "
            f"{actual.flatten()[where].item()!r}, stock {stock.flatten()[where].item()!r}, "
            f"float64 {truth.flatten()[where].item()!r}")


def _params():
    params = []
    for scenario in _scenarios():
        for what in ("grad", "loss"):
            for dtype in DTYPES:
                case = Case(FAMILY, dtype, name=f"{scenario.id}/{what}")
                params.append(pytest.param(case, scenario, what, id=str(case)))
    return params


@functools.lru_cache(maxsize=None)
def _measure(impl, scenario: Scenario, dtype: torch.dtype, device: str):
    (x, y), truth, stock = _truth_and_stock(scenario, dtype, device)
    actual = tuple(r.cpu() for r in _loss_and_grad(impl, x, y, scenario.reduction))
    return actual, truth, stock


@pytest.mark.parametrize("case,scenario,what", _params())
def test_numerics(case, scenario, what, impl, device):
    """CE-SYS-NUMERICS: the input gradient (``grad``) and the loss (``loss``) are no less
    accurate than stock's in the same dtype, up to the stated floor."""
    actual, truth, stock = _measure(impl, scenario, case.dtype, device)
    index = 1 if what == "grad" else 0
    label = "input gradient" if what == "grad" else "loss"
    assert_not_worse_than_stock(case, label, actual[index], stock[index], truth[index])
