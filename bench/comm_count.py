"""Count the bytes each rank puts into collectives, per phase and per collective kind.

Why a dispatch mode: DTensor's redistributions and ``loss_parallel()``'s handlers
issue their communication as ``_c10d_functional`` ops on local tensors *from
inside* DTensor's ``__torch_dispatch__``.  A mode normally runs before the
subclass and is switched off while its own handler runs, so it would see the
op on DTensors and none of the collectives it becomes.  Returning
``NotImplemented`` for an op with DTensor arguments (the technique
``torch.distributed.tensor.debug.CommDebugMode`` uses) lets DTensor run with the
mode still on the stack, so the collectives it issues come back to the mode as
ops on plain tensors.  The ops seen on DTensors are recorded too: they show
which aten operators an implementation reached (e.g. that stock
``F.cross_entropy`` never reaches ``aten._fused_cross_entropy``).

Convention (stated in every report): *payload* is what one rank contributes --
an all-reduce's tensor, an all-gather's local shard, a reduce-scatter's full
input, an all-to-all's input, a broadcast's tensor -- in bytes.  *wire* is the
ring-algorithm estimate of what that rank sends: all-reduce 2(W-1)/W x nbytes,
all-gather (W-1) x shard nbytes, reduce-scatter and all-to-all (W-1)/W x nbytes,
broadcast nbytes (pipelined ring; only approximately, and only the sender
pays it in a tree).  W is the size of the collective's process group.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

FORWARD, BACKWARD = "forward", "backward"


def _group_size(group: Any) -> int:
    """Size of a functional collective's group (passed by name, or as the group itself)."""
    if hasattr(group, "size"):
        return group.size()
    from torch.distributed.distributed_c10d import _resolve_process_group

    return _resolve_process_group(group).size()


def _eager_group_size(args: Sequence[Any]) -> int:
    """Size of the ProcessGroup argument of an eager ``c10d`` op (a boxed TorchScript object)."""
    from torch._C._distributed_c10d import ProcessGroup

    for arg in args:
        if isinstance(arg, torch.ScriptObject) and arg._type().qualified_name().endswith("c10d.ProcessGroup"):
            return ProcessGroup.unbox(arg).size()
    raise ValueError("eager c10d op without a ProcessGroup argument")


def _tensor_bytes(value: Any) -> int:
    return sum(leaf.numel() * leaf.element_size() for leaf in tree_leaves(value) if isinstance(leaf, torch.Tensor))


def _ring_all_reduce(nbytes: int, world: int) -> float:
    return 2 * (world - 1) / world * nbytes


def _ring_all_gather(nbytes: int, world: int) -> float:
    return float((world - 1) * nbytes)


def _ring_scatter(nbytes: int, world: int) -> float:
    return (world - 1) / world * nbytes


def _whole(nbytes: int, world: int) -> float:
    return float(nbytes)


# op name in _c10d_functional -> (kind, index of the payload argument, index of the group name, wire model)
_FUNCTIONAL: Dict[str, tuple] = {
    "all_reduce": ("all_reduce", 0, 2, _ring_all_reduce),
    "all_reduce_": ("all_reduce", 0, 2, _ring_all_reduce),
    "all_reduce_coalesced": ("all_reduce", 0, 2, _ring_all_reduce),
    "all_gather_into_tensor": ("all_gather", 0, 2, _ring_all_gather),
    "all_gather_into_tensor_out": ("all_gather", 0, 2, _ring_all_gather),
    "all_gather_into_tensor_coalesced": ("all_gather", 0, 2, _ring_all_gather),
    "reduce_scatter_tensor": ("reduce_scatter", 0, 3, _ring_scatter),
    "reduce_scatter_tensor_coalesced": ("reduce_scatter", 0, 3, _ring_scatter),
    "all_to_all_single": ("all_to_all", 0, 3, _ring_scatter),
    "broadcast": ("broadcast", 0, 2, _whole),
    "broadcast_": ("broadcast", 0, 2, _whole),
}

# Eager c10d ops (``dist.all_reduce`` and friends, DDP): the kind and the payload argument;
# their process group is an argument object, whose size is read directly.
_EAGER: Dict[str, tuple] = {
    "allreduce_": ("all_reduce", 0, _ring_all_reduce),
    "allreduce_coalesced_": ("all_reduce", 0, _ring_all_reduce),
    "allgather_": ("all_gather", 1, _ring_all_gather),
    "_allgather_base_": ("all_gather", 1, _ring_all_gather),
    "allgather_into_tensor_coalesced_": ("all_gather", 1, _ring_all_gather),
    "reduce_scatter_": ("reduce_scatter", 1, _ring_scatter),
    "_reduce_scatter_base_": ("reduce_scatter", 1, _ring_scatter),
    "alltoall_base_": ("all_to_all", 1, _ring_scatter),
    "alltoall_": ("all_to_all", 1, _ring_scatter),
    "broadcast_": ("broadcast", 0, _whole),
    "reduce_": ("reduce", 0, _whole),
    "gather_": ("gather", 1, _whole),
    "scatter_": ("scatter", 1, _whole),
    "barrier": ("barrier", None, _whole),
}


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective one rank took part in."""

    phase: str
    kind: str
    op: str
    payload_bytes: int
    wire_bytes: float
    group_size: int
    dtype: str


def _classify(func: torch._ops.OpOverload, args: Sequence[Any], phase: str) -> Optional[Collective]:
    namespace = func.namespace
    name = func._overloadpacket._qualified_op_name.split("::")[-1]
    if namespace == "_c10d_functional" and name in _FUNCTIONAL:
        kind, payload_at, group_at, wire = _FUNCTIONAL[name]
        world = _group_size(args[group_at])
    elif namespace == "c10d" and name in _EAGER:
        kind, payload_at, wire = _EAGER[name]
        world = _eager_group_size(args)
    else:
        return None
    payload = args[payload_at] if payload_at is not None else ()
    nbytes = _tensor_bytes(payload)
    dtype = next((str(t.dtype) for t in tree_leaves(payload) if isinstance(t, torch.Tensor)), "-")
    return Collective(phase, kind, str(func), nbytes, wire(nbytes, world), world, dtype)


class CollectiveCounter(TorchDispatchMode):
    """Records every collective issued while active, tagged with ``self.phase``.

    Set ``phase`` to :data:`FORWARD` before the loss and to :data:`BACKWARD` before
    ``backward()``; the autograd engine runs CPU backward on the calling thread,
    where the mode is active.
    """

    def __init__(self) -> None:
        super().__init__()
        self.phase = FORWARD
        self.collectives: List[Collective] = []
        self.dtensor_ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if isinstance(func, torch._ops.HigherOrderOperator):
            return func(*args, **kwargs)
        from torch.distributed.tensor import DTensor

        if any(issubclass(t, DTensor) for t in types):
            self.dtensor_ops[str(func)] += 1
            return NotImplemented  # let DTensor run; its collectives come back here
        out = func(*args, **kwargs)
        record = _classify(func, args, self.phase)
        if record is not None:
            self.collectives.append(record)
        return out

    def summary(self) -> Dict[str, Dict[str, Dict[str, float]]]:
        """{phase: {kind: {"count", "payload_bytes", "wire_bytes"}}}."""
        out: Dict[str, Dict[str, Dict[str, float]]] = {}
        for c in self.collectives:
            entry = out.setdefault(c.phase, {}).setdefault(c.kind, {"count": 0, "payload_bytes": 0, "wire_bytes": 0.0})
            entry["count"] += 1
            entry["payload_bytes"] += c.payload_bytes
            entry["wire_bytes"] += c.wire_bytes
        return out

    def bytes(self, phase: str, field: str = "payload_bytes") -> float:
        """Total ``field`` over every collective of ``phase``."""
        return sum(getattr(c, field) for c in self.collectives if c.phase == phase)


def count_step(step: Callable[[CollectiveCounter], Any]) -> CollectiveCounter:
    """Run ``step(counter)`` under a fresh counter and return it (``step`` sets the phases)."""
    counter = CollectiveCounter()
    with counter:
        step(counter)
    return counter
