"""The in-memory view of the series (used by the out-of-tree build) must agree
with what ``git am`` makes of it, so that the build compiles exactly the code
the series proposes."""

from __future__ import annotations

from pathlib import Path

import pytest

from patches import codegen, series, workspace


@pytest.fixture(scope="module")
def applied(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("ws") / "ws"
    workspace.make_workspace(directory)
    return directory


def test_new_files_match_git_am(applied: Path) -> None:
    files = series.new_files()
    assert "aten/src/ATen/native/cpu/FusedCrossEntropyKernel.cpp" in files
    for path, text in files.items():
        assert (applied / path).read_text() == text, path


def test_patched_wheel_files_match_git_am(applied: Path) -> None:
    for path in (codegen.NATIVE_YAML, codegen.DERIVATIVES_YAML, codegen.META_PY):
        assert codegen.patched_text(path) == (applied / path).read_text(), path


def test_routing_block_is_the_loss_nll_hunk() -> None:
    block = codegen.routing_block()
    assert "use_fused_cross_entropy(" in block and "at::_fused_cross_entropy(" in block


def test_meta_source_defines_the_new_meta_functions() -> None:
    source = codegen.meta_source()
    assert "aten._fused_cross_entropy.default" in source
    assert "aten._fused_cross_entropy_backward.default" in source


def test_apply_hunks_rejects_a_hunk_whose_context_is_gone() -> None:
    diff = next(d for d in series.all_diffs() if d.path == codegen.NATIVE_YAML)
    with pytest.raises(series.SeriesError):
        series.apply_hunks("unrelated text\n", diff)


def test_export_refuses_a_stale_workspace(applied: Path, tmp_path: Path) -> None:
    (applied / ".git" / "patches-series-hash").write_text("stale\n")
    with pytest.raises(series.SeriesError, match="changed since"):
        workspace.export(applied)
