"""CE-SYS-DYNAMO: ``torch.compile(fullgraph=True)`` of the loss, its values and its recompilations.

A graph break, or a guard on a value that changes from step to step (an
``ignore_index`` specialised into the graph, a batch size), costs every training
loop a recompilation; the spec allows no more recompilations than stock's
composite causes, measured in the same test with the same counter.

Implementations other than ``compile`` are compiled with the ``aot_eager``
backend: it runs Dynamo, AOTAutograd, FakeTensor propagation through the meta
functions and functionalization exactly as Inductor's front end does, without
minutes of C++ code generation on the CI's two cores.  ``compile`` is already
``torch.compile(F.cross_entropy, fullgraph=True)`` on Inductor and is used as is
(its dynamic-shape clause marks the batch dim dynamic instead of passing
``dynamic=True``).
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch._dynamo.utils import counters

from conformance import compare
from conformance.samples import SampleInput, SampleSpec
from conformance.subsystem_cases import (REFERENCE_DATA_DEPENDENT, clause_params, named_params,
                                         reference_loss)

BACKEND = "aot_eager"
VALUE_SPECS = (
    SampleSpec("index", (4, 5), "mean", weight=True, ignore_index=1, ignored="some", label_smoothing=0.1),
    SampleSpec("index", (3, 5, 4), "none", ignored="some"),
    SampleSpec("index", (2, 5, 3, 2), "sum", weight=True, label_smoothing=0.2),
    SampleSpec("prob", (4, 5), "mean", weight=True, label_smoothing=0.1),
    SampleSpec("prob", (3, 5, 4), "none"),
)
VALUE_PARAMS = clause_params("dynamo", ("fullgraph/static", "fullgraph/dynamic"), VALUE_SPECS, (torch.float32,))

IGNORE_INDICES = (-100, -1, 0, 1, 2, 3)
BATCH_SIZES = (2, 3, 4, 7, 9)
RECOMPILE_CASES = named_params("dynamo", ("recompiles/ignore_index/index/N,C=4x5/mean",
                                          "recompiles/batch_size/index/N,C=Nx5/mean",
                                          "recompiles/batch_size/prob/N,C=Nx5/mean"), torch.float32)


def _skip_untraceable(impl_name: str, kind: str) -> None:
    if impl_name == "reference" and kind == "index":
        pytest.skip(REFERENCE_DATA_DEPENDENT)


def compiled(impl_name: str, impl: Callable, dynamic: Optional[bool] = None) -> Callable:
    """The implementation under Dynamo, as the module docstring explains.

    ``dynamic=None`` is torch.compile's default (static first, automatic dynamic on a
    size change); ``False`` would forbid dynamic shapes and recompile for every size.
    """
    if impl_name == "compile":
        return impl
    return torch.compile(impl, backend=BACKEND, fullgraph=True, dynamic=dynamic)


def stock_compiled(impl_name: str) -> Callable:
    """Stock ``F.cross_entropy`` compiled the way the implementation under test is."""
    if impl_name == "compile":
        return torch.compile(F.cross_entropy, fullgraph=True)
    return torch.compile(F.cross_entropy, backend=BACKEND, fullgraph=True)


def graphs_compiled(fn: Callable, samples: Sequence[SampleInput]) -> Tuple[int, List[torch.Tensor]]:
    """(graphs Dynamo compiled, results) for calls from a fresh Dynamo state."""
    torch._dynamo.reset()
    counters.clear()
    results = [compare.forward(fn, sample) for sample in samples]
    return counters["stats"]["unique_graphs"], results


@pytest.mark.parametrize("case,spec", VALUE_PARAMS)
def test_fullgraph_values(case, spec, impl, impl_name, device):
    """fullgraph=True traces without a graph break, statically and with dynamic shapes."""
    _skip_untraceable(impl_name, spec.kind)
    torch._dynamo.reset()  # every case compiles afresh: Dynamo's cache (and limit) is per code object
    dynamic = case.name.startswith("fullgraph/dynamic")
    sample = spec.build(device, torch.float32)
    fn = compiled(impl_name, impl, dynamic=True if dynamic else None)
    if dynamic and impl_name == "compile":
        torch._dynamo.mark_dynamic(sample.input, 0)
        torch._dynamo.mark_dynamic(sample.target, 0)
    compare.assert_matches(case, compare.forward(fn, sample), reference_loss(sample), "compiled loss")


def _recompile_samples(case_name: str, device: str) -> List[SampleInput]:
    if case_name.startswith("recompiles/ignore_index"):
        base = SampleSpec("index", (4, 5), "mean")
        sample = base.build(device, torch.float32)
        sample.target = torch.tensor([0, 1, 2, 3], device=device)  # every ignore_index below but -100/-1 hits
        return [SampleInput(SampleSpec("index", (4, 5), "mean", ignore_index=i, ignored="some"),
                            sample.input, sample.target, None) for i in IGNORE_INDICES]
    kind = case_name.split("/")[2]
    return [SampleSpec(kind, (n, 5), "mean").build(device, torch.float32) for n in BATCH_SIZES]


@pytest.mark.parametrize("case", RECOMPILE_CASES, ids=str)
def test_recompiles(case, impl, impl_name, device):
    """No more graphs than stock for a changing ignore_index or batch size; each call's value right."""
    kind = case.name.split("/")[2]
    _skip_untraceable(impl_name, kind)
    samples = _recompile_samples(case.name, device)
    stock_graphs, _ = graphs_compiled(stock_compiled(impl_name), samples)
    graphs, results = graphs_compiled(compiled(impl_name, impl), samples)
    for sample, result in zip(samples, results):
        compare.assert_matches(case, result, reference_loss(sample), f"loss for {sample.spec.id}")
    assert graphs <= stock_graphs, (
        f"{len(samples)} calls compiled {graphs} graphs; stock F.cross_entropy compiled {stock_graphs}")
