"""The distributed family's machinery: one group runs all cases, a rank's exception is one case's failure."""

import pytest
import torch.distributed as dist

from conformance import distributed_cases, distributed_group
from conformance.cases import Case
from conformance.tests import test_distributed as family

GOOD = "replicate/index/N,C=8x6/mean/plain"
RAISES = "replicate/prob/N,C=8x6/mean/plain"
WRONG = "replicate/index/N,C=8x6/sum/plain"
AFTER = "shard0/index/N,C=8x6/mean/plain"

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


@pytest.fixture(scope="module")
def fake_run() -> distributed_group.FamilyRun:
    return distributed_group.run_family("tests.distributed_fakes:raises_on_prob_wrong_sum",
                                        [GOOD, RAISES, WRONG, AFTER], timeout=300)


def _grade(name: str, run: distributed_group.FamilyRun) -> None:
    family.test_distributed(Case("distributed", distributed_cases.DTYPE, name=name), "torch", run)


def test_every_rank_reports_every_case(fake_run):
    assert set(fake_run.groups) == {2}
    group = fake_run.groups[2]
    assert group.problems == {}
    for rank in range(2):
        assert set(group.outcomes[rank]) == {GOOD, RAISES, WRONG, AFTER}


def test_a_rank_exception_fails_only_its_case(fake_run):
    with pytest.raises(AssertionError, match="rank 0 raised ValueError: fake: probability targets"):
        _grade(RAISES, fake_run)
    _grade(GOOD, fake_run)
    _grade(AFTER, fake_run)  # the group survived the exception


def test_a_wrong_value_fails(fake_run):
    with pytest.raises(AssertionError, match="rank 0 loss differs from the reference"):
        _grade(WRONG, fake_run)


def test_a_missing_rank_is_reported():
    run = distributed_group.FamilyRun({2: distributed_group.GroupRun(2, {0: {}}, {1: "exited with code 1"})}, 0.0)
    assert "rank 1 of the 2-rank group did not report this case: exited with code 1" in run.outcome(GOOD, 1)["error"]


def test_ranks_that_disagree_restart_the_group():
    """Rank 0 raises where rank 1 does not: a new group runs the cases after it, which still pass."""
    run = distributed_group.run_family("tests.distributed_fakes:raises_on_rank0_for_prob", [GOOD, RAISES, AFTER],
                                       timeout=300)
    assert run.groups[2].restarts == 1 and run.groups[2].problems == {}
    with pytest.raises(AssertionError, match="rank 0 raised ValueError: fake: rank 0 refuses"):
        _grade(RAISES, run)
    _grade(GOOD, run)
    _grade(AFTER, run)
