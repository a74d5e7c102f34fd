"""Argument validation that mirrors stock PyTorch 2.13, message for message.

Stock ``cross_entropy`` reaches its checks through several code paths (probability
targets, ``nll_loss`` for 1-D/2-D input, ``nll_loss2d`` for K-dim input), and each path
words its errors differently.  The reference must raise the same exception type and
message (rules ``CE-ERR-*``), so the checks are written per path, in stock's order.
"""

from __future__ import annotations

from typing import Optional

import torch

INDEX_TARGET_DTYPES = (torch.int64, torch.uint8)


def _shape(t: torch.Tensor) -> str:
    return str(list(t.shape))


def dtype_name(dtype: torch.dtype) -> str:
    """The name ATen prints for a scalar type (``Long``, ``Float`` ...)."""
    names = {
        torch.float64: "Double", torch.float32: "Float", torch.float16: "Half",
        torch.bfloat16: "BFloat16", torch.int64: "Long", torch.int32: "Int",
        torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte", torch.bool: "Bool",
        torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
    }
    return names.get(dtype, str(dtype).replace("torch.", ""))


def check_label_smoothing(label_smoothing: float) -> None:
    """CE-SMOOTH-RANGE / CE-ERR-SMOOTHING: only values above 1 are rejected."""
    if label_smoothing > 0.0 and not label_smoothing <= 1.0:
        raise RuntimeError(
            f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing:g}"
        )


def check_input_dtype(input: torch.Tensor) -> None:
    """CE-ERR-INPUT-DTYPE: stock fails inside ``log_softmax`` for non-floating input."""
    if not input.is_floating_point():
        kernel = "log_softmax_lastdim_kernel_impl" if input.dim() <= 2 else "log_softmax_kernel_impl"
        raise NotImplementedError(f'"{kernel}" not implemented for \'{dtype_name(input.dtype)}\'')


def check_class_dim_exists(input: torch.Tensor) -> None:
    """CE-ERR-0D: stock's ``log_softmax(input, 1)`` on a 0-d tensor."""
    if input.dim() == 0:
        raise IndexError("Dimension specified as 1 but tensor has no dimensions")


def check_probability_target(
    input: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
    ignore_index: int, label_smoothing: float,
) -> None:
    """CE-ERR-PROB-DTYPE, CE-ERR-PROB-IGNORE, CE-ERR-SMOOTHING, CE-ERR-WEIGHT-SHAPE."""
    if not target.is_floating_point():
        raise RuntimeError(
            "Expected floating point type for target with class probabilities, "
            f"got {dtype_name(target.dtype)}"
        )
    if ignore_index >= 0:
        raise RuntimeError("ignore_index is not supported for floating point target")
    check_label_smoothing(label_smoothing)
    check_class_dim_exists(input)
    n_classes = input.shape[0 if input.dim() == 1 else 1]
    if weight is not None and not (weight.dim() == 1 and weight.numel() == n_classes):
        raise RuntimeError(
            f"cross_entropy: weight tensor should be defined either for all {n_classes} "
            f"classes or no classes but got weight tensor of shape: {_shape(weight)}"
        )
    check_input_dtype(input)


def check_index_target(
    input: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
    label_smoothing: float,
) -> None:
    """Stock's class-index path: ``log_softmax`` then ``nll_loss_nd``'s checks."""
    check_label_smoothing(label_smoothing)
    check_class_dim_exists(input)
    check_input_dtype(input)
    if input.dim() != 1 and target.dim() >= 1 and input.shape[0] != target.shape[0]:
        raise ValueError(
            f"Expected input batch_size ({input.shape[0]}) to match target batch_size ({target.shape[0]})."
        )
    if input.dim() == 1 and target.dim() == 1 and target.shape[0] != 1:
        raise ValueError(
            f"For 1D input, 1D target must have size 1, but got target size: {target.shape[0]}"
        )
    if input.dim() <= 2:
        _check_nll_loss(input, target, weight)
        if input.dim() == 1 and target.dim() == 1 and label_smoothing > 0:
            # CE-INDEX-SHAPE: stock's smoothing term cannot broadcast a (1,) target's loss.
            raise RuntimeError("output with shape [] doesn't match the broadcast shape [1]")
    else:
        _check_nll_loss2d(input, target, weight)


def _check_target_dtype(target: torch.Tensor) -> None:
    if target.dtype not in INDEX_TARGET_DTYPES:
        raise RuntimeError(
            f"expected target dtype to be Long or Byte, but got {dtype_name(target.dtype)}"
        )


def _check_weight_dtype(input: torch.Tensor, weight: Optional[torch.Tensor]) -> None:
    if weight is not None and weight.dtype != input.dtype:
        raise RuntimeError(
            f"expected scalar type {dtype_name(input.dtype)} but found {dtype_name(weight.dtype)}"
        )


def _check_nll_loss(input: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor]) -> None:
    """Stock ``nll_loss`` (1-D / 2-D input)."""
    if target.dim() > 1:
        raise RuntimeError("0D or 1D target tensor expected, multi-target not supported")
    n_classes = input.shape[-1]
    if weight is not None and not (weight.dim() == 1 and weight.numel() == n_classes):
        raise RuntimeError(
            f"weight tensor should be defined either for all {n_classes} classes or no "
            f"classes but got weight tensor of shape: {_shape(weight)}"
        )
    _check_target_dtype(target)
    _check_weight_dtype(input, weight)


def _check_nll_loss2d(input: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor]) -> None:
    """Stock ``nll_loss_nd`` for K-dim input, which ends in ``nll_loss2d``."""
    _check_target_dtype(target)
    expected = [input.shape[0], *input.shape[2:]]
    if list(target.shape) != expected:
        if input.dim() == 4:
            raise RuntimeError(
                f"size mismatch (got input: {_shape(input)} , target: {_shape(target)}"
            )
        raise RuntimeError(f"Expected target size {expected}, got {_shape(target)}")
    if weight is not None and not (weight.dim() == 1 and weight.numel() == input.shape[1]):
        raise RuntimeError("weight tensor should be defined either for all or no classes")
    if target.dtype != torch.int64:
        raise RuntimeError(f"expected scalar type Long but found {dtype_name(target.dtype)}")
    _check_weight_dtype(input, weight)


def check_index_range(target: torch.Tensor, n_classes: int, ignore_index: int) -> None:
    """CE-ERR-RANGE: a class index outside [0, C) that is not ignored."""
    bad = (target != ignore_index) & ((target < 0) | (target >= n_classes))
    if bool(bad.any()):
        value = int(target[bad].flatten()[0])
        raise IndexError(f"Target {value} is out of bounds.")
