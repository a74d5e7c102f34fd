"""``patches.python_hunks``: the series' Python additions take effect, and nothing is dropped silently."""

from __future__ import annotations

import pytest
import torch

from patches import python_hunks, series
from patches.python_hunks import AddedLine, PythonHunkError

aten = torch.ops.aten
FUSED_NAMES = ("_fused_cross_entropy", "_fused_cross_entropy_backward")


@pytest.fixture(scope="module")
def applied() -> list[str]:
    from patches import oot

    oot.load()  # the ops must exist before their decompositions are registered
    return python_hunks.apply()


@pytest.fixture(scope="module")
def fused_ops(applied) -> list:
    return [getattr(aten, name).default for name in FUSED_NAMES]


def test_decompositions_are_registered_in_the_real_table(applied, fused_ops) -> None:
    from torch._decomp import decomposition_table
    import torch._decomp.decompositions as decompositions

    for op in fused_ops:
        assert op in decomposition_table
        assert any(str(op) in line for line in applied)
    # As in a patched build, the functions are attributes of the module that defines them.
    assert decomposition_table[fused_ops[0]] is decompositions._fused_cross_entropy


def test_core_aten_decompositions_lists_the_ops(fused_ops) -> None:
    from torch._decomp import core_aten_decompositions

    table = core_aten_decompositions()
    for op in fused_ops:
        assert op in table


def test_inductor_calls_the_fused_kernels(fused_ops) -> None:
    """The series' Inductor lines: not decomposed, a fallback lowering instead."""
    from torch._inductor.decomposition import select_decomp_table
    from torch._inductor.lowering import lowerings

    for op in fused_ops:
        assert op not in select_decomp_table()
        assert op in lowerings


def test_inductor_imported_before_load_gets_the_same_tables() -> None:
    """If Inductor built its tables before apply(), they are updated as its import would have."""
    import subprocess
    import sys

    check = (
        "import torch, torch._inductor.lowering\n"
        "from torch._inductor.decomposition import select_decomp_table\n"
        "from torch._inductor.lowering import lowerings\n"
        "from torch._decomp import core_aten_decompositions\n"
        "from patches import oot\n"
        "oot.load()\n"
        "for name in ('_fused_cross_entropy', '_fused_cross_entropy_backward'):\n"
        "    op = getattr(torch.ops.aten, name).default\n"
        "    assert op in core_aten_decompositions(), op\n"
        "    assert op not in select_decomp_table(), op\n"
        "    assert op in lowerings, op\n"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                            cwd=str(series.PATCHES_DIR.parent))
    assert result.returncode == 0, result.stderr[-3000:]


def test_apply_is_idempotent(applied) -> None:
    assert python_hunks.apply() == applied


def _line(text: str, post_image: str = "", number: int = 1) -> AddedLine:
    return AddedLine("0006-test.patch", number, text, post_image)


def test_unknown_list_entry_raises() -> None:
    source = "def _core_aten_decompositions_post_autograd():\n    return get_decompositions([\n        x,\n    ])\n"
    with pytest.raises(PythonHunkError, match="cannot apply 'some_function\\(\\)'"):
        python_hunks._apply_core_list([_line("        some_function()", source, 3)])


def test_list_entry_outside_the_core_list_raises() -> None:
    source = "def other():\n    return [\n        aten.add,\n    ]\n"
    with pytest.raises(PythonHunkError, match="not inside _core_aten_decompositions_post_autograd"):
        python_hunks._apply_core_list([_line("        aten.add,", source, 3)])


def test_added_statement_in_decompositions_that_is_not_a_definition_raises() -> None:
    with pytest.raises(PythonHunkError, match="top-level Assign"):
        python_hunks._apply_decompositions([_line("some_table = {}")])
    with pytest.raises(PythonHunkError, match="not whole top-level definitions"):
        python_hunks._apply_decompositions([_line("    return x  # inside an upstream function")])


def test_unknown_lowering_line_raises() -> None:
    with pytest.raises(PythonHunkError, match="only module-level make_fallback"):
        python_hunks._apply_inductor_fallbacks([_line("register_lowering(aten.add)(f)", "x = 1\n", 1)])


def test_file_without_handler_raises(monkeypatch) -> None:
    monkeypatch.setattr(python_hunks, "_APPLIED", None)
    monkeypatch.setattr(python_hunks, "touched_python_files", lambda: ["torch/nn/functional.py"])
    with pytest.raises(PythonHunkError, match="torch/nn/functional.py.*no handler"):
        python_hunks.apply()


def test_removed_upstream_line_raises(monkeypatch) -> None:
    path = python_hunks.DECOMP_INIT
    hunk = series.Hunk(1, 1, ['-"""', '+"""changed'])
    monkeypatch.setattr(series, "all_diffs", lambda: [series.FileDiff("0006-x.patch", path, False, [hunk])])
    monkeypatch.setattr(series, "apply_hunks", lambda text, diff: text)
    with pytest.raises(PythonHunkError, match="removes or changes lines"):
        python_hunks.added_lines(path)


def test_docs_patch_changes_only_docstrings() -> None:
    # 0008's hunks are skipped out of tree because they are documentation.
    for path in python_hunks.DOCSTRINGS_ONLY:
        python_hunks.check_docstrings_only(path)


def test_a_code_change_is_not_taken_for_a_docstring() -> None:
    base = 'def f(x):\n    """Doc."""\n    return x\n'
    assert python_hunks._code_without_docstrings(base) == python_hunks._code_without_docstrings(
        base.replace("Doc.", "Longer doc."))
    assert python_hunks._code_without_docstrings(base) != python_hunks._code_without_docstrings(
        base.replace("return x", "return -x"))
