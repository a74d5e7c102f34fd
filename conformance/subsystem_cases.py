"""Shared helpers for the subsystem families (export, dynamo, autocast, subclasses, robustness).

These families grade what happens to a call inside one of PyTorch's subsystems, so
their case names read as ``<clause>/<sample id>`` (e.g. ``decomposed/index/N,C=4x5/mean/plain``)
instead of a bare sample id; this module builds such cases and pairs them with
their sample, so that a test gets both from one parameter set.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

import pytest
import torch

from conformance import compare
from conformance.cases import Case
from conformance.samples import SampleInput, SampleSpec


REFERENCE_DATA_DEPENDENT = (
    "the reference validates class indices with data-dependent Python branches (reference/checks.py, "
    "`if bool(bad.any())`), which cannot run on traced, fake or meta tensors; it is the spec's oracle, "
    "not a traceable kernel")


def clause_params(family: str, clauses: Sequence[str], specs: Iterable[SampleSpec],
                  dtypes: Sequence[Optional[torch.dtype]]) -> List:
    """``pytest.param(case, spec)`` for each clause, sample and dtype, with the case as id.

    The case carries no spec (its subject is then ``name``), so the clause stays in the
    conformance id that divergences match; the spec travels as a second parameter.
    """
    params = []
    specs = list(specs)
    for clause in clauses:
        for spec in specs:
            for dtype in dtypes:
                case = Case(family, dtype, name=f"{clause}/{spec.id}")
                params.append(pytest.param(case, spec, id=str(case)))
    return params


def named_params(family: str, names: Iterable[str], dtype: Optional[torch.dtype] = None) -> List[Case]:
    """Cases without a sample, one per name (use with ``ids=str``)."""
    return [Case(family, dtype, name=name) for name in names]


def reference_loss(sample: SampleInput) -> torch.Tensor:
    """The float64 reference on the sample's (exactly representable) values."""
    return compare.forward(compare.reference(), sample.cast(torch.float64))


def traced_signature(impl_name: str, clause: str, spec: SampleSpec, dtype: torch.dtype, device: str) -> str:
    """``repr`` of (shape, dtype, device) of the real call and of the call under ``clause``.

    ``clause`` is ``fake`` (FakeTensorMode) or ``meta`` (meta-device inputs).  The real call
    comes first, as in a program that traces a function it has already run; meant to run in
    a crash-isolated child (``conformance.crash_isolation``), because a compiled kernel that
    is handed fake tensors dereferences their null data pointers.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from conformance.impls import get_impl

    impl = get_impl(impl_name)
    sample = spec.build(device, dtype)
    real = compare.forward(impl, sample)
    if clause == "fake":
        with FakeTensorMode() as mode:
            convert = mode.from_tensor
            out = compare.forward(impl, SampleInput(spec, convert(sample.input), convert(sample.target),
                                         None if sample.weight is None else convert(sample.weight)))
    else:
        convert = lambda t: t.to("meta")  # noqa: E731
        out = compare.forward(impl, SampleInput(spec, convert(sample.input), convert(sample.target),
                                     None if sample.weight is None else convert(sample.weight)))
    return repr({"real": (tuple(real.shape), str(real.dtype), str(real.device)),
                 clause: (tuple(out.shape), str(out.dtype), str(out.device))})
