"""Turn the series into a git workspace and back.

``python -m patches workspace DIR`` makes a git repository holding the base
(v2.13.0) versions of the upstream files the series touches, commits them,
and ``git am``s the series on top, so that the patches can be edited as
ordinary commits.  ``python -m patches export DIR`` writes the commits after
the base back into ``patches/`` with ``git format-patch``, keeping the file
names and the ``series`` order stable.

Base copies come from the installed torch wheel where the wheel ships the
file (the yaml files under ``torchgen/packaged`` and ``torch/*.py``).  Files
the wheel lacks (``LossNLL.cpp``) come from ``patches/.cache/base/`` or from
a PyTorch checkout given with ``--upstream``; they are never committed here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import series

BASE_AUTHOR = ("PyTorch base", "base@invalid")
BASE_DATE = "2026-01-01T00:00:00+0000"


def wheel_source(upstream_path: str) -> Path | None:
    """Where the installed wheel ships a copy of an upstream file, if it does."""
    import torch
    import torchgen

    torchgen_dir = Path(torchgen.__file__).resolve().parent
    torch_dir = Path(torch.__file__).resolve().parent
    if upstream_path == "aten/src/ATen/native/native_functions.yaml":
        return torchgen_dir / "packaged/ATen/native/native_functions.yaml"
    if upstream_path == "aten/src/ATen/native/tags.yaml":
        return torchgen_dir / "packaged/ATen/native/tags.yaml"
    if upstream_path.startswith("tools/autograd/"):
        return torchgen_dir / "packaged/autograd" / upstream_path[len("tools/autograd/") :]
    if upstream_path.startswith("torch/") and upstream_path.endswith(".py"):
        return torch_dir / upstream_path[len("torch/") :]
    if upstream_path.startswith("aten/src/ATen/") and upstream_path.endswith(".h"):
        # The wheel ships ATen's headers verbatim under torch/include.
        return torch_dir / "include/ATen" / upstream_path[len("aten/src/ATen/") :]
    return None


def base_source(upstream_path: str, upstream: Path | None = None) -> Path | None:
    """The base copy of an upstream file: wheel, then --upstream checkout, then cache."""
    wheel = wheel_source(upstream_path)
    if wheel is not None and wheel.exists():
        return wheel
    if upstream is not None and (upstream / upstream_path).exists():
        return upstream / upstream_path
    cached = series.CACHE_DIR / "base" / upstream_path
    if cached.exists():
        return cached
    return None


UPSTREAM_RAW = "https://raw.githubusercontent.com/pytorch/pytorch/{commit}/{path}"


def fetch_base(paths: list[str] | None = None) -> list[Path]:
    """Download base copies the wheel lacks (LossNLL.cpp) into patches/.cache/base.

    For CI machines with network access; the files stay in the ignored cache.
    """
    import urllib.request

    fetched = []
    for path in paths or series.touched_paths():
        if wheel_source(path) is not None:
            continue
        target = series.CACHE_DIR / "base" / path
        url = UPSTREAM_RAW.format(commit=series.base_commit(), path=path)
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        fetched.append(target)
    return fetched


def git(repo: Path, *args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(
        GIT_AUTHOR_NAME=BASE_AUTHOR[0],
        GIT_AUTHOR_EMAIL=BASE_AUTHOR[1],
        GIT_COMMITTER_NAME=BASE_AUTHOR[0],
        GIT_COMMITTER_EMAIL=BASE_AUTHOR[1],
        GIT_AUTHOR_DATE=BASE_DATE,
        GIT_COMMITTER_DATE=BASE_DATE,
    )
    result = subprocess.run(
        ["git", "-c", "core.autocrlf=false", "-c", "commit.gpgsign=false", *args],
        cwd=repo,
        env=env,
        text=True,
        capture_output=capture,
    )
    if check and result.returncode != 0:
        raise series.SeriesError(
            f"git {' '.join(args)} failed in {repo}:\n{result.stdout}{result.stderr}"
        )
    return result


def make_workspace(
    directory: Path, upstream: Path | None = None, apply: bool = True
) -> list[str]:
    """Create the workspace; returns the touched upstream files it had to leave out."""
    directory = directory.resolve()
    if directory.exists() and any(directory.iterdir()):
        raise series.SeriesError(f"{directory} exists and is not empty")
    directory.mkdir(parents=True, exist_ok=True)
    git(directory, "init", "-q", "-b", "base")
    missing: list[str] = []
    for path in series.touched_paths():
        source = base_source(path, upstream)
        if source is None:
            missing.append(path)
            continue
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    (directory / "BASE").write_text(series.base_commit() + "\n")
    git(directory, "add", "-A")
    git(directory, "commit", "-q", "-m", f"base: upstream files at {series.base_commit()}")
    git(directory, "tag", "series-base")
    if apply:
        excludes = [f"--exclude={path}" for path in missing]
        patches = [str(path) for path in series.series_files()]
        result = git(directory, "am", "-q", "--keep-cr", "--keep-non-patch", *excludes, *patches, check=False)
        if result.returncode != 0:
            git(directory, "am", "--abort", check=False)
            raise series.SeriesError(
                "git am of the series failed:\n" + result.stdout + result.stderr
            )
    _record_series_hash(directory)
    return missing


def _hash_file(directory: Path) -> Path:
    return directory / ".git" / "patches-series-hash"


def _record_series_hash(directory: Path) -> None:
    """Remember which patches/ content the workspace reflects."""
    _hash_file(directory).write_text(series.content_hash() + "\n")


def export(directory: Path, force: bool = False) -> list[Path]:
    """Write the workspace commits after the base back into patches/ (format-patch).

    Refuses when patches/ changed since the workspace was made or last
    exported (someone else exported meanwhile): exporting would silently
    drop their change.  Recreate the workspace, or pass force.
    """
    directory = directory.resolve()
    recorded = _hash_file(directory)
    if not force and (not recorded.exists() or recorded.read_text().strip() != series.content_hash()):
        raise series.SeriesError(
            "patches/ changed since this workspace was created or last exported; "
            "recreate it with `python -m patches workspace` (or pass --force to overwrite)"
        )
    old_names = []
    try:
        old_names = [path.name for path in series.series_files()]
    except series.SeriesError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        git(
            directory,
            "format-patch",
            "--zero-commit",
            "--no-signature",
            "--no-stat",
            "--full-index",
            "-o",
            tmp,
            "series-base..HEAD",
        )
        produced = sorted(Path(tmp).glob("*.patch"))
        for stale in series.PATCHES_DIR.glob("*.patch"):
            if stale.name != series.COVER_LETTER:  # not a commit: format-patch does not rewrite it
                stale.unlink()
        written: list[Path] = []
        for path in produced:
            target = series.PATCHES_DIR / path.name
            shutil.copyfile(path, target)
            written.append(target)
    (series.PATCHES_DIR / "series").write_text(
        "# Apply in this order with `git am` on top of the commit in BASE.\n"
        + "".join(path.name + "\n" for path in written)
    )
    _record_series_hash(directory)
    renamed = set(old_names) - {path.name for path in written}
    if renamed:
        print("note: patch files renamed or dropped:", ", ".join(sorted(renamed)))
    return written
