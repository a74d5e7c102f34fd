"""Make the series' additions to existing torch Python files take effect in the installed torch.

Why: the out-of-tree build compiles the series' C++ but cannot rewrite the wheel's
Python files, and a patched build would run their added lines at import time:
decompositions registered by ``torch/_decomp/decompositions.py``, ops listed in
``core_aten_decompositions()`` (``torch/_decomp/__init__.py``), Inductor's
exclusions and fallbacks (``torch/_inductor/decomposition.py``, ``lowering.py``).
This module does the same to the already imported modules, so that export,
``torch.compile`` and the tests see what a patched build provides.
(``torch/_meta_registrations.py`` is done by ``oot._register_meta``.)

Only the kinds of additions listed in ``HANDLERS`` are understood.  Anything else
-- a file without a handler, a removed upstream line, an added line of another
shape -- raises ``PythonHunkError``: silently skipping it would test something
other than the series.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.abc
import re
import sys
import threading
from typing import Callable, Optional

import torch

from . import series, workspace

HANDLED_ELSEWHERE = ("torch/_meta_registrations.py",)  # oot._register_meta
# Existing modules patches/python_files.py reruns with the series' edits.
RERUN_PREFIX = "torch/distributed/"
# Hunks that change no code the out-of-tree build runs: documentation (checked:
# the module's code, docstrings removed, is unchanged) and the OpInfo samples,
# which patches/tests/test_opinfo_samples.py reads from the patched text.
DOCSTRINGS_ONLY = ("torch/nn/functional.py", "torch/nn/modules/loss.py")
TEST_ONLY = ("torch/testing/_internal/common_methods_invocations.py",)

DECOMPOSITIONS = "torch/_decomp/decompositions.py"
DECOMP_INIT = "torch/_decomp/__init__.py"
INDUCTOR_DECOMPOSITION = "torch/_inductor/decomposition.py"
INDUCTOR_LOWERING = "torch/_inductor/lowering.py"

# An entry of an operator list: ``aten.name`` or ``aten.name.overload``, then a comma.
_OP_ENTRY = re.compile(r"^\s*aten\.(\w+)(?:\.(\w+))?,\s*(#.*)?$")
# A fallback registration: ``make_fallback(aten.name[.overload], keyword=value, ...)``.
_FALLBACK = re.compile(r"^make_fallback\(aten\.\w+(\.\w+)?(,\s*\w+=[\w.]+)*\)\s*(#.*)?$")

_LOCK = threading.Lock()
_APPLIED: Optional[list[str]] = None


class PythonHunkError(Exception):
    """The series adds Python that this module cannot apply faithfully."""


@dataclasses.dataclass
class AddedLine:
    """One ``+`` line and where it lands in the file after its patch."""

    patch: str
    line_number: int  # 1-based, in the file as that patch leaves it
    text: str
    post_image: str  # the whole file as that patch leaves it


def added_lines(path: str) -> list[AddedLine]:
    """The series' added lines of an upstream file; removed lines are an error."""
    base = workspace.wheel_source(path)
    if base is None or not base.exists():
        raise PythonHunkError(f"the installed wheel has no copy of {path}")
    text = base.read_text()
    result: list[AddedLine] = []
    for diff in series.all_diffs():
        if diff.path != path or diff.is_new:
            continue
        text = series.apply_hunks(text, diff)
        for hunk in diff.hunks:
            if any(line.startswith("-") for line in hunk.lines):
                raise PythonHunkError(
                    f"{diff.patch} removes or changes lines of {path}; only additions can be "
                    "applied to the installed torch")
            number = hunk.new_start
            for line in hunk.lines:
                if line.startswith("+"):
                    result.append(AddedLine(diff.patch, number, line[1:], text))
                number += 1
    return result


def _enclosing_function(source: str, line_number: int) -> Optional[str]:
    """Name of the innermost function whose body holds the line, if any."""
    name = None
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.lineno < line_number <= (node.end_lineno or node.lineno):
                if name is None or node.lineno > name[1]:
                    name = (node.name, node.lineno)
    return name[0] if name else None


def _op_entries(path: str, lines: list[AddedLine], function: str) -> list[torch._ops.OpOverload]:
    """Resolve added ``aten.x[.overload],`` entries of the list inside ``function``."""
    ops: list[torch._ops.OpOverload] = []
    for line in lines:
        where = f"{line.patch}: {path}:{line.line_number}"
        if not line.text.strip():
            continue
        match = _OP_ENTRY.match(line.text)
        if match is None:
            raise PythonHunkError(f"{where}: cannot apply '{line.text.strip()}' (only 'aten.<op>,' "
                                  f"list entries are understood in {path})")
        if _enclosing_function(line.post_image, line.line_number) != function:
            raise PythonHunkError(f"{where}: the entry is not inside {function}()")
        packet = getattr(torch.ops.aten, match.group(1))
        ops.extend([getattr(packet, match.group(2))] if match.group(2)
                   else [getattr(packet, name) for name in packet.overloads()])
    return ops


def _apply_decompositions(lines: list[AddedLine]) -> list[str]:
    """Execute the added top-level definitions in torch._decomp.decompositions."""
    import torch._decomp
    import torch._decomp.decompositions as module

    source = "\n".join(line.text for line in lines) + "\n"
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        raise PythonHunkError(f"the additions to {DECOMPOSITIONS} are not whole top-level definitions "
                              f"(they change an upstream function?): {error}") from None
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.Import, ast.ImportFrom)):
            raise PythonHunkError(f"{DECOMPOSITIONS}: cannot apply a top-level "
                                  f"{type(node).__name__} at added line {node.lineno} (only functions "
                                  "and imports are understood)")
    before = set(torch._decomp.decomposition_table)
    exec(compile(source, f"<series: {DECOMPOSITIONS}>", "exec"), vars(module))
    added = [op for op in torch._decomp.decomposition_table if op not in before]
    return [f"{DECOMPOSITIONS}: decomposition of {op}" for op in added]


def _apply_core_list(lines: list[AddedLine]) -> list[str]:
    """Add the listed ops to what core_aten_decompositions() returns."""
    import torch._decomp as module

    function = "_core_aten_decompositions_post_autograd"
    ops = _op_entries(DECOMP_INIT, lines, function)
    original = getattr(module, function)

    @functools.wraps(original)
    def with_series_entries() -> dict:
        table = original()
        table.update(module.get_decompositions(ops))
        return table

    setattr(module, function, with_series_entries)
    # Inductor builds its table from core_aten_decompositions() when first imported;
    # if that already happened, add the entries there as its import would have.
    inductor = sys.modules.get("torch._inductor.decomposition")
    if inductor is not None:
        new = {op: fn for op, fn in module.get_decompositions(ops).items()}
        inductor.decompositions.update(new)
        inductor.remove_decompositions(inductor.decompositions, inductor.decomps_to_exclude)
    return [f"{DECOMP_INIT}: {op} in core_aten_decompositions()" for op in ops]


def _apply_inductor_exclusions(lines: list[AddedLine]) -> list[str]:
    """Remove the listed ops from Inductor's decomposition table when it is imported."""
    ops = _op_entries(INDUCTOR_DECOMPOSITION, lines, None)  # decomps_to_exclude is module level

    def exclude(module) -> None:
        module.decomps_to_exclude.extend(ops)
        module.remove_decompositions(module.decompositions, ops)

    _after_import("torch._inductor.decomposition", exclude)
    return [f"{INDUCTOR_DECOMPOSITION}: {op} excluded from Inductor's decompositions" for op in ops]


def _apply_inductor_fallbacks(lines: list[AddedLine]) -> list[str]:
    """Run the added make_fallback(...) lines when torch._inductor.lowering is imported."""
    statements = []
    for line in lines:
        if not line.text.strip():
            continue
        if _FALLBACK.match(line.text) is None or _enclosing_function(line.post_image, line.line_number):
            raise PythonHunkError(f"{line.patch}: {INDUCTOR_LOWERING}:{line.line_number}: cannot apply "
                                  f"'{line.text.strip()}' (only module-level make_fallback(aten.<op>, ...) "
                                  "lines are understood)")
        statements.append(line.text.strip())
    source = "\n".join(statements) + "\n"

    def register(module) -> None:
        exec(compile(source, f"<series: {INDUCTOR_LOWERING}>", "exec"), vars(module))

    _after_import("torch._inductor.lowering", register)
    return [f"{INDUCTOR_LOWERING}: {statement}" for statement in statements]


HANDLERS: dict[str, Callable[[list[AddedLine]], list[str]]] = {
    DECOMPOSITIONS: _apply_decompositions,
    DECOMP_INIT: _apply_core_list,
    INDUCTOR_DECOMPOSITION: _apply_inductor_exclusions,
    INDUCTOR_LOWERING: _apply_inductor_fallbacks,
}


class _RunAfterImport(importlib.abc.MetaPathFinder):
    """Runs callbacks right after a module's own code ran, as its added lines would."""

    def __init__(self) -> None:
        self.pending: dict[str, list[Callable]] = {}

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                callbacks = self.pending.pop(fullname)
                exec_module = spec.loader.exec_module

                def exec_then_callbacks(module, exec_module=exec_module, callbacks=callbacks):
                    exec_module(module)
                    for callback in callbacks:
                        callback(module)

                spec.loader.exec_module = exec_then_callbacks
                return spec
        return None


_HOOK = _RunAfterImport()


def _after_import(name: str, callback: Callable) -> None:
    """callback(module) now if the module is imported, else right after its import."""
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
        return
    _HOOK.pending.setdefault(name, []).append(callback)
    if _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


def _code_without_docstrings(source: str) -> str:
    import ast

    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            body[0].value.value = ""
    return ast.dump(tree)


def check_docstrings_only(path: str) -> None:
    """Raise unless the series changes only docstrings of ``path``."""
    from . import codegen

    base = workspace.wheel_source(path).read_text()
    if _code_without_docstrings(base) != _code_without_docstrings(codegen.patched_text(path)):
        raise PythonHunkError(f"the series changes code in {path}, not only docstrings; "
                              "patches/python_hunks.py has no handler for it")


def touched_python_files() -> list[str]:
    """Upstream torch/*.py files the series adds lines to, except those handled elsewhere
    or that need nothing out of tree (docstrings, OpInfo samples)."""
    skipped = (*HANDLED_ELSEWHERE, *DOCSTRINGS_ONLY, *TEST_ONLY)
    return [path for path in series.touched_paths()
            if path.startswith("torch/") and path.endswith(".py") and path not in skipped
            and not path.startswith(RERUN_PREFIX)]


def apply() -> list[str]:
    """Apply the series' Python additions once per process; returns what was applied."""
    global _APPLIED
    with _LOCK:
        if _APPLIED is not None:
            return list(_APPLIED)
        for path in DOCSTRINGS_ONLY:
            if path in series.touched_paths():
                check_docstrings_only(path)
        plan = []
        for path in touched_python_files():
            handler = HANDLERS.get(path)
            if handler is None:
                raise PythonHunkError(f"the series adds lines to {path}, which the out-of-tree "
                                      "build cannot apply (no handler in patches/python_hunks.py)")
            plan.append((path, added_lines(path)))  # every file is checked before any is applied
        # HANDLERS order, not series order: a table can only list decompositions that
        # are registered, and Inductor's exclusions come after the core list.
        plan.sort(key=lambda item: list(HANDLERS).index(item[0]))
        applied: list[str] = []
        for path, lines in plan:
            applied.extend(HANDLERS[path](lines))
        _APPLIED = applied
        return list(applied)
