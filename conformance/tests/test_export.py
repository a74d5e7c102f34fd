"""CE-SYS-EXPORT: ``torch.export`` of a module calling the loss, before and after decompositions.

Export is how a model leaves Python (ExecuTorch, AOTInductor); backends only
implement the core ATen opset, so after ``run_decompositions()`` every operator
left in the graph must carry ``torch.Tag.core``.  A new aten operator without a
decomposition survives decomposition and breaks those backends.  Both programs
must also compute the loss: compared with the float64 reference.
"""

from __future__ import annotations

import functools
import operator
from typing import List, Optional, Tuple

import pytest
import torch

from conformance import compare
from conformance.impls import get_impl
from conformance.samples import SampleSpec
from conformance.subsystem_cases import clause_params, reference_loss

SPECS = (
    SampleSpec("index", (4, 5), "mean", weight=True, ignore_index=1, ignored="some", label_smoothing=0.1),
    SampleSpec("index", (4, 5), "none"),
    SampleSpec("index", (3, 5, 4), "sum", weight=True, ignored="some"),
    SampleSpec("index", (2, 5, 3, 2), "mean", label_smoothing=0.2),
    SampleSpec("prob", (4, 5), "mean", weight=True, label_smoothing=0.1),
    SampleSpec("prob", (3, 5, 4), "none"),
)
CLAUSES = ("exported", "decomposed", "core-ops")
PARAMS = clause_params("export", CLAUSES, SPECS, (torch.float32,))

COMPILE_SKIP = ("torch.export traces the Python callable itself; exporting a torch.compile'd function "
                "exports Dynamo's wrapper, not the loss (the underlying F.cross_entropy is graded as 'torch')")
REFERENCE_SKIP = ("the reference is a Python transcription of the spec, not an exportable kernel: it validates "
                  "class indices with data-dependent branches (reference/checks.py, `if bool(bad.any())`) that "
                  "export cannot trace, and the operators it lowers to are not part of the spec")


class LossModule(torch.nn.Module):
    """The loss with its non-tensor arguments fixed, as a model's last layer has them."""

    def __init__(self, impl_name: str, spec: SampleSpec) -> None:
        super().__init__()
        self.impl_name = impl_name
        self.options = spec.kwargs(None)

    def forward(self, input: torch.Tensor, target: torch.Tensor,
                weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        return get_impl(self.impl_name)(input, target, weight=weight, **self.options)


def _args(sample) -> Tuple[torch.Tensor, ...]:
    return (sample.input, sample.target) + ((sample.weight,) if sample.weight is not None else ())


@functools.lru_cache(maxsize=None)
def _programs(impl_name: str, spec: SampleSpec, device: str):
    """(exported, decomposed) programs, shared by the three clauses of one sample."""
    exported = torch.export.export(LossModule(impl_name, spec), _args(spec.build(device, torch.float32)))
    return exported, exported.run_decompositions()


def non_core_operators(graph: torch.fx.Graph) -> List[str]:
    """Call targets that are neither ``operator.getitem`` nor a core-tagged OpOverload."""
    bad = []
    for node in graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        target = node.target
        if not (isinstance(target, torch._ops.OpOverload) and torch.Tag.core in target.tags):
            bad.append(str(target))
    return sorted(set(bad))


@pytest.mark.parametrize("case,spec", PARAMS)
def test_export(case, spec, impl_name, device):
    if impl_name == "compile":
        pytest.skip(COMPILE_SKIP)
    if impl_name == "reference":
        pytest.skip(REFERENCE_SKIP)
    clause = case.name.split("/", 1)[0]
    exported, decomposed = _programs(impl_name, spec, device)
    if clause == "core-ops":
        bad = non_core_operators(decomposed.graph)
        assert not bad, f"operators without torch.Tag.core left after run_decompositions(): {bad}"
        return
    program = exported if clause == "exported" else decomposed
    sample = spec.build(device, torch.float32)
    compare.assert_matches(case, program.module()(*_args(sample)), reference_loss(sample), f"{clause} program's loss")
