"""DTensor and DistributedDataParallel (CE-SYS-DTENSOR): values and gradients on a 2-rank gloo group.

The group is started once per session (``distributed_run``) and runs every case;
each test grades one case's per-rank results against the float64 reference on
the full tensors, so one failing case is one failed test.  A case that raised in
a rank fails with that rank's exception type and message.
"""

from typing import List

import pytest
import torch.distributed as dist

from conformance import compare, distributed_cases
from conformance.cases import Case

CASES = [Case("distributed", distributed_cases.DTYPE, name=c.name) for c in distributed_cases.CASES]


@pytest.fixture(scope="session")
def distributed_run(impl_name, impl, device) -> distributed_cases.FamilyRun:
    """Every case, run once in one process group (``impl`` first builds/loads it in the parent)."""
    if device != "cpu":
        pytest.skip("the distributed family runs a gloo group on CPU; --device cuda is not covered")
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available in this build")
    return distributed_cases.run_family(impl_name)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_distributed(case, impl_name, distributed_run):
    if case.name not in distributed_cases.case_names(impl_name):
        pytest.skip("torch.compile on DTensors costs 15-35 s per case and rank here; compile runs "
                    "one representative case per layout (distributed_cases.COMPILE_CASES)")
    dcase = distributed_cases.BY_NAME[case.name]
    expected = distributed_cases.expected(dcase, compare.reference())
    problems: List[str] = []
    for rank in range(distributed_cases.WORLD_SIZE):
        outcome = distributed_run.outcome(case.name, rank)
        if "error" in outcome:
            problems.append(f"rank {rank} raised {outcome['error']}")
            continue
        for what, value in expected.items():
            try:
                compare.assert_matches(case, outcome["values"][what], value, f"rank {rank} {what}")
            except AssertionError as error:
                problems.append(str(error))
    if problems:
        raise AssertionError("; ".join(problems))
