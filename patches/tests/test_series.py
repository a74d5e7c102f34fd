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
    assert "use_fused_cross_entropy(" in block and "fused_cross_entropy_loss_symint(" in block


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


def test_replace_new_file_keeps_the_patch_valid(tmp_path):
    """Rewriting a new file in place: same text is a no-op; new text gets a correct header and blob id."""
    import subprocess

    from patches import series

    source = next(series.PATCHES_DIR.glob("0001-*.patch"))
    patch = tmp_path / source.name
    patch.write_text(source.read_text())
    path = "aten/src/ATen/native/FusedCrossEntropy.cpp"
    text = next(d for d in series.parse_patch(patch) if d.path == path).new_text()
    series.replace_new_file(patch, path, text)
    assert patch.read_text() == source.read_text()

    changed = text.replace("namespace at::native {", "namespace at::native {\n\n// (an added comment)", 1)
    series.replace_new_file(patch, path, changed)
    diffs = {d.path: d for d in series.parse_patch(patch)}
    assert diffs[path].new_text() == changed
    assert [d.path for d in series.parse_patch(patch)] == [d.path for d in series.parse_patch(source)]
    blob = subprocess.run(["git", "hash-object", "--stdin"], input=changed, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert f"index {'0' * 40}..{blob}" in patch.read_text()
    assert f"@@ -0,0 +1,{changed.count(chr(10))} @@" in patch.read_text()
