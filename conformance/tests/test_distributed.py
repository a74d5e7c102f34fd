"""DTensor and DistributedDataParallel (CE-SYS-DTENSOR) on 2- and 4-rank gloo groups, 1-D and 2-D meshes.

The groups are started once per session (``distributed_run``) and run every case;
each test grades one case's per-rank results: values and gradients against the
float64 reference on the full tensors, the placements loss_parallel()'s contract
gives them, bitwise agreement of the loss across the ranks of a TP group, and, for
``repeat`` cases, bitwise equality of two runs.  A case that raised in a rank fails
with that rank's exception type and message.
"""

from typing import Any, Dict, List

import pytest
import torch
import torch.distributed as dist

from conformance import compare, distributed_cases, distributed_group
from conformance.cases import Case

CASES = [Case("distributed", c.dtype, name=c.name) for c in distributed_cases.CASES]


@pytest.fixture(scope="session")
def distributed_run(impl_name, impl, device) -> distributed_group.FamilyRun:
    """Every case, run once in one process group per world size (``impl`` first builds/loads it here)."""
    if device != "cpu":
        pytest.skip("the distributed family runs gloo groups on CPU; --device cuda is not covered")
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available in this build")
    return distributed_group.run_family(impl_name)


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape, dtype and bits (NaNs with the same payload count as equal)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().reshape(-1).view(bits), b.contiguous().reshape(-1).view(bits))


def _value_problems(case: Case, got: Dict[str, torch.Tensor], want: Dict[str, torch.Tensor], rank: int) -> List[str]:
    problems = []
    for what, value in want.items():
        if what not in got:
            problems.append(f"rank {rank} reported no {what}")
        elif value.dtype == torch.bool:
            if not torch.equal(got[what], value):
                problems.append(f"rank {rank} {what}: {got[what].tolist()} (the spec: {value.tolist()})")
        else:
            try:
                compare.assert_matches(case, got[what], value, f"rank {rank} {what}")
            except AssertionError as error:
                problems.append(str(error))
    return problems


def _repeat_problems(outcome: Dict[str, Any], rank: int) -> List[str]:
    second = outcome.get("second run")
    if second is None:
        return []
    return [f"rank {rank} {what}: a second run differs bitwise from the first"
            for what, value in outcome["values"].items() if not bitwise_equal(value, second[what])]


def _tp_group_problems(dcase: distributed_cases.DistCase, outcomes: Dict[int, Dict[str, Any]]) -> List[str]:
    """The ranks of one TP group (same coordinates on the other mesh dims) hold bitwise the same loss."""
    tp = dcase.tp_dim
    if not dcase.loss_parallel or tp is None or dcase.scenario != "loss":
        return []
    groups: Dict[tuple, List[int]] = {}
    for rank, outcome in outcomes.items():
        coordinate = tuple(outcome["coordinate"])
        groups.setdefault(coordinate[:tp] + coordinate[tp + 1:], []).append(rank)
    problems = []
    for ranks in groups.values():
        first = outcomes[ranks[0]]["local loss"]
        for rank in ranks[1:]:
            if not bitwise_equal(outcomes[rank]["local loss"], first):
                problems.append(f"rank {rank}'s local loss differs bitwise from rank {ranks[0]}'s in the same TP group")
    return problems


@pytest.mark.parametrize("case", CASES, ids=str)
def test_distributed(case, impl_name, distributed_run):
    if case.name not in distributed_cases.case_names(impl_name):
        pytest.skip("torch.compile on DTensors costs 15-35 s per case and rank here; compile runs "
                    "one representative case per layout (distributed_cases.COMPILE_CASES)")
    dcase = distributed_cases.BY_NAME[case.name]
    expected = distributed_cases.expected(dcase, compare.reference())
    placements = distributed_cases.expected_placements(dcase)
    problems: List[str] = []
    reported: Dict[int, Dict[str, Any]] = {}
    for rank in range(dcase.world_size):
        outcome = distributed_run.outcome(case.name, rank)
        if "error" in outcome:
            problems.append(f"rank {rank} raised {outcome['error']}")
            continue
        reported[rank] = outcome
        problems += _value_problems(case, outcome["values"], expected, rank)
        for what, want in placements.items():
            got = outcome["placements"].get(what)
            if got != want:
                problems.append(f"rank {rank} {what} placements ({got}) are not the contract's ({want})")
        problems += _repeat_problems(outcome, rank)
    if len(reported) == dcase.world_size:
        problems += _tp_group_problems(dcase, reported)
    if problems:
        raise AssertionError("; ".join(problems))
