"""A manager pair (primary and replica processes) in front of the session's real engines, for the Docker tests.

:class:`Cluster` registers the engines under ``docker/swarm/nodes/`` in a sqlite store of its own and starts
managers on it; :func:`cli` runs the stock docker CLI against a manager; :class:`Lines` reads a process's output
with bounded waits. The module fixtures ``cluster`` and ``pair`` (import them into the test module) give each
test module its own store and manager pair over the session's engines.
"""

from __future__ import annotations

import queue
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import swarmha
from tests.support.docker_engines import DockerEngine, docker_cli
from tests.support.helpers import wait_for
from tests.support.manager import ManagerProc

__all__ = ["LOOP", "Cluster", "Lines", "cli", "cluster", "healthy_count", "pair", "popen_cli"]

LOOP = "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done"


class Cluster:
    """``engines`` registered under ``docker/swarm/nodes/`` in a sqlite store of ``tmp``; managers started on it."""

    def __init__(self, engines: list[DockerEngine], tmp: Path) -> None:
        self.engines = engines
        self.url = f"sqlite://{tmp}/swarmha.db"
        self.discovery = swarmha.connect(self.url)
        self.session = self.discovery.session(600)
        for e in engines:
            self.discovery.put(f"docker/swarm/nodes/{e.addr}", e.addr, self.session)
        self.tmp = tmp
        self.managers: list[ManagerProc] = []

    def start_managers(self, *extra: str) -> tuple[ManagerProc, ManagerProc]:
        """A primary, then a replica; returns once the replica sees the primary and every engine Healthy."""
        first = ManagerProc(self.url, self.tmp, "--replication-ttl", "3s", *extra)
        self.managers.append(first)  # stopped by close() even if a wait below fails
        wait_for(lambda: first.role() == "Primary", 20, "a primary")
        second = ManagerProc(self.url, self.tmp, "--replication-ttl", "3s", *extra)
        self.managers.append(second)
        n = len(self.engines)

        def ready() -> bool:
            status = second.status()
            return status.get("Primary") == first.addr and status.get("Nodes") == str(n) and healthy_count(second) == n

        # Every engine Healthy, not just listed: until its first refresh answers, a manager shows them Pending.
        wait_for(ready, 20, "the replica to see the primary and every engine healthy")
        wait_for(lambda: healthy_count(first) == n, 20, "the primary's engines")
        return first, second

    def start_single_replica(self, *extra: str) -> ManagerProc:
        """One more replicated manager; returns once it sees a primary and every engine Healthy."""
        m = ManagerProc(self.url, self.tmp, "--replication-ttl", "3s", *extra)
        self.managers.append(m)
        n = len(self.engines)

        def ready() -> bool:
            status = m.status()
            return status.get("Role") == "Replica" and bool(status.get("Primary")) and healthy_count(m) == n

        wait_for(ready, 20, "the new replica to see the primary and every engine healthy")
        return m

    def start_single(self, *extra: str) -> ManagerProc:
        """One more manager without replication (always primary) on the same engines, ready when all are Healthy."""
        m = ManagerProc(self.url, self.tmp, *extra, replication=False)
        self.managers.append(m)
        wait_for(lambda: healthy_count(m) == len(self.engines), 20, "the manager's engines")
        return m

    def close(self) -> None:
        for m in self.managers:
            m.stop()
        self.session.close()
        self.discovery.close()


def healthy_count(m: ManagerProc) -> int:
    """How many engines ``m``'s ``docker info`` shows Healthy (0 when it does not answer)."""
    code, info = m.get("/info")
    if code != 200:
        return 0
    return sum(1 for k, v in info["SystemStatus"] if k.strip() == "└ Status" and v == "Healthy")


@pytest.fixture(scope="module")
def cluster(docker_engines: list[DockerEngine], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(docker_engines, tmp_path_factory.mktemp("cluster"))
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def pair(cluster: Cluster) -> tuple[ManagerProc, ManagerProc]:
    return cluster.start_managers()


def cli(m: ManagerProc, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return docker_cli(f"tcp://{m.addr}", *args, **kw)


class Lines:
    """Read a process's stdout lines on a thread; ``next(timeout)`` is bounded."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.q: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def next(self, timeout: float) -> str | None:
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout}s") from None


def popen_cli(m: ManagerProc, *args: str) -> subprocess.Popen[str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "DOCKER_HOST": f"tcp://{m.addr}"}
    return subprocess.Popen(["docker", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
