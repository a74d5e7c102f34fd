"""Static checks of the series (``python -m patches check``).

Each check prints one PASS/FAIL line with the reason, so a CI log says which
property of the series broke:

1. BASE and series are well formed and every patch is format-patch output
   (From/Date/Subject headers, at least one diff); the ``[PATCH n/N]``
   subjects follow the series order; the cover letter, if present, is a
   ``[PATCH 0/N]`` mail without a diff that names every patch by subject.
2. The series is valid ``git am`` input: it applies, in order, to a workspace
   holding the base copies of the touched files.
3. Hunks on files shipped in the torch wheel (``native_functions.yaml`` and
   ``derivatives.yaml`` under ``torchgen/packaged``, ``torch/*.py``) apply
   cleanly to the installed wheel's copies (``git apply --check``).
4. torchgen parses the patched ``native_functions.yaml`` and loads the
   patched ``derivatives.yaml``, and every new op with a CPU kernel has a
   derivatives entry.
5. Every formula of the new derivatives entries is a plain call that the
   out-of-tree autograd can evaluate.
6. The series' new C++ files compile and link as the out-of-tree extension.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import traceback
from pathlib import Path
from typing import Callable

from . import codegen, series, workspace

_HEADER_LINES = (re.compile(r"^From [0-9a-f]{40} "), re.compile(r"^From: .+ <.+>$"),
                 re.compile(r"^Date: .+"), re.compile(r"^Subject: \[PATCH.*\] .+"))


def check_format() -> str:
    base = series.base_commit()
    files = series.series_files()
    if not files:
        raise AssertionError("patches/series lists no patch")
    for path in files:
        lines = path.read_text().splitlines()
        for pattern in _HEADER_LINES:
            if not any(pattern.match(line) for line in lines[:12]):
                raise AssertionError(f"{path.name}: missing format-patch header matching {pattern.pattern!r}")
        diffs = series.parse_patch(path)
        if not diffs:
            raise AssertionError(f"{path.name}: contains no diff")
        message = "\n".join(lines[: lines.index(next(l for l in lines if l.startswith("diff --git ")))])
        if len(message.split("\n\n", 1)[-1].strip()) < 80:
            raise AssertionError(f"{path.name}: the commit message does not explain the change")
    return f"{len(files)} patches against {base[:12]}"


def check_numbering() -> str:
    files = series.series_files()
    letter = series.cover_letter()
    expected = [(path, index) for index, path in enumerate(files, start=1)]
    if letter is not None:
        expected.insert(0, (letter, 0))
    wrong = []
    for path, index in expected:
        number, total, _ = series.subject(path)
        if (number, total) != (index, len(files)):
            wrong.append(f"{path.name} says [PATCH {number}/{total}]")
    if wrong:
        raise AssertionError(
            f"patches/series holds {len(files)} patches, but " + "; ".join(wrong)
            + " (fix: python -c 'from patches import series; series.renumber()')"
        )
    return f"[PATCH n/{len(files)}] in series order" + (", cover letter 0/" + str(len(files)) if letter else "")


def check_cover_letter() -> str:
    letter = series.cover_letter()
    if letter is None:
        return f"no {series.COVER_LETTER}"
    lines = letter.read_text().splitlines()
    for pattern in _HEADER_LINES:
        if not any(pattern.match(line) for line in lines[:12]):
            raise AssertionError(f"{letter.name}: missing format-patch header matching {pattern.pattern!r}")
    if any(line.startswith("diff --git ") for line in lines) or series.parse_patch(letter):
        raise AssertionError(f"{letter.name}: a cover letter carries no diff")
    # git mailinfo starts the patch at the first line beginning with "---": after such a line
    # (a Markdown heading underline, say) `git am --empty=drop` no longer sees an empty mail.
    dashes = [number for number, line in enumerate(lines, start=1) if line.startswith("---")]
    if dashes:
        raise AssertionError(f"{letter.name}: line {dashes[0]} starts with '---', which git am reads as a diff")
    # Every patch must be introduced: its title (whitespace-normalised) appears in the letter.
    text = " ".join(letter.read_text().split())
    missing = [path.name for path in series.series_files()
               if " ".join(series.subject(path)[2].split()) not in text]
    if missing:
        raise AssertionError(f"{letter.name} does not name the patches {', '.join(missing)} by their subjects")
    return f"{letter.name} introduces all {len(series.series_files())} patches"


def check_git_am() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        missing = workspace.make_workspace(Path(tmp) / "ws")
        count = workspace.git(Path(tmp) / "ws", "rev-list", "--count", "series-base..HEAD").stdout.strip()
    note = ""
    if missing:
        note = (f"; hunks on {', '.join(missing)} not checked: no base copy "
                "(put upstream's file under patches/.cache/base/ or use `workspace --upstream`)")
    return f"git am applied {count} commits{note}"


def check_wheel_hunks() -> str:
    checked = []
    for path in series.touched_paths():
        source = workspace.wheel_source(path)
        if source is None:
            continue
        if not source.exists():
            raise AssertionError(f"the installed wheel has no {source}")
        with tempfile.TemporaryDirectory() as tmp:
            repo = Path(tmp)
            (repo / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, repo / path)
            subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
            for patch in series.series_files():
                if not any(d.path == path for d in series.parse_patch(patch)):
                    continue
                result = subprocess.run(
                    ["git", "apply", "--include", path, str(patch)],
                    cwd=repo, capture_output=True, text=True,
                )
                if result.returncode != 0:
                    raise AssertionError(f"{patch.name} does not apply to the wheel's {source}:\n{result.stderr}")
        checked.append(path)
    return "applies to the wheel's " + ", ".join(checked)


def _only_called_without_grad_mode(name: str, infos: dict) -> bool:
    """True when every formula that calls op ``name`` does so in the GradMode-off branch."""
    from . import autograd_gen

    call = re.compile(rf"\b{re.escape(name)}(?:_symint)?\(")
    formulas = [d.formula for info in infos.values() for d in [*info.derivatives, *info.forward_derivatives]]
    calling = [f for f in formulas if call.search(f)]
    if not calling:
        return False
    for formula in calling:
        parts = autograd_gen.split_conditional(formula)
        if parts is None or parts[0].strip() != "GradMode::is_enabled()" or call.search(parts[0] + parts[1]):
            return False
    return True


# Ops with kernels that have no derivative by design; torchgen (and codegen.py) register
# autogradNotImplementedFallback for them, so backward through a direct call raises
# "derivative for ... is not implemented" instead of returning a silent zero.
NOT_DIFFERENTIABLE = {
    # Building blocks of loss_parallel()'s handlers, which run below autograd on the
    # local tensors; the gradient of the loss is _fused_cross_entropy's.
    "_fused_cross_entropy_shard_forward": "vocabulary-parallel statistics (loss_parallel handler)",
    "_fused_cross_entropy_shard_backward": "vocabulary-parallel gradient (loss_parallel handler)",
}


def check_torchgen() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        parsed = codegen.parse_patched_native_yaml(Path(tmp))
    if not parsed.new_names:
        raise AssertionError("the series adds no function to native_functions.yaml")
    infos = codegen.derivative_infos()
    lacking = [name for name in parsed.new_names
               if name not in infos and "CPU" in codegen.kernel_keys(parsed, codegen.native_function(parsed, name))]
    # An op with kernels needs no entry of its own when formulas call it only
    # with GradMode off ("GradMode::is_enabled() ? <differentiable> : <op>",
    # as upstream does for _fused_rms_norm_backward): its graph is never recorded.
    lacking = [name for name in lacking if not _only_called_without_grad_mode(name, infos)]
    lacking = [name for name in lacking if name not in NOT_DIFFERENTIABLE]
    if lacking:
        raise AssertionError(f"ops with kernels but no derivatives.yaml entry: {', '.join(lacking)}")
    return f"new ops {', '.join(parsed.new_names)}; derivatives for {', '.join(sorted(infos))}"


def check_formulas() -> str:
    from . import autograd_gen

    count = 0
    for name, info in codegen.derivative_infos().items():
        for derivative in [*info.derivatives, *info.forward_derivatives]:
            autograd_gen._compile(derivative.formula, name)
            count += 1
    return f"{count} formulas are plain calls"


def check_build() -> str:
    from . import build

    library = build.build_extension()
    return f"built {library.relative_to(series.PATCHES_DIR.parent)}"


def run_checks(build: bool = True) -> int:
    checks: list[tuple[str, Callable[[], str]]] = [
        ("series format", check_format),
        ("numbering", check_numbering),
        ("cover letter", check_cover_letter),
        ("git am", check_git_am),
        ("wheel hunks", check_wheel_hunks),
        ("torchgen", check_torchgen),
        ("formulas", check_formulas),
    ]
    if build:
        checks.append(("compile", check_build))
    failed = 0
    for name, check in checks:
        try:
            detail = check()
            print(f"PASS {name}: {detail}")
        except Exception as error:  # report every check, then fail
            failed += 1
            print(f"FAIL {name}: {error}")
            if not isinstance(error, (AssertionError, series.SeriesError)):
                traceback.print_exc()
    print("all checks passed" if not failed else f"{failed} check(s) failed")
    return 1 if failed else 0
