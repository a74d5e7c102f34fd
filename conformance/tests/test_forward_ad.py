"""Forward-mode AD: the JVP along seeded directions matches the reference (CE-GRAD-HIGHER).

A NaN mean over nothing (CE-EMPTY, CE-ALL-IGNORED) has no derivative; those samples
are left to the forward and backward families.
"""

import pytest
import torch
import torch.autograd.forward_ad as fwAD

from conformance import compare
from conformance.cases import cases
from conformance.samples import small_samples


def tangent_like(primal: torch.Tensor, salt: str, values_dtype: torch.dtype) -> torch.Tensor:
    """A seeded tangent with the primal's exact strides.

    Forward AD requires a tangent laid out like its primal; for an expanded
    (stride-0) primal that means an expanded tangent too.
    """
    storage = primal.untyped_storage().nbytes() // primal.element_size()
    flat = compare.seeded_like(torch.empty(storage, dtype=primal.dtype, device=primal.device), salt, values_dtype)
    return flat.as_strided(primal.shape, primal.stride(), primal.storage_offset())


def tangents(sample, salt: str, values_dtype: torch.dtype):
    """Seeded directions for the input and, for probability targets, the target."""
    tx = tangent_like(sample.input, salt + "|x", values_dtype)
    tt = tangent_like(sample.target, salt + "|t", values_dtype) if sample.spec.kind == "prob" else None
    return tx, tt


def jvp(fn, sample, directions) -> torch.Tensor:
    """Tangent of the loss when input (and probability target) move along ``directions``."""
    tx, tt = directions
    with fwAD.dual_level():
        x = fwAD.make_dual(sample.input.detach(), tx.to(sample.input.dtype))
        target = sample.target
        if tt is not None:
            target = fwAD.make_dual(target.detach(), tt.to(target.dtype))
        out = fn(x, target, **sample.kwargs)
        return fwAD.unpack_dual(out).tangent


@pytest.mark.parametrize(
    "case", cases("forward_ad", (s for s in small_samples() if s.finite and not s.undefined_mean), (torch.float64, torch.float32)), ids=str)
def test_forward_ad(case, impl, device):
    sample = case.spec.build(device, case.dtype)
    directions = tangents(sample, case.spec.id, case.dtype)
    actual = jvp(impl, sample, directions)
    expected = jvp(compare.reference(), sample.cast(torch.float64), directions)
    assert actual is not None, "no tangent: forward-mode AD did not reach the loss"
    compare.assert_matches(case, actual, expected, "tangent")
