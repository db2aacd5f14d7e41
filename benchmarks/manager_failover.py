"""Manager failover as a client of a replica sees it: the managers, and the three ways the primary goes.

* graceful (SIGTERM) and crash (SIGKILL) of the primary, over a sqlite store: per round, the time until the
  replica answers ``/info`` as Primary, the failed requests and the longest request (the stall); the stopped
  manager comes back as a replica;
* store pause: the same two managers over a one-member etcd, which is SIGSTOPped for longer than the renew
  deadline (the primary steps down) and shorter than the replica's wait (``ttl`` + 2 s), then SIGCONTed: the
  time from SIGCONT until a manager is primary, and what the client of the replica saw meanwhile.

A client thread sends a filtered ``GET /v1.41/containers/json`` (forwarded, not answered from the replica's own
view) to the replica back to back on one keep-alive connection
(a new one after an error) while it happens. Used by :mod:`benchmarks.manager`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path

import attrs

import swarmha
from benchmarks.loadgen import FORWARDED, Conn, HTTPError
from benchmarks.support import wait
from tests.support.manager import ManagerProc
from tests.support.servers import Cluster

__all__ = ["Failover", "Managers", "failover", "store_pause"]


class Managers:
    """A primary and a replica over one store (a sqlite file unless ``url`` says), and the means to replace a
    stopped one."""

    def __init__(self, engine: str, directory: Path, ttl: str, url: str | None = None) -> None:
        self.dir = directory
        self.url = url or f"sqlite://{directory}/swarmha.db"
        self.ttl = ttl
        self.discovery = swarmha.connect(self.url)
        self.session = self.discovery.session(3600)
        self.discovery.put(f"docker/swarm/nodes/{engine}", engine, self.session)
        self.all: list[ManagerProc] = []
        self.primary = self._start()
        wait(lambda: self.primary.role() == "Primary", 30, "a primary")
        self.replica = self._start()
        self._ready(self.replica, self.primary)

    def _start(self) -> ManagerProc:
        m = ManagerProc(self.url, self.dir, "--replication-ttl", self.ttl, "--engine-refresh", "5s")
        self.all.append(m)
        return m

    def _ready(self, replica: ManagerProc, primary: ManagerProc) -> None:
        def ok() -> bool:
            s = replica.status()
            return s.get("Primary") == primary.addr and s.get("Nodes") == "1" and s.get("Role") == "Replica"

        wait(ok, 30, "the replica to see the primary and the engine")
        wait(lambda: primary.get("/v1.41/containers/json")[0] == 200, 30, "the primary to serve")

    def replace_primary(self) -> None:
        """The old replica is the primary now; start a new replica in place of the stopped manager."""
        self.primary, self.replica = self.replica, self._start()
        self._ready(self.replica, self.primary)

    def settle(self) -> None:
        """Name the managers by their roles again (after a store outage either may lead)."""
        wait(lambda: {self.primary.role(), self.replica.role()} == {"Primary", "Replica"}, 30, "one primary")
        if self.primary.role() != "Primary":
            self.primary, self.replica = self.replica, self.primary
        self._ready(self.replica, self.primary)

    def close(self) -> None:
        for m in self.all:
            with contextlib.suppress(Exception):
                m.stop()
        with contextlib.suppress(Exception):
            self.session.close()
        self.discovery.close()


@attrs.frozen
class Failover:
    took: float  # signal -> the old replica answers /info as Primary
    failed: int  # requests of the hammering client that did not get 200
    stall: float  # the longest request of the hammering client around the switch
    requests: int


class _Hammer:
    """The filtered container list (forwarded) to ``addr`` back to back on a thread until :meth:`stop`."""

    def __init__(self, addr: str, timeout: float) -> None:
        self.addr, self.timeout = addr, timeout
        self.durations: list[float] = []
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn: Conn | None = None
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                if conn is None:
                    conn = Conn(self.addr, timeout=self.timeout)
                status, _ = conn.get(FORWARDED)
                if status != 200:
                    self.failed += 1
            except (OSError, HTTPError):
                self.failed += 1
                if conn is not None:
                    conn.close()
                conn = None
            self.durations.append(time.perf_counter() - t0)
        if conn is not None:
            conn.close()

    def stop(self, took: float) -> Failover:
        self._stop.set()
        self._thread.join(self.timeout)
        return Failover(took, self.failed, max(self.durations), len(self.durations))


def failover(managers: Managers, sig: signal.Signals, timeout: float) -> Failover:
    """Hammer the replica with the filtered (forwarded) container list; stop the primary with ``sig``; see what the
    client saw."""
    replica, primary = managers.replica, managers.primary
    hammer = _Hammer(replica.addr, timeout)
    time.sleep(0.3)  # requests before the fault, not a verdict
    primary.signal(sig)
    took = wait(lambda: replica.role() == "Primary", timeout, "the replica to take over", poll=0.002)
    time.sleep(0.3)
    result = hammer.stop(took)
    primary.proc.wait(20)
    managers.replace_primary()
    return result


def store_pause(managers: Managers, store: Cluster, pause: float, timeout: float) -> Failover:
    """Hammer the replica; SIGSTOP the store for ``pause`` seconds; ``took``: SIGCONT until a manager is primary."""
    hammer = _Hammer(managers.replica.addr, timeout)
    time.sleep(0.3)  # requests before the fault, not a verdict
    store.pause()
    try:
        time.sleep(pause)  # the outage itself
    finally:
        store.resume()
    back = time.monotonic()
    both = (managers.primary, managers.replica)
    wait(lambda: any(m.role() == "Primary" for m in both), timeout, "a primary after the pause", poll=0.002)
    took = time.monotonic() - back
    time.sleep(0.3)
    result = hammer.stop(took)
    managers.settle()
    return result
