"""Run candidate processes (tests/support/candidate_proc.py) and read their observations."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def terminate(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM ``proc`` (resumed first, in case a test SIGSTOPped it), SIGKILL it if it has not exited within
    ``timeout``, and reap it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def stop_group(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM the process group ``proc`` leads (started with ``start_new_session``), SIGKILL it if ``proc`` has
    not exited within ``timeout``; reaps ``proc``. Members that outlive it are the caller's business."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


class CandidateProcess:
    """One candidate process; its JSON observations are collected by a reader thread."""

    def __init__(self, url: str, node: str, ttl: float, key: str = "svc/leader", mode: str = "start") -> None:
        self.node = node
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.candidate_proc",
                "--url",
                url,
                "--node",
                node,
                "--ttl",
                str(ttl),
                "--key",
                key,
                "--mode",
                mode,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.lines: list[dict[str, Any]] = []
        self._new: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"reader-{node}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = json.loads(raw)
            with self._lock:
                self.lines.append(line)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.lines)

    def last(self) -> dict[str, Any] | None:
        with self._lock:
            return self.lines[-1] if self.lines else None

    def leading(self) -> bool:
        last = self.last()
        return bool(last and last.get("leader"))

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        terminate(self.proc)
        self._reader.join(5)


def first_line(
    procs: list[CandidateProcess], predicate: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    """Wait until some process reported a line matching ``predicate``; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            for line in p.snapshot():
                if predicate(line):
                    return line
        time.sleep(0.005)
    raise AssertionError(f"no matching observation within {timeout}s")
