"""``python -m conformance --impl NAME [--device cpu|cuda]``: grade one implementation.

Runs the suite's test families under pytest, prints per-family pass / fail / xfail
counts and the worst error per dtype, and ends with a plain line
``N passed, M failed[, K xfailed]``.  Exits non-zero iff a test failed unexpectedly
(a strict XPASS of a declared divergence counts as a failure).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import pytest

from conformance import plugin
from conformance.impls import known_impls

# The bare function's families, then the subsystems that call it (docs/semantics.md, "Inside PyTorch's subsystems").
FAMILIES = ("forward", "backward", "gradcheck", "gradgradcheck", "forward_ad", "errors", "properties",
            "functorch", "export", "dynamo", "autocast", "distributed", "subclasses", "numerics", "robustness")


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m conformance", description=__doc__.splitlines()[0])
    parser.add_argument("--impl", default=os.environ.get("CONFORMANCE_IMPL", "torch"), choices=known_impls())
    parser.add_argument("--device", default=os.environ.get("CONFORMANCE_DEVICE", "cpu"), choices=("cpu", "cuda"))
    parser.add_argument("--family", action="append", choices=FAMILIES,
                        help="run only these families (repeatable; default: all)")
    parser.add_argument("-k", dest="keyword", help="pytest -k expression to select tests")
    parser.add_argument("-x", "--exitfirst", action="store_true")
    parser.add_argument("-q", "--quiet", action="store_true", help="less pytest output")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    tests_dir = os.path.join(os.path.dirname(__file__), "tests")
    families = args.family or FAMILIES
    paths = [os.path.join(tests_dir, f"test_{family}.py") for family in families]
    pytest_args = ["--impl", args.impl, "--device", args.device,
                   "-o", "python_files=test_*.py", "-p", "no:cacheprovider", "-rfE", *paths]
    if args.quiet:
        pytest_args.append("-q")
    if args.keyword:
        pytest_args += ["-k", args.keyword]
    if args.exitfirst:
        pytest_args.append("-x")
    status = pytest.main(pytest_args, plugins=[plugin])
    stale = plugin.STATE.stale if args.keyword is None else []
    if stale:
        print(f"{len(stale)} stale divergence entries (listed above): remove them from conformance/divergences.py")
    counts = plugin.totals()
    line = f"{counts['passed']} passed, {counts['failed']} failed"
    if counts["xfailed"]:
        line += f", {counts['xfailed']} xfailed"
    if counts["skipped"]:
        line += f", {counts['skipped']} skipped"
    print(line)
    if stale or status == pytest.ExitCode.NO_TESTS_COLLECTED:
        return 1
    return 0 if status == pytest.ExitCode.OK and counts["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
