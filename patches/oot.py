"""Run the patched ``F.cross_entropy`` against the installed torch.

``patched_cross_entropy`` has ``torch.nn.functional.cross_entropy``'s exact
signature and argument handling, and calls ``fused_ce_oot::cross_entropy_loss``
from the out-of-tree extension: the series' routing lines (pasted from the
``LossNLL.cpp`` hunk) in front of the stock ``aten::cross_entropy_loss``.
On first use the extension is built (cached) and loaded, and the series'
derivatives.yaml and _meta_registrations.py additions are registered for the
new aten ops, so autograd (backward, double backward, forward AD),
FakeTensor and torch.compile see what a patched build would provide.
"""

from __future__ import annotations

import threading
from typing import Optional

import torch
from torch import Tensor
from torch.nn import _reduction as _Reduction
from torch.overrides import handle_torch_function, has_torch_function_variadic

from . import autograd_gen, build, codegen, python_files, python_hunks

_LOCK = threading.Lock()
_LOADED = False
_STATE: dict = {}


def _register_meta(library: torch.library.Library) -> list[str]:
    """Execute the series' _meta_registrations.py additions and register them."""
    import torch._meta_registrations as meta_module

    collected = []

    def register_meta(op):
        def wrapper(fn):
            collected.append((op, fn))
            return fn

        return wrapper

    namespace = dict(vars(meta_module))
    namespace["register_meta"] = register_meta
    exec(compile(codegen.meta_source(), "<series: torch/_meta_registrations.py>", "exec"), namespace)
    names = []
    for op, fn in collected:
        # As register_meta() and activate_meta() do in-tree: the function goes
        # into meta_table (FakeTensor prefers it to a decomposition), the Python
        # dispatcher and the Meta key; an op with a CompositeImplicitAutograd
        # kernel must not have one (import torch would raise), its Meta runs
        # that kernel.
        if torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeImplicitAutograd"):
            raise RuntimeError(
                f"{op} is a CompositeImplicitAutograd op, we shouldn't register meta function for it. "
                "Instead, we should let the decomposition run and write meta kernels for the base operators."
            )
        torch._decomp.meta_table[op] = fn
        op.py_impl(torch._C.DispatchKey.Meta)(fn)
        library.impl(op, fn, "Meta")
        names.append(str(op))
    return names


@torch._dynamo.disable
def load() -> None:
    """Build (cached) and load the extension, then register autograd and meta."""
    global _LOADED
    with _LOCK:
        if _LOADED:
            return
        library_path = build.build_extension()
        torch.ops.load_library(str(library_path))
        library = torch.library.Library("aten", "IMPL")
        _STATE["library"] = library
        _STATE["autograd"] = autograd_gen.register(library, codegen.derivative_infos())
        _STATE["meta"] = _register_meta(library)
        _STATE["python"] = python_hunks.apply() + python_files.apply()
        _STATE["cuda"] = build.cuda_wanted()
        _LOADED = True


def registered() -> dict:
    """What load() registered (for reports and tests)."""
    load()
    return {key: value for key, value in _STATE.items() if key != "library"}


def patched_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    size_average: Optional[bool] = None,
    ignore_index: int = -100,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """``F.cross_entropy`` running the patched routing and fused kernels."""
    if has_torch_function_variadic(input, target, weight):
        return handle_torch_function(
            patched_cross_entropy,
            (input, target, weight),
            input,
            target,
            weight=weight,
            size_average=size_average,
            ignore_index=ignore_index,
            reduce=reduce,
            reduction=reduction,
            label_smoothing=label_smoothing,
        )
    if size_average is not None or reduce is not None:
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    if not _LOADED:
        load()
    if isinstance(input, Tensor) and input.is_cuda and not _STATE["cuda"]:
        # No CUDA kernels in this build: the stock op, as a fork without them.
        return torch._C._nn.cross_entropy_loss(
            input, target, weight, _Reduction.get_enum(reduction), ignore_index, label_smoothing
        )
    return torch.ops.fused_ce_oot.cross_entropy_loss(
        input,
        target,
        weight,
        _Reduction.get_enum(reduction),
        ignore_index,
        label_smoothing,
    )
