"""``cross_entropy`` as ``docs/semantics.md`` states it, one rule at a time."""

from __future__ import annotations

from typing import Optional

import torch
from torch.nn import _reduction as legacy_reduction

from reference import checks


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """CE-PRECISION: half types are computed in float32 and rounded once at the end."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _TimesLogProb(torch.autograd.Function):
    """``t * logp`` with ``0 * log 0 = 0`` (CE-DIV-ZERO-LOG-ZERO).

    ``torch.where(t == 0, 0, t * logp)`` would give the right value but a NaN
    target gradient (``0 * -inf`` in ``mul``'s backward); the spec asks for the
    true derivative ``logp`` there (CE-GRAD-TARGET), so the product gets its own
    derivative.  Its backward is built from differentiable ops, so double
    backward works, and ``jvp`` serves forward-mode AD; functorch derives its
    batch rule from these (``generate_vmap_rule``), so ``vmap`` needs no fallback.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(t: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
        return torch.where(t == 0, torch.zeros_like(logp), t * logp)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        t, logp = inputs
        ctx.save_for_backward(t, logp)
        ctx.save_for_forward(t, logp)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        t, logp = ctx.saved_tensors
        return grad * logp, grad * t

    @staticmethod
    def jvp(ctx, t_dot: torch.Tensor, logp_dot: torch.Tensor) -> torch.Tensor:
        t, logp = ctx.saved_tensors
        return _finite_product(t_dot, logp) + t * logp_dot


def _finite_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a * b`` where a zero tangent times an infinite log-probability is 0."""
    return torch.where(a == 0, torch.zeros_like(b), a * b)


def times_log_prob(t: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    return _TimesLogProb.apply(t, logp)


def _reduce(loss: torch.Tensor, reduction: str, denominator: torch.Tensor) -> torch.Tensor:
    """CE-REDUCE-NONE, CE-REDUCE-SUM, CE-INDEX-MEAN / CE-PROB-MEAN."""
    if reduction == "none":
        return loss
    total = loss.sum()
    return total if reduction == "sum" else total / denominator


def _weight_along_class_dim(weight: torch.Tensor, ndim: int, class_dim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[class_dim] = weight.numel()
    return weight.reshape(shape)


def _probability_loss(
    x: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
    reduction: str, eps: float, class_dim: int,
) -> torch.Tensor:
    n_classes = x.shape[class_dim]
    logp = torch.log_softmax(x, class_dim)                      # CE-LOGSOFTMAX
    if eps > 0:
        target = (1 - eps) * target + eps / n_classes           # CE-PROB-SMOOTH
    terms = times_log_prob(target, logp)                        # CE-PROB-LOSS, 0 * log 0 = 0
    if weight is not None:                                      # CE-PROB-WEIGHT
        terms = terms * _weight_along_class_dim(weight, x.dim(), class_dim)
    loss = -terms.sum(class_dim)
    # CE-PROB-MEAN: the number of positions, whatever the weight.
    positions = x.numel() / n_classes if n_classes else float("nan")
    return _reduce(loss, reduction, torch.tensor(positions, dtype=loss.dtype, device=loss.device))


def _index_loss(
    x: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
    reduction: str, ignore_index: int, eps: float, class_dim: int,
) -> torch.Tensor:
    n_classes = x.shape[class_dim]
    checks.check_index_range(target, n_classes, ignore_index)   # CE-ERR-RANGE
    if x.dim() == 1:                                            # CE-INDEX-SHAPE: () or (1,)
        target = target.reshape(())
    ignored = target == ignore_index                            # CE-INDEX-IGNORE
    safe_target = torch.where(ignored, torch.zeros_like(target), target).long()
    # CE-GRAD-IGNORED: ignored positions never reach log_softmax, so their gradient
    # is exactly zero even when their logits are not finite.
    x = x.masked_fill(ignored.unsqueeze(class_dim), 0)
    logp = torch.log_softmax(x, class_dim)                      # CE-LOGSOFTMAX
    if weight is None:
        weight = torch.ones(n_classes, dtype=x.dtype, device=x.device)
    target_weight = torch.where(ignored, torch.zeros((), dtype=x.dtype, device=x.device),
                                weight[safe_target])            # CE-INDEX-WEIGHT
    picked = logp.gather(class_dim, safe_target.unsqueeze(class_dim)).squeeze(class_dim)
    loss = -target_weight * picked                              # CE-INDEX-LOSS
    if eps > 0:                                                 # CE-INDEX-SMOOTH
        w = _weight_along_class_dim(weight, x.dim(), class_dim)
        smooth = -(logp * w).sum(class_dim)
        smooth = torch.where(ignored, torch.zeros_like(smooth), smooth)
        loss = (1 - eps) * loss + eps / n_classes * smooth
    # CE-INDEX-MEAN: the summed weights of the targets that are not ignored.
    return _reduce(loss, reduction, target_weight.sum())


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
    size_average: Optional[bool] = None,
    ignore_index: int = -100,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Reference ``cross_entropy``: same signature and defaults as ``F.cross_entropy`` (CE-ARGS)."""
    if size_average is not None or reduce is not None:
        reduction = legacy_reduction.legacy_get_string(size_average, reduce)
    # CE-ARGS / CE-ERR-REDUCTION: stock's own mapping (also "elementwise_mean" with its warning).
    reduction = ("none", "mean", "sum")[legacy_reduction.get_enum(reduction)]
    eps = float(label_smoothing)
    if input.shape == target.shape:                             # CE-KIND
        checks.check_probability_target(input, target, weight, ignore_index, eps)
        result_dtype = torch.promote_types(input.dtype, target.dtype)
    else:
        checks.check_index_target(input, target, weight, eps)
        result_dtype = input.dtype
    class_dim = 0 if input.dim() == 1 else 1                    # CE-SHAPE
    compute_dtype = opmath_dtype(result_dtype)                  # CE-PRECISION
    x = input.to(compute_dtype)
    w = weight.to(compute_dtype) if weight is not None else None
    if input.shape == target.shape:
        loss = _probability_loss(x, target.to(compute_dtype), w, reduction, eps, class_dim)
    else:
        loss = _index_loss(x, target, w, reduction, ignore_index, eps, class_dim)
    return loss.to(result_dtype)                                # CE-PRECISION: one rounding
