"""Threads per Discovery at idle, by name, on every backend: the table in docs/api.md ("Threads"), asserted.

The scene is the one the table describes: one Discovery, a Candidate leading one key and a Follower watching it,
nothing changing. The threads counted are the ones that appeared after the test's own (those alive before the
Discovery was opened: the test stores' servers, leftovers of earlier tests); the Consul API double's connection
threads are the test store's, not the client's, and are left out. The test waits (bounded) for the set of
threads to settle to the table's row: threads that served the election's first requests end after an idle
period of their own (the engine's spare workers, for one).
"""

from __future__ import annotations

import collections
import re
import threading

import pytest

import swarmha
from tests.support.consul_double import CONNECTION_THREAD
from tests.support.helpers import COLLECTOR_THREAD, Collector, wait_for
from tests.support.stores import StoreFixture

TTL = 10.0

#: Every Discovery: the election engine's timer and the one worker it keeps while a campaign or a follow lives.
ENGINE = {"swarmha-engine-timer": 1, "swarmha-engine-worker": 1}

#: backend -> the threads beyond ENGINE at idle, by name ("[prefix]": the URL's key prefix; see docs/api.md).
IDLE_THREADS: dict[str, dict[str, int]] = {
    "memory": {},
    "sqlite": {"swarmha-sqlite-feed": 1},
    "etcd": {"swarmha-etcd-watch": 1, "grpc (_run)": 2},
    "zk": {
        "swarmha-zk-timer": 1,
        **{
            f"swarmha-zk[{conn}]-{role}": 1
            for conn in ("shared", f"sessions(ttl={TTL:g})")
            for role in ("io", "completions", "callbacks")
        },
    },
    "consul": {"swarmha-consul-watch[prefix]": 1},
    "postgres": {"swarmha-postgres-watch": 1},
    "pgbouncer": {"swarmha-postgres-watch": 1},
    "redis": {"swarmha-redis-watch[prefix]": 1},
}

#: Seconds the threads get to settle: the engine's and the watch streams' idle periods (2 s) with room to spare.
SETTLE = 10.0


def _label(name: str, prefix: str) -> str:
    """A thread's name as the table writes it: the URL's key prefix as ``[prefix]``; gRPC's unnamed threads
    (grpcio starts them as ``Thread-N (_run)``) as ``grpc (_run)``."""
    name = name.replace(f"[{prefix}/]", "[prefix]").replace(f"[{prefix}]", "[prefix]")
    return re.sub(r"^Thread-\d+ \(_run\)$", "grpc (_run)", name)


def _new_threads(before: set[threading.Thread], prefix: str) -> collections.Counter[str]:
    return collections.Counter(
        _label(t.name, prefix)
        for t in threading.enumerate()
        if t not in before and t.is_alive() and t.name not in (CONNECTION_THREAD, COLLECTOR_THREAD)
    )


@pytest.mark.slow
def test_threads_at_idle_are_the_documented_ones(store: StoreFixture) -> None:
    expected = collections.Counter({**ENGINE, **IDLE_THREADS[store.name]})
    before = set(threading.enumerate())
    url = store.url()
    prefix = url.split("?")[0].rstrip("/").rpartition("/")[2]
    d = swarmha.connect(url)
    try:
        candidate = swarmha.Candidate(d, "svc/leader", node="n1", ttl=TTL)
        follower = swarmha.Follower(d, "svc/leader")
        elected = Collector(candidate.run_for_election())
        leaders = Collector(follower.follow_election())
        try:
            assert elected.next(timeout=10.0) is True
            while (leader := leaders.next(timeout=10.0)) is None:
                pass
            assert leader.node == "n1"
            seen: list[collections.Counter[str]] = []

            def settled() -> bool:
                seen.append(_new_threads(before, prefix))
                return seen[-1] == expected

            try:
                wait_for(settled, SETTLE, "the threads to settle", poll=0.05)
            except AssertionError:
                pytest.fail(f"{store.name}: threads at idle {dict(seen[-1])}, documented {dict(expected)}")
        finally:
            candidate.stop()
            follower.stop()
            elected.join()
            leaders.join()
    finally:
        d.close()
