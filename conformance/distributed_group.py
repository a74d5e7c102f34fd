"""Start the ``distributed`` family's gloo groups and collect every rank's outcomes.

Starting a process group costs seconds, so a pytest session starts one group per world
size the cases need (2 and 4 ranks), all at once, each rank in its own subprocess
(``conformance.distributed_rank``) with one thread.  The parent only collects; the
tests grade.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

import torch

from conformance import distributed_cases
from conformance.distributed_rank import DISAGREED_EXIT

# How long a rank waits in one collective.  A case normally takes well under a second; a
# rank waits this long only when a peer raised before a collective it entered (the group
# is then restarted for the cases after it).  torch.compile compiles per rank, at
# different speeds, inside the cases: it gets longer.
COLLECTIVE_TIMEOUT_S = {"compile": 180.0}
DEFAULT_COLLECTIVE_TIMEOUT_S = 30.0


@dataclasses.dataclass(repr=False)
class GroupRun:
    """Per-case, per-rank outcomes of one group, plus what went wrong with the group itself."""

    world_size: int
    outcomes: Dict[int, Dict[str, Dict[str, Any]]]
    problems: Dict[int, str]
    restarts: int = 0  # groups started again after the ranks disagreed on a case


@dataclasses.dataclass(repr=False)
class FamilyRun:
    """The groups of one session, by world size."""

    groups: Dict[int, GroupRun]
    seconds: float

    def __repr__(self) -> str:
        sizes = {w: {r: len(c) for r, c in g.outcomes.items()} for w, g in self.groups.items()}
        problems = {w: sorted(g.problems) for w, g in self.groups.items() if g.problems}
        restarts = {w: g.restarts for w, g in self.groups.items()}
        return (f"FamilyRun(cases per world size and rank={sizes}, problems={problems}, restarts={restarts}, "
                f"{self.seconds:.1f} s)")

    def outcome(self, name: str, rank: int) -> Dict[str, Any]:
        """The case's result on ``rank`` of its group: ``{"values": ...}`` or ``{"error": ...}``."""
        world_size = distributed_cases.BY_NAME[name].world_size
        group = self.groups.get(world_size)
        if group is None:
            return {"error": f"no {world_size}-rank group ran"}
        if name in group.outcomes.get(rank, {}):
            return group.outcomes[rank][name]
        problem = group.problems.get(rank, "no result file")
        return {"error": f"rank {rank} of the {world_size}-rank group did not report this case: {problem}"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_group(impl_name: str, world_size: int, names: List[str], out_dir: pathlib.Path) -> List[Any]:
    """Start the ranks of one group in subprocesses (one thread each)."""
    root = pathlib.Path(__file__).resolve().parents[1]
    out_dir.mkdir()
    (out_dir / "names.txt").write_text("\n".join(names))
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               WORLD_SIZE=str(world_size), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    procs = []
    for rank in range(world_size):
        log = open(out_dir / f"rank{rank}.log", "wb")
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "conformance.distributed_rank", "--impl", impl_name, "--rank", str(rank),
             "--world-size", str(world_size), "--out", str(out_dir), "--collective-timeout",
             str(COLLECTIVE_TIMEOUT_S.get(impl_name, DEFAULT_COLLECTIVE_TIMEOUT_S))],
            cwd=root, env=dict(env, RANK=str(rank), LOCAL_RANK=str(rank)),
            stdout=log, stderr=subprocess.STDOUT), log))
    return procs


def _collect_group(world_size: int, procs: List[Any], out_dir: pathlib.Path, deadline: float,
                   timeout: float) -> Tuple[GroupRun, bool]:
    """Wait for the ranks: their outcomes, and whether they all stopped at a disagreement (restart)."""
    problems: Dict[int, str] = {}
    for rank, (proc, log) in enumerate(procs):
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            problems[rank] = f"killed after the family's {timeout:.0f} s timeout"
        log.close()
        if proc.returncode not in (0, DISAGREED_EXIT) and rank not in problems:
            tail = (out_dir / f"rank{rank}.log").read_text(errors="replace")[-1500:]
            problems[rank] = f"exited with code {proc.returncode}; output tail:\n{tail}"
    outcomes = {}
    for rank in range(world_size):
        path = out_dir / f"rank{rank}.pt"
        if path.exists():
            outcomes[rank] = torch.load(path, weights_only=False)
    return GroupRun(world_size, outcomes, problems), all(proc.returncode == DISAGREED_EXIT for proc, _ in procs)


class _Group:
    """One world size's cases, run in as many consecutive groups as disagreements require."""

    def __init__(self, impl_name: str, world_size: int, names: List[str], root: pathlib.Path) -> None:
        self.impl_name, self.world_size, self.names, self.root = impl_name, world_size, names, root
        self.merged = GroupRun(world_size, {r: {} for r in range(world_size)}, {})
        self.procs: List[Any] = []
        self.out_dir = root

    def start(self) -> None:
        remaining = [n for n in self.names
                     if not all(n in self.merged.outcomes[r] for r in range(self.world_size))]
        self.out_dir = self.root / f"world{self.world_size}-{self.merged.restarts}"
        self.procs = _start_group(self.impl_name, self.world_size, remaining, self.out_dir)

    def finish(self, deadline: float, timeout: float) -> GroupRun:
        while True:
            run, disagreed = _collect_group(self.world_size, self.procs, self.out_dir, deadline, timeout)
            for rank, cases in run.outcomes.items():
                self.merged.outcomes[rank].update(cases)
            self.merged.problems = run.problems
            if not disagreed or time.monotonic() > deadline:
                return self.merged
            self.merged.restarts += 1
            self.start()


def run_family(impl_name: str, names: Optional[List[str]] = None, timeout: float = 600.0) -> FamilyRun:
    """Run the cases in one gloo group per world size, the groups at the same time."""
    names = list(names) if names is not None else distributed_cases.case_names(impl_name)
    by_size: Dict[int, List[str]] = {}
    for name in names:
        by_size.setdefault(distributed_cases.BY_NAME[name].world_size, []).append(name)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ce-distributed-") as tmp:
        groups = {w: _Group(impl_name, w, group, pathlib.Path(tmp)) for w, group in sorted(by_size.items())}
        for group in groups.values():
            group.start()
        deadline = time.monotonic() + timeout
        runs = {w: group.finish(deadline, timeout) for w, group in groups.items()}
    return FamilyRun(runs, time.perf_counter() - start)
