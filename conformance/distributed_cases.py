"""The ``distributed`` family's cases and the values they must produce.

CE-SYS-DTENSOR: on DTensors (Replicate, batch-sharded, and class-sharded inside
``loss_parallel()`` on 1-D and 2-D meshes) and under ``DistributedDataParallel``, the
loss and its gradients equal a single-process float64 evaluation of the reference on
the full tensors.  A case names its world size and device mesh; the family runs one
gloo group per world size (``conformance.distributed_group``), every rank runs every
case of its group (``conformance.distributed_rank``), and each case is graded by its
own pytest test in the parent against :func:`expected` and :func:`expected_placements`.

Placements are written one token per mesh dim, comma-separated: ``R`` (Replicate),
``S<d>`` (Shard(d)), or ``plain`` for a plain tensor (the full tensor on every rank).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from conformance.samples import SampleInput, SampleSpec

DTYPE = torch.float32  # the default dtype of a case; the reference runs in float64 on the same values

# Placement tokens of the cases that predate multi-dimensional meshes (1-D mesh).
REPLICATE, SHARD0, SHARD1, PLAIN = "R", "S0", "S1", "plain"

# A sample tagged so has -inf logits over a whole local class shard of one position
# (the first TP rank's classes of position 0, the last TP rank's of the last position)
# while the other shards stay finite; the target puts no mass (or no index) there.
MASKED_SHARD = "masked-shard"


@dataclasses.dataclass(frozen=True)
class DistCase:
    """One distributed case: a sample, the mesh, and where its input, target and weight live.

    ``scenario`` is ``loss`` (one call on DTensors), ``ddp`` (a Linear + loss model
    under DistributedDataParallel), ``after_exception_outside`` /
    ``after_exception_reenter`` (the loss after an exception escaped
    ``loss_parallel``), or ``after_exception_handlers`` (whether its DTensor op
    handlers are still installed after that).  ``repeat``: the rank runs the case
    twice and the two results must be bitwise equal.
    """

    layout: str
    spec: SampleSpec
    input_placement: str = REPLICATE
    target_placement: str = REPLICATE
    loss_parallel: bool = False
    scenario: str = "loss"
    mesh_shape: Tuple[int, ...] = (2,)
    dtype: torch.dtype = DTYPE
    weight_placement: str = PLAIN   # inside loss_parallel(); outside it the weight is a Replicate DTensor
    repeat: bool = False

    @property
    def name(self) -> str:
        """Layout and sample; a dtype other than float32 is named too (the conformance id repeats it)."""
        suffix = "" if self.dtype == DTYPE else "/" + str(self.dtype).removeprefix("torch.")
        return f"{self.layout}/{self.spec.id}{suffix}"

    @property
    def world_size(self) -> int:
        return math.prod(self.mesh_shape)

    @property
    def class_dim(self) -> int:
        return 0 if len(self.spec.shape) == 1 else 1

    @property
    def tp_dim(self) -> Optional[int]:
        """The mesh dim that shards the classes (None outside loss_parallel)."""
        tokens = placements_of(self.input_placement, len(self.mesh_shape))
        hits = [i for i, p in enumerate(tokens) if p == f"S{self.class_dim}"]
        return hits[0] if len(hits) == 1 else None


def placements_of(text: str, mesh_ndim: int) -> Tuple[str, ...]:
    """Per-mesh-dim tokens of a placement string (``plain`` is all-Replicate data)."""
    if text == PLAIN:
        return (REPLICATE,) * mesh_ndim
    tokens = tuple(text.split(","))
    assert len(tokens) == mesh_ndim, f"{text!r} does not name {mesh_ndim} mesh dims"
    return tokens


def derived_index_placement(input_placement: str, class_dim: int = 1) -> str:
    """Class-index target placements from the input's, as ``loss_parallel()``'s docstring derives them."""
    out = []
    for token in input_placement.split(","):
        if token == f"S{class_dim}":
            out.append(REPLICATE)
        elif token.startswith("S") and int(token[1:]) > class_dim:
            out.append(f"S{int(token[1:]) - 1}")
        else:
            out.append(token)
    return ",".join(out)


def _s(kind: str, shape: Tuple[int, ...] = (8, 6), reduction: str = "mean", **options: Any) -> SampleSpec:
    return SampleSpec(kind, shape, reduction, rules=("CE-SYS-DTENSOR",), **options)


def _legacy_cases() -> List[DistCase]:
    """The 2-rank cases of the family's first version (names unchanged)."""
    kdim = (4, 6, 3)
    out: List[DistCase] = []
    # Replicate input and target: every rank computes the whole loss.
    for spec in (_s("index"), _s("index", reduction="sum"), _s("index", reduction="none"),
                 _s("index", weight=True), _s("index", ignored="some"), _s("index", label_smoothing=0.1),
                 _s("index", reduction="sum", weight=True, ignored="some", label_smoothing=0.1),
                 _s("prob"), _s("prob", reduction="sum"), _s("prob", label_smoothing=0.1),
                 _s("index", kdim), _s("index", kdim, reduction="none"), _s("prob", kdim)):
        out.append(DistCase("replicate", spec))
    # Batch sharded, target sharded the same way.
    uneven = (7, 6)  # 4 + 3 rows: a mean of per-rank means would be wrong
    for spec in (_s("index"), _s("index", reduction="sum"), _s("index", reduction="none"),
                 _s("index", weight=True), _s("index", ignored="some"), _s("index", weight=True, ignored="some"),
                 _s("index", label_smoothing=0.1), _s("index", uneven),
                 _s("prob"), _s("prob", reduction="sum"), _s("prob", weight=True), _s("prob", uneven),
                 _s("index", kdim)):
        out.append(DistCase("shard0", spec, SHARD0, SHARD0))
    # Batch-sharded input with a Replicate target.
    for spec in (_s("index"), _s("index", reduction="sum"), _s("index", weight=True), _s("index", ignored="some"),
                 _s("index", uneven),
                 _s("prob"), _s("prob", uneven)):
        out.append(DistCase("shard0+replicate-target", spec, SHARD0, REPLICATE))
    # loss_parallel(): class dim sharded, class indices replicated (a plain tensor, as its docs say).
    for spec in (_s("index"), _s("index", reduction="sum"), _s("index", reduction="none"),
                 _s("index", weight=True), _s("index", ignored="some"), _s("index", ignore_index=1, ignored="some"),
                 _s("index", weight=True, ignored="some"), _s("index", label_smoothing=0.1),
                 _s("index", kdim), _s("index", kdim, reduction="none")):
        out.append(DistCase("loss_parallel/shard1", spec, SHARD1, PLAIN, loss_parallel=True))
    out.append(DistCase("loss_parallel/shard1+replicate-target", _s("index"), SHARD1, REPLICATE, loss_parallel=True))
    out.append(DistCase("loss_parallel/shard1", _s("prob"), SHARD1, PLAIN, loss_parallel=True))
    out.append(DistCase("loss_parallel/shard1+shard1-target", _s("prob"), SHARD1, SHARD1, loss_parallel=True))
    # DistributedDataParallel: each rank takes half of the batch.
    for spec in (_s("index"), _s("prob")):
        out.append(DistCase("ddp/linear", spec, scenario="ddp"))
    # An exception escaping loss_parallel(): the loss outside it, and inside a new one.
    out.append(DistCase("loss_parallel/after-exception/replicate-outside", _s("index"),
                        scenario="after_exception_outside"))
    out.append(DistCase("loss_parallel/after-exception/reenter", _s("index"), SHARD1, PLAIN,
                        loss_parallel=True, scenario="after_exception_reenter"))
    return out


# --------------------------------------------------------------------------- loss_parallel() contract cases

def _mesh_text(mesh_shape: Tuple[int, ...]) -> str:
    return "x".join(map(str, mesh_shape))


def _lp(mesh_shape: Tuple[int, ...], input_placement: str, spec: SampleSpec, target: str = "derived",
        dtype: torch.dtype = DTYPE, weight: str = PLAIN, repeat: bool = False) -> DistCase:
    """A loss_parallel() case of the contract (design of issue 9).

    ``target``: ``derived`` (class indices: placed as the docstring derives them; class
    probabilities: the input's placements), ``tp-replicate`` (probabilities Replicate on
    the TP dim, the input's placements elsewhere), ``plain``, or explicit placements.
    """
    kind_dim = 1 if len(spec.shape) > 1 else 0
    if target == "derived":
        target = derived_index_placement(input_placement, kind_dim) if spec.kind == "index" else input_placement
    elif target == "tp-replicate":
        target = ",".join(REPLICATE if t == f"S{kind_dim}" else t for t in input_placement.split(","))
    layout = f"lp/{_mesh_text(mesh_shape)}/{input_placement}/t={target}" + ("/w=R" if weight != PLAIN else "")
    return DistCase(layout, spec, input_placement, target, loss_parallel=True, mesh_shape=mesh_shape,
                    dtype=dtype, weight_placement=weight, repeat=repeat)


def _lp_common(mesh_shape: Tuple[int, ...], x: str, nc: Tuple[int, int]) -> List[DistCase]:
    """What every loss_parallel() layout covers: both target kinds, options, reductions, dtypes."""
    bf16, f64 = torch.bfloat16, torch.float64
    return [
        _lp(mesh_shape, x, _s("index", nc), repeat=True),
        _lp(mesh_shape, x, _s("index", nc, "sum")),
        _lp(mesh_shape, x, _s("index", nc, "none")),
        _lp(mesh_shape, x, _s("index", nc, weight=True), weight=REPLICATE),
        _lp(mesh_shape, x, _s("index", nc, "sum", ignored="some")),
        _lp(mesh_shape, x, _s("index", nc, weight=True, ignored="some")),
        _lp(mesh_shape, x, _s("index", nc, label_smoothing=0.1)),
        _lp(mesh_shape, x, _s("index", nc, "none", weight=True, ignore_index=1, ignored="some", label_smoothing=0.1)),
        _lp(mesh_shape, x, _s("prob", nc), repeat=True),
        _lp(mesh_shape, x, _s("prob", nc, "sum", weight=True)),
        _lp(mesh_shape, x, _s("prob", nc, "none", label_smoothing=0.1)),
        _lp(mesh_shape, x, _s("prob", nc), target="tp-replicate"),
        _lp(mesh_shape, x, _s("index", nc, tag=MASKED_SHARD)),
        _lp(mesh_shape, x, _s("prob", nc, "sum", tag=MASKED_SHARD)),
        _lp(mesh_shape, x, _s("index", nc), dtype=f64),
        _lp(mesh_shape, x, _s("prob", nc, "none", weight=True, label_smoothing=0.2), dtype=f64),
        _lp(mesh_shape, x, _s("index", nc, "sum", weight=True, ignored="some"), dtype=bf16),
        _lp(mesh_shape, x, _s("prob", nc), dtype=bf16),
        _lp(mesh_shape, x, _s("index", nc, "none", label_smoothing=0.1), dtype=bf16),
    ]


def _lp_cases() -> List[DistCase]:
    out: List[DistCase] = []
    # 2 ranks: C=7 splits 4 + 3.
    out += _lp_common((2,), "S1", (8, 7))
    out += [
        _lp((2,), "S1", _s("prob", (8, 7)), target=PLAIN),
        _lp((2,), "S1", _s("prob", (8, 7), "sum", label_smoothing=0.1, weight=True), target=PLAIN),
        _lp((2,), "S1", _s("index", (4, 7, 3), "none", ignored="some")),
        _lp((2,), "S1", _s("prob", (4, 7, 3))),
        _lp((2,), "S0", _s("index", (7,), "sum")),  # unbatched (C,)
        _lp((2,), "S0", _s("prob", (7,))),
    ]
    # 4 ranks, 1-D mesh: C=10 splits 3 + 3 + 3 + 1.
    out += _lp_common((4,), "S1", (6, 10))
    out += [
        _lp((4,), "S1", _s("prob", (6, 10), label_smoothing=0.1), target=PLAIN),
        _lp((4,), "S1", _s("index", (3, 11, 2), ignored="some")),
        _lp((4,), "S1", _s("prob", (3, 11, 2), "none")),
    ]
    # 4 ranks, 2-D mesh (2, 2): mesh dim 0 shards the batch (7 rows: 4 + 3), dim 1 the classes (7: 4 + 3).
    out += _lp_common((2, 2), "S0,S1", (7, 7))
    out += [
        _lp((2, 2), "S0,S1", _s("index", (5, 7, 3))),
        _lp((2, 2), "S0,S1", _s("prob", (5, 7, 3), "none")),
        _lp((2, 2), "S2,S1", _s("index", (2, 7, 5), "none", ignored="some")),  # d1 = 5 splits 3 + 2
        _lp((2, 2), "S2,S1", _s("index", (2, 7, 5), weight=True, label_smoothing=0.1)),
        _lp((2, 2), "S2,S1", _s("prob", (2, 7, 5), "sum")),
        _lp((2, 2), "S2,S1", _s("prob", (2, 7, 5)), dtype=torch.float64),
        # the non-TP mesh dim replicated: a plain target is the full tensor
        _lp((2, 2), "R,S1", _s("index", (6, 7)), target=PLAIN),
        _lp((2, 2), "R,S1", _s("prob", (6, 7), "sum", label_smoothing=0.1), target=PLAIN),
        _lp((2, 2), "R,S1", _s("prob", (6, 7), "none")),
    ]
    # 4 ranks, 2-D mesh with the TP dim first.
    tp_first = "S1,S0"
    out += [
        _lp((2, 2), tp_first, _s("index", (7, 10)), repeat=True),
        _lp((2, 2), tp_first, _s("index", (7, 10), "none", weight=True, ignored="some")),
        _lp((2, 2), tp_first, _s("index", (7, 10), "sum", label_smoothing=0.1)),
        _lp((2, 2), tp_first, _s("prob", (7, 10)), repeat=True),
        _lp((2, 2), tp_first, _s("prob", (7, 10), "none", weight=True)),
        _lp((2, 2), tp_first, _s("prob", (7, 10), "sum", label_smoothing=0.1), target="tp-replicate"),
        _lp((2, 2), tp_first, _s("index", (7, 10), tag=MASKED_SHARD)),
        _lp((2, 2), tp_first, _s("prob", (7, 10), tag=MASKED_SHARD), dtype=torch.bfloat16),
        _lp((2, 2), "S1,S2", _s("index", (2, 10, 5), "sum")),
    ]
    return out


def _other_new_cases() -> List[DistCase]:
    """Handler removal after an exception, and stock's 'Why' configurations outside loss_parallel()."""
    return [
        DistCase("loss_parallel/after-exception/handlers-removed", _s("index"), scenario="after_exception_handlers"),
        DistCase("shard0+replicate-target", _s("index", label_smoothing=0.1), SHARD0, REPLICATE),
        DistCase("shard0+replicate-target", _s("prob", weight=True, label_smoothing=0.1), SHARD0, REPLICATE),
        DistCase("shard0+replicate-target", _s("index", weight=True, ignored="some", label_smoothing=0.1),
                 SHARD0, REPLICATE),
    ]


def _cases() -> List[DistCase]:
    return _legacy_cases() + _lp_cases() + _other_new_cases()


CASES: Tuple[DistCase, ...] = tuple(_cases())
BY_NAME: Dict[str, DistCase] = {c.name: c for c in CASES}
assert len(BY_NAME) == len(CASES), "duplicate distributed case names"

DDP_FEATURES = 7

# torch.compile spends 15-35 s per case and rank compiling on DTensors (2 CPU cores), so the
# ``compile`` implementation runs one representative case per layout and skips the rest.
COMPILE_CASES: Tuple[str, ...] = (
    "replicate/index/N,C=8x6/mean/plain",
    "replicate/prob/N,C=8x6/mean/plain",
    "shard0/index/N,C=8x6/mean/plain",
    "shard0/index/N,C=8x6/mean/weight",
    "loss_parallel/shard1/index/N,C=8x6/mean/plain",
    "loss_parallel/shard1+shard1-target/prob/N,C=8x6/mean/plain",
    "ddp/linear/index/N,C=8x6/mean/plain",
)
assert set(COMPILE_CASES) <= set(BY_NAME)


def case_names(impl_name: str) -> List[str]:
    """The cases the groups run for ``impl_name`` (all but ``compile``'s subset)."""
    if impl_name == "compile":
        return list(COMPILE_CASES)
    return [c.name for c in CASES]


# --------------------------------------------------------------------------- shared by ranks and parent

def build_sample(case: DistCase) -> SampleInput:
    """The case's full tensors in its dtype, the same on every rank and in the parent."""
    sample = case.spec.build("cpu", case.dtype)
    if case.spec.tag == MASKED_SHARD:
        _mask_shards(case, sample)
    return sample


def _mask_shards(case: DistCase, sample: SampleInput) -> None:
    """-inf over the first TP rank's classes of position 0 and the last TP rank's of the last position."""
    cd = case.class_dim
    classes = sample.input.shape[cd]
    tp_size = case.mesh_shape[case.tp_dim] if case.tp_dim is not None else 1
    chunk = -(-classes // tp_size)  # Shard splits as torch.chunk does
    last = slice(chunk * (len(range(0, classes, chunk)) - 1), classes)
    x = sample.input.clone()
    target = sample.target.clone()
    for row, masked, keep in ((0, slice(0, chunk), classes - 1), (-1, last, 0)):
        x[row, masked] = float("-inf")
        if case.spec.kind == "index":
            target[row] = keep
        else:
            t = target[row].to(torch.float64)
            t[masked] = 0
            if float(t.sum()) == 0:
                t[keep] = 1
            target[row] = (t / t.sum()).to(target.dtype)
    sample.input, sample.target = x, target


def incoming_gradient(shape: torch.Size, salt: str, dtype: torch.dtype = DTYPE) -> torch.Tensor:
    """The gradient fed to ``backward``: ones for a scalar loss (``loss.backward()``), else seeded values.

    Values are representable in ``dtype`` so the float64 reference sees exactly what the ranks do.
    """
    if len(shape) == 0:
        return torch.ones((), dtype=torch.float64)
    gen = torch.Generator().manual_seed(zlib.crc32(salt.encode()))
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).to(torch.float64)


def ddp_parameters(case: DistCase) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features, weight, bias) of the DDP model, float32 values; the sample gives the target."""
    classes = case.spec.shape[1]
    batch = case.spec.shape[0]
    gen = torch.Generator().manual_seed(zlib.crc32(f"ddp|{case.name}".encode()))
    features = torch.randn(batch, DDP_FEATURES, generator=gen, dtype=torch.float64).to(DTYPE)
    weight = (torch.randn(classes, DDP_FEATURES, generator=gen, dtype=torch.float64) * 0.5).to(DTYPE)
    bias = torch.randn(classes, generator=gen, dtype=torch.float64).to(DTYPE)
    return features, weight, bias


def expected(case: DistCase, reference: Callable[..., torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The single-process float64 values and gradients on the full tensors."""
    if case.scenario == "after_exception_handlers":
        return {"handlers installed after the exception": torch.tensor(False)}
    sample = build_sample(case).cast(torch.float64)
    target = sample.target
    if case.scenario == "ddp":
        features, weight, bias = (t.to(torch.float64).requires_grad_() for t in ddp_parameters(case))
        if case.spec.kind == "prob":
            target = target.detach()
        loss = reference(features @ weight.t() + bias, target, **sample.kwargs)
        w_grad, b_grad = torch.autograd.grad(loss, (weight, bias))
        return {"weight gradient": w_grad, "bias gradient": b_grad}
    x = sample.input.detach().requires_grad_()
    leaves = [x]
    if case.spec.kind == "prob":
        target = target.detach().requires_grad_()
        leaves.append(target)
    loss = reference(x, target, **sample.kwargs)
    grads = torch.autograd.grad(loss, leaves, incoming_gradient(loss.shape, case.name, case.dtype))
    result = {"loss": loss.detach(), "input gradient": grads[0]}
    if len(grads) > 1:
        result["target gradient"] = grads[1]
    return result


def expected_placements(case: DistCase) -> Dict[str, str]:
    """The placements the loss_parallel() contract gives the loss and the gradients ({} if it says none).

    ``reduction="none"``: the positions' placements (Replicate on the TP dim, the input's
    Shard(d) elsewhere, shifted down for d > class dim); ``"sum"``/``"mean"``: Replicate on
    the TP dim, Partial(sum) on another mesh dim where the input is Shard, Replicate
    elsewhere.  Input gradient: the input's placements; target gradient: the target's, or
    ``plain`` for a plain target.
    """
    if not case.loss_parallel or case.scenario != "loss" or case.tp_dim is None:
        return {}
    tokens = placements_of(case.input_placement, len(case.mesh_shape))
    if case.spec.reduction == "none":
        loss = derived_index_placement(case.input_placement, case.class_dim)
    else:
        loss = ",".join(REPLICATE if i == case.tp_dim or t == REPLICATE else "P(sum)" for i, t in enumerate(tokens))
    out = {"loss": loss, "input gradient": case.input_placement}
    if case.spec.kind == "prob":
        out["target gradient"] = case.target_placement
    return out
