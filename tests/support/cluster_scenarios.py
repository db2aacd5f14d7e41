"""Fault scenarios against a real 3-member store cluster, shared by tests/test_etcd.py and tests/test_zookeeper.py.

Each scenario takes a running :class:`tests.support.servers.Cluster` and a ``url(order)`` function that builds a
discovery URL listing the members in ``order`` (clients talk to the first listed member first), and leaves every member
running when it returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import swarmha
from swarmha.errors import DiscoveryUnavailable
from tests.support.helpers import outage_demotes_then_recovers, wait_for
from tests.support.servers import Cluster

KEY = "svc/leader"
TTL = 3.0
UrlFor = Callable[[list[int]], str]
T = TypeVar("T")


class TwoLeaderMonitor:
    """Samples ``is_leader`` of every candidate every few ms on a thread; records the most leaders seen at once."""

    def __init__(self, candidates: list[swarmha.Candidate]) -> None:
        self.candidates = candidates
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.003):
            self.most = max(self.most, sum(c.is_leader for c in self.candidates))

    def leader(self) -> swarmha.Candidate | None:
        found = [c for c in self.candidates if c.is_leader]
        return found[0] if len(found) == 1 else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)


@contextmanager
def candidates(url: str, n: int) -> Iterator[list[swarmha.Candidate]]:
    """``n`` candidates, each on its own Discovery (as separate processes would be); all stopped on exit."""
    ds = [swarmha.connect(url) for _ in range(n)]
    cs = [swarmha.Candidate(d, KEY, node=f"n{i}", ttl=TTL) for i, d in enumerate(ds)]
    try:
        for c in cs:
            c.start()
        yield cs
    finally:
        for c in cs:
            c.stop()
        for d in ds:
            d.close()


def kill_the_member_clients_talk_to(cluster: Cluster, url: UrlFor) -> None:
    """Leadership continues or moves when the member every client talks to dies; never two leaders."""
    with candidates(url([0, 1, 2]), 3) as cs:
        monitor = TwoLeaderMonitor(cs)
        try:
            wait_for(monitor.leader, 10.0, "a leader")
            cluster.kill(0)
            killed_at = time.monotonic()
            # a leader within ttl + 1 s of the kill, and it holds for a renew period after that
            wait_for(monitor.leader, TTL + 1.0, "a leader after the member died")
            assert time.monotonic() - killed_at <= TTL + 1.0
            settled = monitor.leader()
            assert settled is not None
            wait_for(lambda: time.monotonic() - killed_at >= TTL, TTL + 1.0, "a ttl to pass")
            assert monitor.leader() is not None, "no leader a ttl after the member died"
        finally:
            monitor.stop()
            cluster.restart(0)
        assert monitor.most <= 1, f"{monitor.most} candidates led at the same time"


def until_the_store_answers(call: Callable[[], T], timeout: float = 15.0) -> T:
    """``call()``, retried while it raises DiscoveryUnavailable, as a campaign would (bounded by ``timeout``).

    A write right after a member was killed can time out while the rest elect a new raft leader (CI finding:
    etcd's election took more than the URL's 2 s request timeout on a loaded machine).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except DiscoveryUnavailable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def watch_resumes_on_another_member(cluster: Cluster, url: UrlFor) -> None:
    """A watch whose member dies fires for a change made (through another member) while it was cut off."""
    watcher = swarmha.connect(url([0, 1, 2]))
    writer = swarmha.connect(url([1, 2, 0]))
    try:
        session = writer.session(TTL * 3)
        try:
            seen = watcher.get(KEY)
            assert seen is None
            with watcher.watch(KEY, seen) as watch:
                assert watch.wait(0.05) is False
                cluster.kill(0)
                # A timed-out create may still have been applied: then the key is there, bound to our session.
                created = until_the_store_answers(
                    lambda: writer.create(KEY, "written-while-cut-off", session) or writer.get(KEY)
                )
                assert created is not None and created.value == "written-while-cut-off"
                assert created.session == session.id
                assert watch.wait(TTL * 2) is True, "the watch missed a change made while its member was down"
            assert watcher.get(KEY) == created
        finally:
            session.close()
    finally:
        cluster.restart(0)
        watcher.close()
        writer.close()


def whole_cluster_down_and_back(cluster: Cluster, url: UrlFor) -> None:
    """All members down: the leader demotes within renew_deadline; a leader is back within ttl + 1 s of the restart."""
    outage_demotes_then_recovers(url([0, 1, 2]), cluster.kill, cluster.start, TTL, what="cluster")
