"""The pytest plugin behind ``python -m conformance``.

It picks the implementation and device once (``--impl`` / ``--device`` or the
``CONFORMANCE_IMPL`` / ``CONFORMANCE_DEVICE`` variables), prints what it grades in
the report header, turns declared divergences into strict xfails, and keeps the
per-family counts and worst errors that the summary prints.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Dict, List, Tuple

import pytest
import torch

from conformance import divergences
from conformance.cases import Case
from conformance.impls import divergence_profile, get_impl, known_impls


@dataclasses.dataclass
class RunState:
    impl: str = "torch"
    device: str = "cpu"
    counts: Dict[str, collections.Counter] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(collections.Counter))
    worst: Dict[Tuple[str, str], Tuple[float, str]] = dataclasses.field(default_factory=dict)
    failures: List[str] = dataclasses.field(default_factory=list)
    stale: List[divergences.Divergence] = dataclasses.field(default_factory=list)
    declared_nodes: set = dataclasses.field(default_factory=set)
    current_declared: bool = False


STATE = RunState()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance")
    group.addoption("--impl", default=os.environ.get("CONFORMANCE_IMPL", "torch"),
                    help=f"implementation to grade: {', '.join(known_impls())} (env CONFORMANCE_IMPL)")
    group.addoption("--device", default=os.environ.get("CONFORMANCE_DEVICE", "cpu"),
                    choices=("cpu", "cuda"), help="device to grade on (env CONFORMANCE_DEVICE)")


def pytest_configure(config: pytest.Config) -> None:
    STATE.impl = config.getoption("--impl")
    STATE.device = config.getoption("--device")
    if STATE.impl not in known_impls():
        raise pytest.UsageError(f"unknown implementation {STATE.impl!r}; known: {', '.join(known_impls())}")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Make the implementation once, before any test: if it cannot be made, say why once and stop.

    Otherwise every test would repeat the same error through the session-scoped fixture.
    """
    try:
        get_impl(STATE.impl)
    except Exception as error:  # noqa: BLE001 - any failure to make it ends the run the same way
        pytest.exit(f"conformance: implementation {STATE.impl!r} is unavailable: "
                    f"{type(error).__name__}: {error}", returncode=pytest.ExitCode.USAGE_ERROR)


def describe_run() -> str:
    device = STATE.device
    if device == "cuda" and torch.cuda.is_available():
        device += f" ({torch.cuda.get_device_name()})"
    elif device == "cuda":
        device += " (not available)"
    profile = divergence_profile(STATE.impl)
    declared = "" if profile == STATE.impl else f" (declared divergences of {profile!r})"
    return (f"conformance: implementation={STATE.impl}{declared} torch={torch.__version__} "
            f"(git {torch.version.git_version[:12]}) device={device}")


def pytest_report_header(config: pytest.Config) -> List[str]:
    return [describe_run()]


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    used = set()
    no_cuda = STATE.device == "cuda" and not torch.cuda.is_available()
    for item in items:
        if no_cuda:
            item.add_marker(pytest.mark.skip(reason="--device cuda: torch.cuda.is_available() is False"))
            continue
        case = _case_of(item)
        entry = divergences.find(divergence_profile(STATE.impl), case.conformance_id)
        if entry is not None:
            used.add(entry)
            STATE.declared_nodes.add(item.nodeid)
            item.add_marker(pytest.mark.xfail(strict=True, reason=f"{entry.rule}: {entry.reason}"))
    families = {_case_of(item).family for item in items}
    STATE.stale = [d for d in divergences.for_impl(divergence_profile(STATE.impl))
                   if d not in used and d.pattern.split(":", 1)[0] in families]


def _case_of(item: pytest.Item) -> Case:
    """The parametrized case, or one named after the test (unittest-style tests)."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "case" in callspec.params:
        return callspec.params["case"]
    family = item.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    return Case(family, None, name=item.name.removeprefix("test_"))


def _family_of(item: pytest.Item) -> str:
    return _case_of(item).family


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    report.conformance_family = _family_of(item)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    family = getattr(report, "conformance_family", "other")
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "failed"  # strict XPASS is a failure
        else:
            outcome = report.outcome
        STATE.counts[family][outcome] += 1
        if outcome == "failed":
            STATE.failures.append(report.nodeid)


@pytest.fixture(scope="session")
def impl_name() -> str:
    return STATE.impl


@pytest.fixture(scope="session")
def impl():
    return get_impl(STATE.impl)


@pytest.fixture(scope="session")
def device() -> str:
    return STATE.device


def pytest_runtest_setup(item: pytest.Item) -> None:
    STATE.current_declared = item.nodeid in STATE.declared_nodes


def record_error(case, ratio: float) -> None:
    """Keep the worst error/tolerance ratio seen per family and dtype (declared divergences aside)."""
    if STATE.current_declared:
        return
    key = (case.family, case.dtype_name)
    if key not in STATE.worst or ratio > STATE.worst[key][0]:
        STATE.worst[key] = (ratio, case.subject)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    write = terminalreporter.write_line
    write("")
    write(describe_run())
    write(f"{'family':<16}{'passed':>8}{'failed':>8}{'xfailed':>9}{'skipped':>9}")
    for family in sorted(STATE.counts):
        c = STATE.counts[family]
        write(f"{family:<16}{c['passed']:>8}{c['failed']:>8}{c['xfailed']:>9}{c['skipped']:>9}")
    if STATE.worst:
        write("worst error / tolerance (<= 1 passes), per family and dtype:")
        for (family, dtype), (ratio, subject) in sorted(STATE.worst.items()):
            write(f"  {family:<12} {dtype:<9} {ratio:9.3g}  {subject}")
    for entry in STATE.stale:
        write(f"STALE divergence entry (matches no test): {entry.impl} {entry.pattern} [{entry.rule}]")


def totals() -> collections.Counter:
    total: collections.Counter = collections.Counter()
    for counter in STATE.counts.values():
        total.update(counter)
    return total
