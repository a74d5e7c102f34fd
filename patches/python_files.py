"""Make the series' Python changes under ``torch/`` take effect in the installed torch.

A patched build ships the series' new Python modules (DTensor's sharding
strategies for the fused ops, for instance) and its edits to existing ones;
the wheel the out-of-tree build runs against has neither.  Their code acts
when it is imported (decorators register strategies, module-level tables
list handlers), so this module executes it:

- each new ``torch/**.py`` file runs as the module a patched build would
  import (``torch/a/b.py`` -> ``torch.a.b``), registered in ``sys.modules``
  and on its parent package;
- each existing module under ``torch/distributed/`` that the series edits
  runs again, from the wheel's text with the series' hunks applied, in its
  own namespace, so names other modules imported from it see the new
  definitions.  Package ``__init__.py`` files are not rerun (rerunning one
  repeats its registrations); the new modules they would import are loaded
  by the first step.  The series' ``_meta_registrations.py`` additions are
  registered by ``oot.py`` itself.

Call :func:`apply` after the extension is loaded: the code refers to the new
aten ops.
"""

from __future__ import annotations

import importlib
import sys
import types

from . import codegen, series, workspace

# Existing modules are rerun only under this prefix (see the module docstring).
_RERUN_PREFIX = "torch/distributed/"

_APPLIED: list[str] | None = None


def module_name(path: str) -> str:
    """The dotted name a patched build imports ``path`` as (``torch/a/b.py`` -> ``torch.a.b``)."""
    if not (path.startswith("torch/") and path.endswith(".py")):
        raise ValueError(f"{path} is not a Python file under torch/")
    parts = path[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _import_parent(name: str) -> types.ModuleType:
    """The package ``name`` lives in; ImportError if it cannot be imported here."""
    parent = name.rpartition(".")[0]
    if parent == "torch.distributed" or parent.startswith("torch.distributed."):
        import torch.distributed

        # torch.distributed imports on builds without it, but its subpackages do not.
        if not torch.distributed.is_available():
            raise ImportError("torch.distributed is not available in this build")
    return importlib.import_module(parent)


def _execute(path: str, text: str, module: types.ModuleType) -> None:
    code = compile(text, f"<series: {path}>", "exec")
    exec(code, module.__dict__)


def _load_new_module(path: str, text: str) -> str:
    name = module_name(path)
    shipped = workspace.wheel_source(path)
    if shipped is not None and shipped.exists():
        return f"skipped {path}: the installed torch ships it"
    try:
        parent = _import_parent(name)
    except ImportError as error:
        return f"skipped {path}: {error}"
    module = types.ModuleType(name)
    module.__file__ = f"<series: {path}>"
    module.__package__ = parent.__name__
    sys.modules[name] = module
    try:
        _execute(path, text, module)
    except BaseException:
        del sys.modules[name]
        raise
    setattr(parent, name.rpartition(".")[2], module)
    return f"loaded {path} as {name}"


def _rerun_edited_module(path: str) -> str:
    name = module_name(path)
    source = workspace.wheel_source(path)
    if source is None or not source.exists():
        return f"skipped {path}: the installed torch has no copy to apply the series' hunks to"
    try:
        _import_parent(name)
        module = importlib.import_module(name)
    except ImportError as error:
        return f"skipped {path}: {error}"
    text = source.read_text()
    if all(block in text for block in series.added_blocks(path)):
        return f"skipped {path}: the installed torch already carries the series' edits"
    before = dict(module.__dict__)
    _execute(path, codegen.patched_text(path), module)
    rebound = _rebind_imported_names(before, module)
    return f"reran {name} with the series' edits" + (f" (rebound {', '.join(rebound)})" if rebound else "")


def _rebind_imported_names(before: dict[str, object], module: types.ModuleType) -> list[str]:
    """Point ``from <module> import name`` copies in other loaded modules at the new definitions.

    Why: a package that imported a function before the rerun (``torch.distributed.tensor.parallel``
    binds ``loss_parallel``) still holds the old function object, whose body is the wheel's; a
    patched build would have imported the patched one.  Only names bound to the very object the
    module held before, in modules under the same top-level prefix, are replaced.
    """
    replaced = {name: (old, module.__dict__[name]) for name, old in before.items()
                if not name.startswith("__") and module.__dict__.get(name) is not old}
    rebound = []
    for other_name, other in list(sys.modules.items()):
        if other is None or other is module or not other_name.startswith(_RERUN_PREFIX.replace("/", ".")):
            continue
        for name, (old, new) in replaced.items():
            if getattr(other, name, None) is old:
                setattr(other, name, new)
                rebound.append(f"{other_name}.{name}")
    return sorted(rebound)


def apply() -> list[str]:
    """Execute the series' new and edited Python modules once; say what was done or skipped, and why."""
    global _APPLIED
    if _APPLIED is not None:
        return list(_APPLIED)
    done = [
        _load_new_module(path, text)
        for path, text in series.new_files().items()
        if path.startswith("torch/") and path.endswith(".py")
    ]
    done += [
        _rerun_edited_module(path)
        for path in series.touched_paths()
        if path.startswith(_RERUN_PREFIX) and path.endswith(".py") and not path.endswith("/__init__.py")
    ]
    _APPLIED = done
    return list(done)
