"""CE-SYS-ROBUST: degenerate direct calls of the operators an implementation registers never crash.

The new aten operators are public (``torch.ops.aten._fused_cross_entropy`` and its
helpers) and reachable with any arguments, not only the ones the routing passes.
A kernel that divides by the class count, indexes row 0 of an empty tensor or
trusts that two shapes agree turns such a call into a segfault or SIGFPE that ends
the user's process.  Each call runs in a forked child (``conformance.crash_isolation``);
a crash is this test's failure, named by its signal.

``raise``: the arguments are inconsistent (mismatched shapes, a class index into
zero classes); a Python exception is required.  ``no-crash``: the call is
degenerate but meaningful (an empty batch or K dim, probabilities over zero
classes); returning a result or raising are both acceptable, dying is not.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from conformance.cases import Case
from conformance.crash_isolation import CallServer, assert_survived
from conformance.impls import registers_aten_ops

# In the child: X float (randn), P float (rand, a probability-like target), L long zeros,
# G a scalar incoming gradient.  Reduction: 0 none, 1 mean, 2 sum.
SETUP = """
from patches import oot
oot.load()
aten = torch.ops.aten
X = lambda *shape: torch.randn(*shape)
P = lambda *shape: torch.rand(*shape)
L = lambda *shape: torch.zeros(*shape, dtype=torch.long)
G = torch.tensor(1.0)
"""

RAISE, NO_CRASH = "raise", "no-crash"

# (operator, scenario, arguments, expectation)
CALLS: Tuple[Tuple[str, str, str, str], ...] = (
    ("_fused_cross_entropy", "C=0/index", "X(3, 0), L(3), None, 1, -100, 0.0", RAISE),
    ("_fused_cross_entropy", "C=0/index/smooth", "X(3, 0), L(3), None, 1, -100, 0.1", RAISE),
    ("_fused_cross_entropy", "C=0/prob", "X(3, 0), X(3, 0), None, 1, -100, 0.0", NO_CRASH),
    ("_fused_cross_entropy", "C=0/prob/smooth", "X(3, 0), P(3, 0), None, 2, -100, 0.1", NO_CRASH),
    ("_fused_cross_entropy", "N=0,C=0/index", "X(0, 0), L(0), None, 1, -100, 0.0", NO_CRASH),
    ("_fused_cross_entropy", "N=0/index", "X(0, 5), L(0), None, 1, -100, 0.0", NO_CRASH),
    ("_fused_cross_entropy", "N=0/prob", "X(0, 5), P(0, 5), None, 0, -100, 0.1", NO_CRASH),
    ("_fused_cross_entropy", "K=0/index", "X(2, 5, 0), L(2, 0), None, 1, -100, 0.1", NO_CRASH),
    ("_fused_cross_entropy", "K=0/prob", "X(2, 5, 0), P(2, 5, 0), None, 2, -100, 0.0", NO_CRASH),
    ("_fused_cross_entropy", "mismatch/batch/index", "X(3, 5), L(2), None, 1, -100, 0.0", RAISE),
    ("_fused_cross_entropy", "mismatch/batch/prob", "X(3, 5), P(2, 5), None, 1, -100, 0.0", RAISE),
    ("_fused_cross_entropy", "mismatch/classes/prob", "X(3, 5), P(3, 4), None, 1, -100, 0.0", RAISE),
    ("_fused_cross_entropy", "mismatch/weight/index", "X(3, 5), L(3), torch.ones(4), 1, -100, 0.0", RAISE),
    ("_fused_cross_entropy", "mismatch/K/index", "X(2, 5, 3), L(2, 4), None, 0, -100, 0.0", RAISE),
    ("_fused_cross_entropy", "mismatch/rank0/index", "X(), L(), None, 1, -100, 0.0", RAISE),
    ("_fused_cross_entropy_backward", "C=0/index", "G, X(3, 0), L(3), None, 1, -100, 0.0, X(3), [True, False]", RAISE),
    ("_fused_cross_entropy_backward", "C=0/prob", "G, X(3, 0), P(3, 0), None, 1, -100, 0.0, X(3), [True, True]", NO_CRASH),
    ("_fused_cross_entropy_backward", "N=0/index", "G, X(0, 5), L(0), None, 1, -100, 0.0, X(0), [True, False]", NO_CRASH),
    ("_fused_cross_entropy_backward", "K=0/prob", "G, X(2, 5, 0), P(2, 5, 0), None, 2, -100, 0.1, X(2, 0), [True, True]", NO_CRASH),
    ("_fused_cross_entropy_backward", "mismatch/log_sum_exp/index", "G, X(3, 5), L(3), None, 1, -100, 0.0, X(2), [True, False]", RAISE),
    ("_fused_cross_entropy_backward", "mismatch/grad_output/index", "X(2), X(3, 5), L(3), None, 0, -100, 0.0, X(3), [True, False]", RAISE),
    ("_fused_cross_entropy_backward", "mismatch/batch/prob", "G, X(3, 5), P(2, 5), None, 1, -100, 0.0, X(3), [True, True]", RAISE),
    ("_fused_cross_entropy_jvp", "C=0/index", "X(3, 0), X(3), X(3, 0), L(3), None, 1, -100, 0.0", RAISE),
    ("_fused_cross_entropy_jvp", "C=0/prob", "X(3, 0), X(3, 0), X(3, 0), P(3, 0), None, 1, -100, 0.1", NO_CRASH),
    ("_fused_cross_entropy_jvp", "N=0/prob", "X(0, 5), X(0, 5), X(0, 5), P(0, 5), None, 1, -100, 0.0", NO_CRASH),
    ("_fused_cross_entropy_jvp", "K=0/index", "X(2, 5, 0), X(2, 0), X(2, 5, 0), L(2, 0), None, 1, -100, 0.0", NO_CRASH),
    ("_fused_cross_entropy_jvp", "mismatch/tangent/prob", "X(2, 5), X(3, 5), X(3, 5), P(3, 5), None, 1, -100, 0.0", RAISE),
    ("_fused_cross_entropy_differentiable_backward", "C=0/index",
     "G, X(3, 0), L(3), None, 1, -100, 0.0, [True, False]", RAISE),
    ("_fused_cross_entropy_differentiable_backward", "C=0/prob",
     "G, X(3, 0), P(3, 0), None, 1, -100, 0.1, [True, True]", NO_CRASH),
    ("_fused_cross_entropy_differentiable_backward", "N=0/index",
     "G, X(0, 5), L(0), None, 1, -100, 0.0, [True, False]", NO_CRASH),
    ("_fused_cross_entropy_differentiable_backward", "K=0/prob",
     "G, X(2, 5, 0), P(2, 5, 0), None, 2, -100, 0.0, [True, True]", NO_CRASH),
    ("_fused_cross_entropy_differentiable_backward", "mismatch/grad_output/index",
     "X(2), X(3, 5), L(3), None, 0, -100, 0.0, [True, False]", RAISE),
    # (self, target, weight, ignore_index, label_smoothing, class_start, num_classes)
    ("_fused_cross_entropy_shard_forward", "C=0/index", "X(3, 0), L(3), None, -100, 0.0, 0, 4", RAISE),
    ("_fused_cross_entropy_shard_forward", "C=0/prob", "X(3, 0), P(3, 0), None, -100, 0.1, 0, 4", NO_CRASH),
    ("_fused_cross_entropy_shard_forward", "N=0/index", "X(0, 5), L(0), None, -100, 0.1, 5, 10", NO_CRASH),
    ("_fused_cross_entropy_shard_forward", "K=0/prob", "X(2, 5, 0), P(2, 5, 0), None, -100, 0.0, 0, 5", NO_CRASH),
    ("_fused_cross_entropy_shard_forward", "classes/past-num_classes", "X(3, 5), L(3), None, -100, 0.0, 4, 8", RAISE),
    ("_fused_cross_entropy_shard_forward", "classes/negative-start", "X(3, 5), L(3), None, -100, 0.0, -1, 8", RAISE),
    ("_fused_cross_entropy_shard_forward", "target/past-num_classes", "X(3, 5), L(3) + 9, None, -100, 0.0, 0, 8", RAISE),
    ("_fused_cross_entropy_shard_forward", "mismatch/weight/index", "X(3, 5), L(3), torch.ones(8), -100, 0.0, 0, 8", RAISE),
    # (grad_loss, self, target, weight, ignore_index, label_smoothing, log_sum_exp, target_mass,
    #  class_start, num_classes, output_mask); float input: log_sum_exp double, the others float
    ("_fused_cross_entropy_shard_backward", "C=0/index",
     "X(3), X(3, 0), L(3), None, -100, 0.0, X(3).double(), X(3), 0, 4, [True, False]", RAISE),
    ("_fused_cross_entropy_shard_backward", "N=0/index",
     "X(0), X(0, 5), L(0), None, -100, 0.0, X(0).double(), X(0), 0, 5, [True, False]", NO_CRASH),
    ("_fused_cross_entropy_shard_backward", "K=0/prob",
     "X(2, 0), X(2, 5, 0), P(2, 5, 0), None, -100, 0.1, X(2, 0).double(), X(2, 0), 0, 5, [True, True]", NO_CRASH),
    ("_fused_cross_entropy_shard_backward", "mismatch/log_sum_exp/dtype",
     "X(3), X(3, 5), L(3), None, -100, 0.0, X(3), X(3), 0, 5, [True, False]", RAISE),
    ("_fused_cross_entropy_shard_backward", "mismatch/target_mass/shape",
     "X(3), X(3, 5), P(3, 5), None, -100, 0.0, X(3).double(), X(2), 0, 5, [True, True]", RAISE),
    ("_fused_cross_entropy_shard_backward", "mismatch/grad_loss/shape",
     "X(2), X(3, 5), L(3), None, -100, 0.0, X(3).double(), X(3), 0, 5, [True, False]", RAISE),
    ("_fused_cross_entropy_shard_backward", "target/past-num_classes",
     "X(3), X(3, 5), L(3) + 7, None, -100, 0.0, X(3).double(), X(3), 0, 5, [True, False]", RAISE),
)


def _params() -> List:
    cases = [(Case("robustness", None, name=f"{op}/{scenario}"), f"aten.{op}({args})", expect)
             for op, scenario, args, expect in CALLS]
    return [pytest.param(case, expression, expect, id=str(case)) for case, expression, expect in cases]


NO_OPS = "registers no aten operators"


@pytest.fixture(scope="module")
def server(impl_name):
    if not registers_aten_ops(impl_name):
        yield None
        return
    with CallServer(SETUP) as calls:
        yield calls


@pytest.mark.parametrize("case,expression,expect", _params())
def test_degenerate_call(case, expression, expect, impl_name, server):
    if not registers_aten_ops(impl_name):
        pytest.skip(NO_OPS)
    answer = server.run(expression)
    outcome = answer["outcome"]
    assert_survived(answer, expression)
    if expect == RAISE:
        assert outcome == "raised", f"{expression} returned for inconsistent arguments instead of raising"


def _series_operators() -> Iterator[str]:
    from patches import codegen

    with tempfile.TemporaryDirectory() as directory:
        parsed = codegen.parse_patched_native_yaml(Path(directory))
        for name in parsed.new_names:
            yield re.sub(r"\..*$", "", name)


def test_every_registered_operator_is_called(impl_name):
    """The table covers every operator of the series' native_functions.yaml hunk."""
    if not registers_aten_ops(impl_name):
        pytest.skip(NO_OPS)
    missing = sorted(set(_series_operators()) - {op for op, _, _, _ in CALLS})
    assert not missing, f"operators the series registers without a degenerate call here: {missing}"
