"""What the tests read from the built kernel objects: binutils output per object file."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from patches import build, oot


def binutils_output(tool: str, flag: str, pattern: str) -> dict[str, str]:
    """``tool flag`` run on every built kernel object matching ``pattern``: object name -> output.

    Skips the test when the tool is not installed; fails it when nothing was built.
    """
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} (binutils) is not installed")
    oot.load()
    objects = sorted((build.build_dir() / "obj").glob(pattern))
    assert objects, f"no kernel object matching {pattern} was built"
    return {obj.name: subprocess.run([path, flag, str(obj)], capture_output=True, text=True, check=True).stdout
            for obj in objects}
