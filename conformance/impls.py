"""The implementation registry: which ``cross_entropy`` the suite grades.

Each entry returns a callable with ``torch.nn.functional.cross_entropy``'s
signature.  Entries are built lazily, so grading stock torch never imports or
builds the patch.
"""

from __future__ import annotations

import functools
from typing import Callable, Dict

import torch
import torch.nn.functional as F

CrossEntropy = Callable[..., torch.Tensor]


def _torch() -> CrossEntropy:
    """The installed ``F.cross_entropy`` (stock, or a fork with the series applied)."""
    return F.cross_entropy


def _reference() -> CrossEntropy:
    from reference import cross_entropy

    return cross_entropy


def _compile() -> CrossEntropy:
    """``torch.compile`` of the installed ``F.cross_entropy``.

    The suite calls it with hundreds of distinct argument combinations; the cache
    limit is raised so that each combination compiles instead of silently falling
    back to eager once the default limit (8) is reached.
    """
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = 4096
    torch._dynamo.config.accumulated_cache_size_limit = 1 << 16
    return torch.compile(F.cross_entropy, fullgraph=True)


def _patch() -> CrossEntropy:
    """The patch series built out of tree against the installed torch.

    The extension is built (or taken from the cache) and loaded here, not at the first
    call, so that a build that cannot work fails once, where the implementation is chosen.
    """
    from patches.oot import load, patched_cross_entropy

    load()
    return patched_cross_entropy


_REGISTRY: Dict[str, Callable[[], CrossEntropy]] = {
    "torch": _torch,
    "reference": _reference,
    "compile": _compile,
    "patch": _patch,
}


def installed_torch_has_the_series() -> bool:
    """Whether the installed torch is a build with the series applied.

    In-tree, codegen binds ``torch._C._nn._fused_cross_entropy``; the out-of-tree
    extension registers the aten op but creates no such binding, so this stays
    False for the stock wheel even after ``patches.oot`` is loaded.
    """
    return hasattr(torch._C._nn, "_fused_cross_entropy")


def registers_aten_ops(name: str) -> bool:
    """Whether grading ``name`` exercises new aten operators that can be called directly.

    Only the series adds operators (``aten::_fused_cross_entropy`` and its helpers): the
    out-of-tree ``patch``, or ``torch``/``compile`` on a fork that carries the series.
    """
    return divergence_profile(name) == "patch"


def divergence_profile(name: str) -> str:
    """Whose declared divergences apply: a patched fork's ``torch`` behaves like ``patch``."""
    if name in ("torch", "compile") and installed_torch_has_the_series():
        return "patch"
    return name


def known_impls() -> tuple:
    return tuple(sorted(_REGISTRY))


@functools.lru_cache(maxsize=None)
def get_impl(name: str) -> CrossEntropy:
    """The callable registered as ``name``; unknown names list the known ones."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown implementation {name!r}; known implementations: {', '.join(known_impls())}"
        ) from None
    return factory()
