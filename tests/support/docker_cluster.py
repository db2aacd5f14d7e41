"""Managers in front of real engines: a sqlite store with the engines registered, manager processes on it."""

from __future__ import annotations

from pathlib import Path

import swarmha
from tests.support.dockerd import DockerEngine
from tests.support.helpers import wait_for
from tests.support.manager import ManagerProc

__all__ = ["Cluster", "healthy_count"]


def healthy_count(m: ManagerProc) -> int:
    """How many engines ``m``'s ``docker info`` shows Healthy (0 when it does not answer)."""
    code, info = m.get("/info")
    if code != 200:
        return 0
    return sum(1 for k, v in info["SystemStatus"] if k.strip() == "└ Status" and v == "Healthy")


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
