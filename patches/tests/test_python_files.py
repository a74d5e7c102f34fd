"""The series' Python modules take effect out of tree (``patches.python_files``).

The 2-rank DTensor grading is the conformance ``distributed`` family; these tests
check, in one process, that the modules are loaded where a patched build has them,
that the strategies they register say what the patch message promises, and, on a
one-rank process group, that DTensor calls use them and give the plain values.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from patches import oot, python_files

STRATEGIES = "torch.distributed.tensor._ops._fused_cross_entropy_ops"
HANDLERS = "torch.distributed.tensor.parallel._fused_cross_entropy"
NONE, MEAN, SUM = 0, 1, 2  # at::Reduction

needs_distributed = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this build",
)


def test_module_name_is_the_import_path_of_a_patched_build() -> None:
    assert python_files.module_name("torch/distributed/tensor/_ops/_x.py") == "torch.distributed.tensor._ops._x"
    assert python_files.module_name("torch/distributed/tensor/_ops/__init__.py") == "torch.distributed.tensor._ops"
    with pytest.raises(ValueError):
        python_files.module_name("aten/src/ATen/native/LossNLL.cpp")


def test_without_distributed_a_distributed_module_is_skipped_with_the_reason(monkeypatch) -> None:
    monkeypatch.setattr(dist, "is_available", lambda: False)
    path = "torch/distributed/tensor/_ops/_python_files_probe.py"
    done = python_files._load_new_module(path, "raise AssertionError('must not run')\n")
    assert done == f"skipped {path}: torch.distributed is not available in this build"
    assert "torch.distributed.tensor._ops._python_files_probe" not in sys.modules


@needs_distributed
def test_load_registers_the_new_module_and_reruns_loss_parallel() -> None:
    oot.load()
    done = python_files.apply()  # what load() did (applied once per process)
    assert done == [
        f"loaded torch/distributed/tensor/_ops/_fused_cross_entropy_ops.py as {STRATEGIES}",
        f"loaded torch/distributed/tensor/parallel/_fused_cross_entropy.py as {HANDLERS}",
        "reran torch.distributed.tensor.parallel.loss with the series' edits "
        "(rebound torch.distributed.tensor.parallel.loss_parallel)",
    ]
    import torch.distributed.tensor._ops as ops
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import loss, loss_parallel

    assert getattr(ops, STRATEGIES.rpartition(".")[2]) is sys.modules[STRATEGIES]
    registered = DTensor._op_dispatcher.sharding_propagator.op_single_dim_strategy_funcs
    fused = [torch.ops.aten._fused_cross_entropy.default, torch.ops.aten._fused_cross_entropy_backward.default]
    assert all(op in registered for op in fused)
    # The package bound loss_parallel before the rerun; it must be the series' one, which
    # installs the new table's handlers and removes them even when its body raises.
    assert loss_parallel is loss.loss_parallel
    handlers = DTensor._op_dispatcher._custom_op_handlers
    fused_handlers = sys.modules[HANDLERS].fused_cross_entropy_loss_ops
    with loss_parallel():
        assert all(handlers[op] is fused_handlers[op] for op in fused)
    assert not any(op in handlers for op in fused)
    with pytest.raises(KeyError):
        with loss_parallel():
            raise KeyError("a user error inside loss_parallel()")
    assert not any(op in handlers for op in loss.customized_loss_ops)


def _meta(*shape: int) -> object:
    from torch.distributed.tensor._dtensor_spec import TensorMeta

    return TensorMeta(torch.Size(shape), (), torch.float32)


def _names(rules: list) -> list[list[str]]:
    return [[repr(p) if p is not None else "-" for p in rule] for rule in rules]


@needs_distributed
def test_forward_rules_shard_positions_never_classes() -> None:
    oot.load()
    strategies = sys.modules[STRATEGIES]
    rule = strategies.fused_cross_entropy_single_dim_strategy
    op = torch.ops.aten._fused_cross_entropy.default
    x, index, prob, weight = _meta(4, 6, 3), _meta(4, 3), _meta(4, 6, 3), _meta(6)
    # [output, log_sum_exp, self, target, weight?]: input dims 0 and 2 are positions 0 and 1.
    assert _names(rule(op, (x, index, weight, NONE, -100, 0.0), {})) == [
        ["_ShardingPlaceholder(dim=0)"] * 4 + ["Replicate()"],
        ["_ShardingPlaceholder(dim=1)", "_ShardingPlaceholder(dim=1)", "_ShardingPlaceholder(dim=2)",
         "_ShardingPlaceholder(dim=1)", "Replicate()"],
    ]
    assert _names(rule(op, (x, prob, None, SUM, -100, 0.0), {})) == [
        ["Partial(sum)", "_ShardingPlaceholder(dim=0)", "_ShardingPlaceholder(dim=0)", "_ShardingPlaceholder(dim=0)"],
        ["Partial(sum)", "_ShardingPlaceholder(dim=1)", "_ShardingPlaceholder(dim=2)", "_ShardingPlaceholder(dim=2)"],
    ]
    # A per-shard mean has the wrong denominator: no sharded rule.
    assert rule(op, (x, index, weight, MEAN, -100, 0.0), {}) == []
    # An unbatched (C,) input is one position.
    assert rule(op, (_meta(6), _meta(), None, NONE, -100, 0.0), {}) == []


@needs_distributed
def test_backward_rules_follow_the_forward() -> None:
    oot.load()
    rule = sys.modules[STRATEGIES].fused_cross_entropy_backward_single_dim_strategy
    op = torch.ops.aten._fused_cross_entropy_backward.default
    x, lse = _meta(8, 6), _meta(8)
    # [grad_input, grad_target, grad_output, self, target, weight?, log_sum_exp]
    assert _names(rule(op, (_meta(), x, _meta(8, 6), None, SUM, -100, 0.0, lse, [True, True]), {})) == [
        ["_ShardingPlaceholder(dim=0)"] * 2 + ["Replicate()"] + ["_ShardingPlaceholder(dim=0)"] * 3,
    ]
    assert _names(rule(op, (_meta(8), x, _meta(8), _meta(6), NONE, -100, 0.0, lse, [True, False]), {})) == [
        ["_ShardingPlaceholder(dim=0)", "-"] + ["_ShardingPlaceholder(dim=0)"] * 3
        + ["Replicate()", "_ShardingPlaceholder(dim=0)"],
    ]
    assert rule(op, (_meta(), x, _meta(8), None, MEAN, -100, 0.0, lse, [True, False]), {}) == []


@pytest.fixture
def one_rank_mesh(tmp_path: Path):
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available in this build")
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    from torch.distributed.device_mesh import init_device_mesh

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("reduction, placement", [("none", "Shard(dim=0)"), ("sum", "Partial(sum)"),
                                                  ("mean", "Replicate()")])
def test_batch_sharded_dtensor_uses_the_rules(one_rank_mesh, reduction: str, placement: str) -> None:
    """A Shard(0) input and target stay sharded (loss and gradient) except for 'mean'."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    oot.load()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, 3, generator=gen, dtype=torch.float64)
    target = torch.randint(5, (6, 3), generator=gen)
    weight = torch.rand(5, generator=gen, dtype=torch.float64)
    dx = distribute_tensor(x, one_rank_mesh, [Shard(0)]).requires_grad_()
    dtarget = distribute_tensor(target, one_rank_mesh, [Shard(0)])
    dweight = distribute_tensor(weight, one_rank_mesh, [Replicate()])
    loss = oot.patched_cross_entropy(dx, dtarget, dweight, reduction=reduction, label_smoothing=0.1)
    assert [repr(p) for p in loss.placements] == [placement]
    loss.sum().backward() if reduction == "none" else loss.backward()

    xr = x.clone().requires_grad_()
    expected = F.cross_entropy(xr, target, weight, reduction=reduction, label_smoothing=0.1)
    expected.sum().backward() if reduction == "none" else expected.backward()
    torch.testing.assert_close(loss.full_tensor(), expected)
    torch.testing.assert_close(dx.grad.full_tensor(), xr.grad)
    assert [repr(p) for p in dx.grad.placements] == (["Replicate()"] if reduction == "mean" else ["Shard(dim=0)"])


@needs_distributed
def test_a_torch_that_carries_the_edits_is_not_edited_twice(monkeypatch, tmp_path: Path) -> None:
    from patches import series, workspace

    path = "torch/distributed/tensor/parallel/loss.py"
    patched = workspace.wheel_source(path).read_text()
    for diff in series.all_diffs():
        if diff.path == path:
            patched = series.apply_hunks(patched, diff)
    (tmp_path / "loss.py").write_text(patched)
    monkeypatch.setattr(workspace, "wheel_source", lambda _: tmp_path / "loss.py")
    assert python_files._rerun_edited_module(path) == (
        f"skipped {path}: the installed torch already carries the series' edits")
