"""An independent float64 NumPy statement of ``docs/semantics.md``.

Written from the formulas alone (class axis moved last, explicit log-sum-exp,
explicit denominators, the closed-form gradients of CE-GRAD-INPUT / CE-GRAD-TARGET),
sharing no code with ``reference/``, so that the two can check each other.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np


def _rows(x: np.ndarray) -> Tuple[np.ndarray, int]:
    """(positions, C) view of the logits, class axis last."""
    class_axis = 0 if x.ndim == 1 else 1
    c = x.shape[class_axis]
    return np.moveaxis(x, class_axis, -1).reshape(-1, c), c


def _back(rows: np.ndarray, like: np.ndarray) -> np.ndarray:
    class_axis = 0 if like.ndim == 1 else 1
    moved_shape = np.moveaxis(np.empty(like.shape), class_axis, -1).shape
    return np.moveaxis(rows.reshape(moved_shape), -1, class_axis)


def log_softmax_rows(z: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        m = z.max(axis=1, keepdims=True)
        m_safe = np.where(np.isfinite(m), m, 0.0)
        lse = m_safe + np.log(np.exp(z - m_safe).sum(axis=1, keepdims=True))
        return z - lse


def _smoothed(t: np.ndarray, eps: float, c: int) -> np.ndarray:
    return (1 - eps) * t + eps / c if eps > 0 else t


def cross_entropy(x: np.ndarray, target: np.ndarray, weight: Optional[np.ndarray], ignore_index: int,
                  reduction: str, eps: float) -> np.ndarray:
    z, c = _rows(x)
    w = np.ones(c) if weight is None else weight
    logp = log_softmax_rows(z)
    with np.errstate(invalid="ignore"):
        if target.shape == x.shape:                               # probabilities
            t = _smoothed(_rows(target)[0], eps, c)
            per = -(w * np.where(t == 0, 0.0, t * logp)).sum(axis=1)  # 0 * log 0 = 0
            denominator = z.shape[0]
        else:                                                     # class indices
            y = target.reshape(-1)
            keep = y != ignore_index
            y_safe = np.where(keep, y, 0)
            nll = -w[y_safe] * logp[np.arange(len(y)), y_safe]
            per = nll
            if eps > 0:
                per = (1 - eps) * nll + eps / c * -(w * logp).sum(axis=1)
            per = np.where(keep, per, 0.0)
            denominator = np.where(keep, w[y_safe], 0.0).sum()
    loss = per.reshape(target.shape if target.shape != x.shape else np.moveaxis(x, 0 if x.ndim == 1 else 1, -1).shape[:-1])
    if reduction == "none":
        return loss
    total = loss.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(total if reduction == "sum" else total / np.float64(denominator))


def gradients(x: np.ndarray, target: np.ndarray, weight: Optional[np.ndarray], ignore_index: int,
              reduction: str, eps: float, grad_out: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Closed-form d loss / d input and, for probabilities, d loss / d target."""
    z, c = _rows(x)
    w = np.ones(c) if weight is None else weight
    logp = log_softmax_rows(z)
    with np.errstate(invalid="ignore"):
        p = np.exp(logp)
    n = z.shape[0]
    g = np.broadcast_to(grad_out.reshape(-1) if reduction == "none" else grad_out.reshape(()), (n,)).copy()
    if target.shape == x.shape:
        t = _smoothed(_rows(target)[0], eps, c)
        if reduction == "mean":
            g = g / n
        a = g[:, None]
        grad_x = a * (w * t).sum(axis=1, keepdims=True) * p - a * w * t
        scale = (1 - eps) if eps > 0 else 1.0
        grad_t = -scale * a * w * logp
        return _back(grad_x, x), _back(grad_t, x)
    y = target.reshape(-1)
    keep = y != ignore_index
    y_safe = np.where(keep, y, 0)
    if reduction == "mean":
        with np.errstate(divide="ignore", invalid="ignore"):
            g = g / np.where(keep, w[y_safe], 0.0).sum()
    eps_ = eps if eps > 0 else 0.0
    one_hot = np.eye(c)[y_safe]
    coefficient = (1 - eps_) * w[y_safe] + eps_ / c * w.sum()
    grad_x = g[:, None] * (coefficient[:, None] * p - ((1 - eps_) * w[y_safe][:, None] * one_hot + eps_ / c * w))
    grad_x = np.where(keep[:, None], grad_x, 0.0)
    return _back(grad_x, x), None
