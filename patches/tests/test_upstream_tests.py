"""The series' upstream test files run, and pass, against the out-of-tree build."""

from __future__ import annotations

import torch.nn.functional as F

from patches import oot, upstream_tests


def test_the_series_ships_the_fused_cross_entropy_tests() -> None:
    assert "test/nn/test_fused_cross_entropy.py" in upstream_tests.test_files()


def test_upstream_tests_pass_out_of_tree() -> None:
    stock = F.cross_entropy
    result = upstream_tests.run(verbosity=0)
    problems = [(test.id(), text.splitlines()[-1]) for test, text in result.failures + result.errors]
    assert not problems and result.testsRun >= 35, problems
    assert F.cross_entropy is stock  # the runner restores F.cross_entropy


def test_the_runner_routes_f_cross_entropy_to_the_series() -> None:
    import torch

    x = torch.tensor([[float("-inf")] * 3, [0.0, 1.0, 2.0]], requires_grad=True)
    with upstream_tests.patched_functional():
        assert F.cross_entropy is oot.patched_cross_entropy
        F.cross_entropy(x, torch.tensor([-100, 1])).backward()
    assert (x.grad[0] == 0).all()  # the fused kernels' result (the composite gives NaN)
