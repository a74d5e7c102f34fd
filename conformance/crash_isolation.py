"""Run calls that may crash the process, each in a process of its own.

A segfault or SIGFPE inside a kernel kills whatever process made the call; if
that were the pytest process, one bad call would end the whole run.  Loading
torch and building/loading the patch costs seconds per process, so instead of a
fresh interpreter per call, one server interpreter (``sys.executable -c ...``)
imports torch and loads the implementation once, runs no kernel itself, and
``fork``s a child for every call: each call still runs in its own process, and a
crash is reported as the signal that ended that child.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 120.0

# Runs in the server interpreter.  Reads one JSON request per line: {"setup": code} once,
# then {"call": expression}; answers one JSON line per request.
_SERVER = r'''
import json, os, signal, sys, traceback
import torch
torch.set_num_threads(1)
namespace = {"torch": torch}
for line in sys.stdin:
    request = json.loads(line)
    if "setup" in request:
        exec(request["setup"], namespace)
        print(json.dumps({"ready": True}), flush=True)
        continue
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        signal.alarm(60)  # a hung kernel ends as SIGALRM instead of blocking the server
        try:
            result = eval(request["call"], namespace)
            answer = {"outcome": "returned",
                      "detail": result if isinstance(result, str) else type(result).__name__}
        except Exception as error:
            answer = {"outcome": "raised", "type": type(error).__name__,
                      "detail": (str(error).strip().splitlines() or [""])[0][:300]}
        os.write(write_fd, json.dumps(answer).encode())
        os._exit(0)
    os.close(write_fd)
    chunks = []
    while True:
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        answer = {"outcome": "signal", "type": signal.Signals(number).name, "detail": f"killed by signal {number}"}
    elif chunks:
        answer = json.loads(b"".join(chunks))
    else:
        answer = {"outcome": "exit", "type": str(os.WEXITSTATUS(status)), "detail": "exited without an answer"}
    print(json.dumps(answer), flush=True)
'''


class CallServer:
    """One server interpreter; ``run(expression)`` evaluates it in a forked child."""

    def __init__(self, setup: str) -> None:
        self.setup = setup
        self.process: Optional[subprocess.Popen] = None

    def _start(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        self.process = subprocess.Popen([sys.executable, "-c", _SERVER], cwd=ROOT, env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._request({"setup": self.setup}, timeout=600.0)

    def _request(self, request: dict, timeout: float = TIMEOUT_S) -> Dict[str, str]:
        assert self.process is not None and self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.close()
            raise RuntimeError(f"the call server gave no answer within {timeout:.0f} s to {request}")
        return json.loads(line)

    def run(self, expression: str) -> Dict[str, str]:
        """{"outcome": "raised" | "returned" | "signal" | "exit", "type": ..., "detail": ...}."""
        if self.process is None or self.process.poll() is not None:
            self._start()
        return self._request({"call": expression})

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        self.process = None

    def __enter__(self) -> "CallServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def assert_survived(answer: Dict[str, str], what: str) -> None:
    """Fail, naming the signal or exit, when ``what`` ended the child instead of returning or raising."""
    assert answer["outcome"] not in ("signal", "exit"), (
        f"{what} crashed the process: {answer['type']} ({answer['detail']})")
