"""One rank of a ``distributed`` family group: run every case, record each outcome.

Run as ``python -m conformance.distributed_rank --impl NAME --rank R --out DIR`` with
``MASTER_ADDR``/``MASTER_PORT``/``WORLD_SIZE`` set (``conformance.distributed_group``
starts the ranks).  A case's exception is that case's outcome; the group goes on.
Each case reports the full (gathered) tensors, the placements of the loss and the
gradients, the rank's local loss and mesh coordinate (the parent checks that the
ranks of a TP group agree bitwise), and for ``repeat`` cases a second run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import pathlib
import re
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from conformance.distributed_cases import (BY_NAME, DDP_FEATURES, PLAIN, DistCase, build_sample, ddp_parameters,
                                           incoming_gradient)

CrossEntropy = Callable[..., torch.Tensor]


class _ProbeError(Exception):
    """Raised on purpose inside ``loss_parallel()`` (a user error in the training step)."""


def _placements(text: str, mesh_ndim: int):
    from torch.distributed.tensor import Replicate, Shard

    from conformance.distributed_cases import placements_of

    return [Replicate() if t == "R" else Shard(int(t[1:])) for t in placements_of(text, mesh_ndim)]


def placement_text(t: Optional[torch.Tensor]) -> str:
    """``R`` / ``S<d>`` / ``P(<op>)`` per mesh dim, ``plain`` for a plain tensor."""
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

    if not isinstance(t, DTensor):
        return PLAIN
    words = []
    for p in t.placements:
        if isinstance(p, Replicate):
            words.append("R")
        elif isinstance(p, Shard):
            words.append(f"S{p.dim}")
        elif isinstance(p, Partial):
            words.append(f"P({p.reduce_op})")
        else:
            words.append(repr(p))
    return ",".join(words)


def _full(t: Optional[torch.Tensor], what: str) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    if t is None:
        raise AssertionError(f"{what} is None")
    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t.detach().clone()


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return (t.to_local() if isinstance(t, DTensor) else t).detach().clone()


def _place(t: torch.Tensor, placement: str, mesh, requires_grad: bool) -> torch.Tensor:
    """Every rank holds the full tensor, so placing it needs no communication (``src_data_rank=None``)."""
    from torch.distributed.tensor import distribute_tensor

    t = t.detach().clone()
    if placement != PLAIN:
        t = distribute_tensor(t, mesh, _placements(placement, mesh.ndim), src_data_rank=None)
    return t.requires_grad_(requires_grad)


def _loss_case(case: DistCase, fn: CrossEntropy, mesh) -> Dict[str, Any]:
    from torch.distributed.tensor import distribute_tensor
    from torch.distributed.tensor.parallel import loss_parallel

    sample = build_sample(case)
    prob = case.spec.kind == "prob"
    x = _place(sample.input, case.input_placement, mesh, True)
    target = _place(sample.target, case.target_placement, mesh, prob)
    kwargs = dict(sample.kwargs)
    if sample.weight is not None and (not case.loss_parallel or case.weight_placement != PLAIN):
        kwargs["weight"] = _place(sample.weight, ",".join("R" * mesh.ndim), mesh, False)
    context = loss_parallel() if case.loss_parallel else contextlib.nullcontext()
    with context:
        loss = fn(x, target, **kwargs)
        grad = incoming_gradient(loss.shape, case.name, case.dtype).to(case.dtype)
        if loss.dim() == 0:
            loss.backward()
        else:
            placements = getattr(loss, "placements", None)
            if placements is not None:
                grad = distribute_tensor(grad, mesh, list(placements), src_data_rank=None)
            loss.backward(grad)
    values = {"loss": _full(loss, "loss"), "input gradient": _full(x.grad, "input gradient")}
    placements = {"loss": placement_text(loss), "input gradient": placement_text(x.grad)}
    if prob:
        values["target gradient"] = _full(target.grad, "target gradient")
        placements["target gradient"] = placement_text(target.grad)
    return {"values": values, "placements": placements, "local loss": _local(loss)}


def _ddp_case(case: DistCase, fn: CrossEntropy, rank: int) -> Dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel

    sample = build_sample(case)
    features, weight, bias = ddp_parameters(case)
    model = torch.nn.Linear(DDP_FEATURES, case.spec.shape[1])
    with torch.no_grad():
        model.weight.copy_(weight)
        model.bias.copy_(bias)
    ddp = DistributedDataParallel(model)
    n, world = features.shape[0], case.world_size
    local = slice(rank * n // world, (rank + 1) * n // world)
    loss = fn(ddp(features[local]), sample.target[local], **sample.kwargs)
    loss.backward()
    return {"values": {"weight gradient": _full(model.weight.grad, "weight gradient"),
                       "bias gradient": _full(model.bias.grad, "bias gradient")}}


def handlers_installed() -> bool:
    """Whether loss_parallel's DTensor op handlers are active (they should be only inside it)."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import loss as lp

    return any(op in DTensor._op_dispatcher._custom_op_handlers for op in lp.customized_loss_ops)


def remove_handlers() -> None:
    """Undo a leak so the cases after this one run in a clean state."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import loss as lp

    for op in lp.customized_loss_ops:
        DTensor._op_dispatcher._custom_op_handlers.pop(op, None)


def _raise_inside_loss_parallel(case: DistCase, fn: CrossEntropy, mesh) -> None:
    """Let an exception escape ``loss_parallel()`` after one loss call in it."""
    from torch.distributed.tensor.parallel import loss_parallel

    sample = build_sample(case)
    probe = _place(sample.input, "S1", mesh, False)
    try:
        with loss_parallel():
            fn(probe, sample.target, **sample.kwargs)
            raise _ProbeError("a user error inside loss_parallel()")
    except Exception:  # _ProbeError, or the implementation's own error on the probe
        pass


def _after_exception_case(case: DistCase, fn: CrossEntropy, mesh) -> Dict[str, Any]:
    """Let an exception escape ``loss_parallel()``, then compute the case's loss."""
    _raise_inside_loss_parallel(case, fn, mesh)
    leaked = handlers_installed()
    try:
        return _loss_case(case, fn, mesh)
    except Exception as error:
        if not leaked:
            raise
        note = f"{error} (loss_parallel's DTensor op handlers were still installed after the exception)"
        try:
            annotated = type(error)(note)
        except Exception:  # an exception type that takes other arguments
            annotated = RuntimeError(f"{type(error).__name__}: {note}")
        raise annotated from error
    finally:
        remove_handlers()


def _handlers_after_exception_case(case: DistCase, fn: CrossEntropy, mesh) -> Dict[str, Any]:
    """The graded value is whether the handlers stayed installed (the spec: they must not)."""
    _raise_inside_loss_parallel(case, fn, mesh)
    leaked = handlers_installed()
    remove_handlers()
    return {"values": {"handlers installed after the exception": torch.tensor(leaked)}}


def _run_one(case: DistCase, fn: CrossEntropy, mesh, rank: int) -> Dict[str, Any]:
    if case.scenario == "ddp":
        return _ddp_case(case, fn, rank)
    if case.scenario == "after_exception_handlers":
        return _handlers_after_exception_case(case, fn, mesh)
    if case.scenario.startswith("after_exception"):
        return _after_exception_case(case, fn, mesh)
    result = _loss_case(case, fn, mesh)
    if case.repeat:
        result["second run"] = _loss_case(case, fn, mesh)["values"]
    return result


def _describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 1500 else text[:1500] + " ..."


def resolve(impl_name: str) -> CrossEntropy:
    """A registered implementation, or ``module:function`` (the machinery's own tests pass fakes)."""
    from conformance.impls import get_impl

    if ":" in impl_name:
        import importlib

        module, attr = impl_name.split(":", 1)
        return getattr(importlib.import_module(module), attr)
    return get_impl(impl_name)


def _mesh(shape: Tuple[int, ...], timeout: datetime.timedelta):
    """A device mesh whose groups all time out after ``timeout`` (init_device_mesh's take the 30 min default).

    Made the same way on every rank: creating a group is collective.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh

    if len(shape) == 1:
        return DeviceMesh.from_group(dist.group.WORLD, "cpu")
    grid = torch.arange(dist.get_world_size()).view(shape)
    mine = []
    for dim, size in enumerate(shape):
        for ranks in grid.movedim(dim, -1).reshape(-1, size).tolist():
            group = dist.new_group(ranks, timeout=timeout)
            if dist.get_rank() in ranks:
                mine.append(group)
    return DeviceMesh.from_group(mine, "cpu", mesh=grid, mesh_dim_names=tuple(f"dim{d}" for d in range(len(shape))))


def _meshes(cases: List[DistCase], timeout: datetime.timedelta) -> Dict[Tuple[int, ...], Any]:
    """Every mesh the cases use, made in the same order on every rank."""
    shapes = sorted({c.mesh_shape for c in cases}, key=lambda s: (len(s), s))
    return {shape: _mesh(shape, timeout) for shape in shapes}


# A rank exits with this code when the ranks disagreed on a case (some raised, some did not, or
# with different messages, numbers aside): a collective may then be left unmatched and every later case would
# hang, so the parent starts a fresh group for the cases after it.
DISAGREED_EXIT = 3


def _agree(store, index: int, rank: int, world_size: int, status: str, wait_s: float) -> bool:
    """Whether every rank ended case ``index`` the same way (through the store: no collective).

    On a disagreement rank 0, which serves the store, waits until every rank has read it.
    """
    store.set(f"case{index}/rank{rank}", status)
    keys = [f"case{index}/rank{r}" for r in range(world_size)]
    store.wait(keys, datetime.timedelta(seconds=wait_s))
    agreed = len({store.get(k) for k in keys}) == 1
    if not agreed:
        store.set(f"case{index}/read{rank}", "")
        if rank == 0:
            store.wait([f"case{index}/read{r}" for r in range(world_size)], datetime.timedelta(seconds=wait_s))
    return agreed


def rank_main(impl_name: str, rank: int, world_size: int, out_dir: pathlib.Path, names: List[str],
              collective_timeout: float) -> None:
    """One rank: run every case, saving the outcomes after each so a hang loses only the rest."""
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    try:  # before the group starts, so a slow load does not count against the collective timeout
        fn: Optional[CrossEntropy] = resolve(impl_name)
    except Exception as error:  # the implementation does not load: every case reports it
        fn = None
        load_error = f"loading implementation {impl_name!r}: {_describe(error)}"
    timeout = datetime.timedelta(seconds=collective_timeout)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timeout)
    store = dist.distributed_c10d._get_default_store()
    cases = [BY_NAME[n] for n in names]
    meshes = _meshes(cases, timeout)
    outcomes: Dict[str, Dict[str, Any]] = {}
    path = out_dir / f"rank{rank}.pt"
    for index, case in enumerate(cases):
        start = time.perf_counter()
        mesh = meshes[case.mesh_shape]
        try:
            if fn is None:
                raise RuntimeError(load_error)
            outcome = _run_one(case, fn, mesh, rank)
            outcome["coordinate"] = tuple(mesh.get_coordinate())
        except Exception as error:
            outcome = {"error": _describe(error), "traceback": traceback.format_exc()[-4000:]}
        if handlers_installed():  # an exception escaped loss_parallel(): keep the next case clean
            remove_handlers()
            if "error" in outcome:
                outcome["error"] += " [loss_parallel's DTensor op handlers stayed installed after it]"
        outcome["seconds"] = time.perf_counter() - start
        outcomes[case.name] = outcome
        torch.save(outcomes, path)
        # Numbers aside (a shard's size differs by rank), the same error on every rank leaves the group usable.
        status = re.sub(r"[0-9]+", "#", outcome.get("error", "ok"))
        if not _agree(store, index, rank, world_size, status, 3 * collective_timeout):
            os._exit(DISAGREED_EXIT)  # no teardown: a peer may still be blocked in a collective
    dist.destroy_process_group()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="one rank of a distributed conformance group")
    parser.add_argument("--impl", required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--collective-timeout", type=float, required=True)
    args = parser.parse_args(argv)
    names = (args.out / "names.txt").read_text().split("\n")
    rank_main(args.impl, args.rank, args.world_size, args.out, [n for n in names if n], args.collective_timeout)


if __name__ == "__main__":
    main()
