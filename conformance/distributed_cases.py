"""The ``distributed`` family's cases, the code each rank runs, and the expected values.

CE-SYS-DTENSOR: on DTensors (Replicate, batch-sharded, and class-sharded inside
``loss_parallel()``) and under ``DistributedDataParallel``, the loss and its
gradients equal a single-process float64 evaluation of the reference on the full
tensors.  Starting a process group costs seconds, so the whole family runs in ONE
2-rank gloo group per pytest session (:func:`run_family`): every rank runs every
case, catches a case's exception as that case's outcome, and sends back the full
(gathered) tensors; each case is then graded by its own pytest test in the parent.

Run as ``python -m conformance.distributed_cases --impl NAME --rank R --out DIR``
(with ``MASTER_ADDR``/``MASTER_PORT``/``WORLD_SIZE`` set) it is one rank of that group.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from conformance.samples import SampleSpec

WORLD_SIZE = 2
DTYPE = torch.float32  # the ranks run in float32; the reference in float64 on the same values

# How a case places its tensors.
REPLICATE, SHARD0, SHARD1, PLAIN = "replicate", "shard0", "shard1", "plain"


@dataclasses.dataclass(frozen=True)
class DistCase:
    """One distributed case: a sample and where its input and target live.

    ``scenario`` is ``loss`` (one call on DTensors), ``ddp`` (a Linear + loss model
    under DistributedDataParallel), or ``after_exception_outside`` /
    ``after_exception_reenter`` (the loss after an exception escaped ``loss_parallel``).
    """

    layout: str
    spec: SampleSpec
    input_placement: str = REPLICATE
    target_placement: str = REPLICATE
    loss_parallel: bool = False
    scenario: str = "loss"

    @property
    def name(self) -> str:
        return f"{self.layout}/{self.spec.id}"


def _s(kind: str, shape: Tuple[int, ...] = (8, 6), reduction: str = "mean", **options: Any) -> SampleSpec:
    return SampleSpec(kind, shape, reduction, rules=("CE-SYS-DTENSOR",), **options)


def _cases() -> List[DistCase]:
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
    """The cases the group runs for ``impl_name`` (all but ``compile``'s subset)."""
    if impl_name == "compile":
        return list(COMPILE_CASES)
    return [c.name for c in CASES]


# --------------------------------------------------------------------------- shared by ranks and parent

def incoming_gradient(shape: torch.Size, salt: str) -> torch.Tensor:
    """The gradient fed to ``backward``: ones for a scalar loss (``loss.backward()``), else seeded values.

    Values are float32-representable so the float64 reference sees exactly what the ranks do.
    """
    if len(shape) == 0:
        return torch.ones((), dtype=torch.float64)
    gen = torch.Generator().manual_seed(zlib.crc32(salt.encode()))
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(DTYPE).to(torch.float64)


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
    sample = case.spec.build("cpu", DTYPE).cast(torch.float64)
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
    grads = torch.autograd.grad(loss, leaves, incoming_gradient(loss.shape, case.name))
    result = {"loss": loss.detach(), "input gradient": grads[0]}
    if len(grads) > 1:
        result["target gradient"] = grads[1]
    return result


# --------------------------------------------------------------------------- the ranks

class _ProbeError(Exception):
    """Raised on purpose inside ``loss_parallel()`` (a user error in the training step)."""


def _placement(name: str):
    from torch.distributed.tensor import Replicate, Shard

    return {REPLICATE: Replicate(), SHARD0: Shard(0), SHARD1: Shard(1)}[name]


def _full(t: Optional[torch.Tensor], what: str) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    if t is None:
        raise AssertionError(f"{what} is None")
    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t.detach().clone()


def _place(t: torch.Tensor, placement: str, mesh, requires_grad: bool) -> torch.Tensor:
    from torch.distributed.tensor import distribute_tensor

    t = t.detach().clone()
    if placement != PLAIN:
        t = distribute_tensor(t, mesh, [_placement(placement)])
    return t.requires_grad_(requires_grad)


def _loss_case(case: DistCase, fn, mesh) -> Dict[str, torch.Tensor]:
    from torch.distributed.tensor import distribute_tensor
    from torch.distributed.tensor.parallel import loss_parallel

    sample = case.spec.build("cpu", DTYPE)
    prob = case.spec.kind == "prob"
    x = _place(sample.input, case.input_placement, mesh, True)
    target = _place(sample.target, case.target_placement, mesh, prob)
    kwargs = dict(sample.kwargs)
    if sample.weight is not None and not case.loss_parallel:
        kwargs["weight"] = distribute_tensor(sample.weight, mesh, [_placement(REPLICATE)])
    context = loss_parallel() if case.loss_parallel else contextlib.nullcontext()
    with context:
        loss = fn(x, target, **kwargs)
        grad = incoming_gradient(loss.shape, case.name).to(DTYPE)
        if loss.dim() == 0:
            loss.backward()
        else:
            placements = getattr(loss, "placements", None)
            if placements is not None:
                grad = distribute_tensor(grad, mesh, list(placements))
            loss.backward(grad)
    result = {"loss": _full(loss, "loss"), "input gradient": _full(x.grad, "input gradient")}
    if prob:
        result["target gradient"] = _full(target.grad, "target gradient")
    return result


def _ddp_case(case: DistCase, fn, rank: int) -> Dict[str, torch.Tensor]:
    from torch.nn.parallel import DistributedDataParallel

    sample = case.spec.build("cpu", DTYPE)
    features, weight, bias = ddp_parameters(case)
    model = torch.nn.Linear(DDP_FEATURES, case.spec.shape[1])
    with torch.no_grad():
        model.weight.copy_(weight)
        model.bias.copy_(bias)
    ddp = DistributedDataParallel(model)
    local = slice(rank * features.shape[0] // WORLD_SIZE, (rank + 1) * features.shape[0] // WORLD_SIZE)
    loss = fn(ddp(features[local]), sample.target[local], **sample.kwargs)
    loss.backward()
    return {"weight gradient": _full(model.weight.grad, "weight gradient"),
            "bias gradient": _full(model.bias.grad, "bias gradient")}


def _handlers_installed() -> bool:
    """Whether loss_parallel's DTensor op handlers are active (they should be only inside it)."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import loss as lp

    return any(op in DTensor._op_dispatcher._custom_op_handlers for op in lp.customized_loss_ops)


def _remove_handlers() -> None:
    """Undo a leak so the cases after this one run in a clean state."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import loss as lp

    for op in lp.customized_loss_ops:
        DTensor._op_dispatcher._custom_op_handlers.pop(op, None)


def _after_exception_case(case: DistCase, fn, mesh) -> Dict[str, torch.Tensor]:
    """Let an exception escape ``loss_parallel()``, then compute the case's loss."""
    from torch.distributed.tensor import distribute_tensor
    from torch.distributed.tensor.parallel import loss_parallel

    sample = case.spec.build("cpu", DTYPE)
    probe = distribute_tensor(sample.input.detach().clone(), mesh, [_placement(SHARD1)])
    try:
        with loss_parallel():
            fn(probe, sample.target, **sample.kwargs)
            raise _ProbeError("a user error inside loss_parallel()")
    except Exception:  # _ProbeError, or the implementation's own error on the probe
        pass
    leaked = _handlers_installed()
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
        _remove_handlers()


def _run_one(case: DistCase, fn, mesh, rank: int) -> Dict[str, torch.Tensor]:
    if case.scenario == "ddp":
        return _ddp_case(case, fn, rank)
    if case.scenario.startswith("after_exception"):
        return _after_exception_case(case, fn, mesh)
    return _loss_case(case, fn, mesh)


def _describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 1500 else text[:1500] + " ..."


def resolve(impl_name: str) -> Callable[..., torch.Tensor]:
    """A registered implementation, or ``module:function`` (the machinery's own tests pass fakes)."""
    from conformance.impls import get_impl

    if ":" in impl_name:
        import importlib

        module, attr = impl_name.split(":", 1)
        return getattr(importlib.import_module(module), attr)
    return get_impl(impl_name)


def rank_main(impl_name: str, rank: int, out_dir: pathlib.Path, names: List[str]) -> None:
    """One rank: run every case, saving the outcomes after each so a hang loses only the rest."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=datetime.timedelta(seconds=120))
    mesh = init_device_mesh("cpu", (WORLD_SIZE,))
    outcomes: Dict[str, Dict[str, Any]] = {}
    path = out_dir / f"rank{rank}.pt"
    try:
        fn = resolve(impl_name)
    except Exception as error:  # the implementation does not load: every case reports it
        fn = None
        load_error = f"loading implementation {impl_name!r}: {_describe(error)}"
    for name in names:
        start = time.perf_counter()
        try:
            if fn is None:
                raise RuntimeError(load_error)
            outcomes[name] = {"values": _run_one(BY_NAME[name], fn, mesh, rank)}
        except Exception as error:
            outcomes[name] = {"error": _describe(error), "traceback": traceback.format_exc()[-4000:]}
        if _handlers_installed():  # an exception escaped loss_parallel(): keep the next case clean
            _remove_handlers()
            if "error" in outcomes[name]:
                outcomes[name]["error"] += " [loss_parallel's DTensor op handlers stayed installed after it]"
        outcomes[name]["seconds"] = time.perf_counter() - start
        torch.save(outcomes, path)
    torch.save(outcomes, path)
    dist.destroy_process_group()


# --------------------------------------------------------------------------- the parent

@dataclasses.dataclass(repr=False)
class FamilyRun:
    """Per-case, per-rank outcomes of one group run, plus what went wrong with the group itself."""

    outcomes: Dict[int, Dict[str, Dict[str, Any]]]
    problems: Dict[int, str]
    seconds: float

    def __repr__(self) -> str:
        counts = {rank: len(cases) for rank, cases in self.outcomes.items()}
        return f"FamilyRun(cases per rank={counts}, problems={sorted(self.problems)}, {self.seconds:.1f} s)"

    def outcome(self, name: str, rank: int) -> Dict[str, Any]:
        """The case's result on ``rank``: ``{"values": ...}`` or ``{"error": ...}``."""
        if name in self.outcomes.get(rank, {}):
            return self.outcomes[rank][name]
        problem = self.problems.get(rank, "no result file")
        return {"error": f"rank {rank} did not report this case: {problem}"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_family(impl_name: str, names: Optional[List[str]] = None, timeout: float = 600.0) -> FamilyRun:
    """Start a 2-rank gloo group in subprocesses, run the cases, and collect every rank's outcomes."""
    names = list(names) if names is not None else case_names(impl_name)
    root = pathlib.Path(__file__).resolve().parents[1]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ce-distributed-") as tmp:
        out_dir = pathlib.Path(tmp)
        (out_dir / "names.txt").write_text("\n".join(names))
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
                   WORLD_SIZE=str(WORLD_SIZE), OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
        procs = []
        for rank in range(WORLD_SIZE):
            log = open(out_dir / f"rank{rank}.log", "wb")
            procs.append((subprocess.Popen(
                [sys.executable, "-m", "conformance.distributed_cases", "--impl", impl_name, "--rank", str(rank),
                 "--out", str(out_dir)], cwd=root, env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)),
                stdout=log, stderr=subprocess.STDOUT), log))
        problems: Dict[int, str] = {}
        deadline = time.monotonic() + timeout
        for rank, (proc, log) in enumerate(procs):
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                problems[rank] = f"killed after the family's {timeout:.0f} s timeout"
            log.close()
            if proc.returncode != 0 and rank not in problems:
                tail = (out_dir / f"rank{rank}.log").read_text(errors="replace")[-1500:]
                problems[rank] = f"exited with code {proc.returncode}; output tail:\n{tail}"
        outcomes = {}
        for rank in range(WORLD_SIZE):
            path = out_dir / f"rank{rank}.pt"
            if path.exists():
                outcomes[rank] = torch.load(path, weights_only=False)
    return FamilyRun(outcomes, problems, time.perf_counter() - start)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="one rank of the distributed conformance family")
    parser.add_argument("--impl", required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args(argv)
    names = (args.out / "names.txt").read_text().split("\n")
    rank_main(args.impl, args.rank, args.out, [n for n in names if n])


if __name__ == "__main__":
    main()
