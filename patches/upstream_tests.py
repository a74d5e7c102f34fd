"""Run the series' new upstream test files against the out-of-tree build.

``python -m patches.upstream_tests [unittest args]`` takes every ``test/**/test_*.py`` the
series creates (upstream ``TestCase`` files, e.g. ``test/nn/test_fused_cross_entropy.py``),
loads the out-of-tree build (``patches.oot``) and runs them with unittest.

Why a runner: in a patched build ``F.cross_entropy`` reaches the fused kernels through
``aten::cross_entropy_loss``; out of tree the installed torch's op is stock, so the runner
points ``torch.nn.functional.cross_entropy`` (which ``nn.CrossEntropyLoss`` calls too) at
``patches.oot.patched_cross_entropy`` for the run.  ``torch.ops.aten._fused_cross_entropy``
and its backward are the extension's real registrations, so direct calls need nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import tempfile
import unittest
from pathlib import Path
from typing import Iterator

from . import series


def test_files() -> dict[str, str]:
    """The test files the series creates: upstream path -> text."""
    return {path: text for path, text in series.new_files().items()
            if path.startswith("test/") and Path(path).name.startswith("test_") and path.endswith(".py")}


@contextlib.contextmanager
def patched_functional() -> Iterator[None]:
    """``F.cross_entropy`` runs the series' routing (as in a patched build) inside the block."""
    import torch.nn.functional as F

    from . import oot

    oot.load()
    original = F.cross_entropy
    F.cross_entropy = oot.patched_cross_entropy
    try:
        yield
    finally:
        F.cross_entropy = original


def load_suite(directory: Path) -> unittest.TestSuite:
    """Write the series' test files under ``directory`` and import them as modules."""
    suite = unittest.TestSuite()
    for path, text in sorted(test_files().items()):
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        name = "series_" + Path(path).stem
        spec = importlib.util.spec_from_file_location(name, target)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # instantiate_device_type_tests looks classes up by module
        spec.loader.exec_module(module)
        suite.addTests(unittest.defaultTestLoader.loadTestsFromModule(module))
    return suite


def run(verbosity: int = 2) -> unittest.TestResult:
    """Run every test file of the series against the out-of-tree build."""
    if not test_files():
        raise series.SeriesError("the series creates no test/**/test_*.py file")
    with tempfile.TemporaryDirectory() as tmp, patched_functional():
        suite = load_suite(Path(tmp))
        return unittest.TextTestRunner(verbosity=verbosity).run(suite)


def main() -> int:
    result = run(verbosity=2 if "-v" in sys.argv[1:] else 1)
    return 0 if result.wasSuccessful() and result.testsRun else 1


if __name__ == "__main__":
    sys.exit(main())
