"""The composite forms of the vocabulary-parallel shard ops equal their CPU kernels.

Why: CUDA (and every backend without shard kernels) runs the
``CompositeExplicitAutograd`` kernels of ``_fused_cross_entropy_shard_forward`` and
``_fused_cross_entropy_shard_backward``; CI has no GPU, so they are compared here, on the
CPU, with the fused CPU kernels (which ``test/nn/test_fused_cross_entropy.py`` checks
against the unsharded op), including -inf logits, ignored positions, K-dim and unbatched
inputs, weight and label smoothing.
"""

from __future__ import annotations

import zlib

import pytest
import torch

from patches import oot

COMPOSITE = torch._C.DispatchKey.CompositeExplicitAutograd
# num_classes of the whole input; this shard holds classes [10, 10 + C).
CLASS_START, NUM_CLASSES = 10, 25


@pytest.fixture(scope="module", autouse=True)
def _loaded() -> None:
    oot.load()


def _inputs(dtype: torch.dtype, shape: tuple[int, ...], prob: bool, weight: bool):
    g = torch.Generator().manual_seed(zlib.crc32(repr((dtype, shape, prob, weight)).encode()))
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    x.view(-1)[:2] = float("-inf")
    classes = shape[1] if len(shape) > 1 else shape[0]
    if prob:
        t = torch.rand(shape, generator=g).to(dtype)
        t.view(-1)[:2] = 0
    else:
        t = torch.randint(0, NUM_CLASSES, shape[:1] + shape[2:] if len(shape) > 1 else (), generator=g)
        if t.dim():
            t.view(-1)[0] = -100
            t.view(-1)[-1] = CLASS_START + 1  # a target in this shard
    w = (torch.rand(classes, generator=g) + 0.5).to(dtype) if weight else None
    return x, t, w


def _assert_same(kernel, composite, dtype: torch.dtype) -> None:
    tol = dict(atol=5e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-5)
    for a, b in zip(kernel, composite):
        if a is None:
            assert b is None
            continue
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, equal_nan=True, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(6, 10), (4, 7, 5), (10,)])
@pytest.mark.parametrize("prob", [False, True])
@pytest.mark.parametrize("weight", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_composite_equals_kernel(dtype, shape, prob, weight, eps) -> None:
    forward = torch.ops.aten._fused_cross_entropy_shard_forward.default
    backward = torch.ops.aten._fused_cross_entropy_shard_backward.default
    x, t, w = _inputs(dtype, shape, prob, weight)
    args = (x, t, w, -100, eps, CLASS_START, NUM_CLASSES)
    stats = forward(*args)
    _assert_same(stats, forward._op_dk(COMPOSITE, *args), dtype)

    opmath = torch.float32 if dtype == torch.bfloat16 else dtype
    lse_dtype = torch.float32 if dtype == torch.bfloat16 else torch.float64
    g = torch.Generator().manual_seed(1)
    grad_loss = torch.randn(stats[0].shape, generator=g).to(opmath)
    lse = (torch.randn(stats[0].shape, generator=g) + 3).to(lse_dtype)
    mass = torch.rand(stats[0].shape, generator=g).to(opmath)
    bargs = (grad_loss, x, t, w, -100, eps, lse, mass, CLASS_START, NUM_CLASSES, [True, prob])
    _assert_same(backward(*bargs), backward._op_dk(COMPOSITE, *bargs), dtype)


@pytest.mark.parametrize("op", ["_fused_cross_entropy_shard_forward", "_fused_cross_entropy_shard_backward"])
def test_shard_ops_have_no_silent_derivative(op) -> None:
    # Building blocks of loss_parallel()'s handlers (below autograd): a backward
    # through a direct call raises, as torchgen's autogradNotImplementedFallback does.
    x = torch.randn(3, 5, requires_grad=True)
    t = torch.tensor([0, 1, 2])
    if op.endswith("forward"):
        out = torch.ops.aten._fused_cross_entropy_shard_forward(x, t, None, -100, 0.0, 0, 5)[1]
    else:
        out = torch.ops.aten._fused_cross_entropy_shard_backward(
            torch.ones(3), x, t, None, -100, 0.0, torch.zeros(3, dtype=torch.float64), torch.ones(3),
            0, 5, [True, False])[0]
    with pytest.raises(RuntimeError, match=f"derivative for aten::{op} is not implemented"):
        out.sum().backward()
