"""Fault injection: never two leaders, tokens always increase, and always a leader again after a fault.

A short seeded run per backend (tests/support/fault/harness.py); the long soak is
``python -m tests.support.fault.soak``.
The checker's own tests below show it does catch each kind of violation.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import swarmha
from swarmha.discovery import Record
from tests.support.fault.checker import Fault, Observation, check
from tests.support.fault.harness import run_faults, store_back
from tests.support.fault.proxy import FaultProxy
from tests.support.helpers import wait_for
from tests.support.stores import BACKENDS, StoreFixture

# ttl per backend: etcd leases are whole seconds with a ~2 s server minimum
FAULT_TTL = {"sqlite": 1.0, "etcd": 2.0, "zk": 1.5, "consul": 2.0, "postgres": 1.0, "redis": 1.0}
SHORT_RUN_FAULTS = 8


@pytest.mark.slow
@pytest.mark.parametrize("backend", [b for b in FAULT_TTL if b in BACKENDS])
def test_short_fault_run_finds_no_violation(backend: str, stores: dict[str, StoreFixture], tmp_path: Path) -> None:
    store = stores[backend]
    try:
        report = run_faults(store, tmp_path, faults=SHORT_RUN_FAULTS, seed=20261126, ttl=FAULT_TTL[backend], budget=120)
    finally:
        if store.can_stop:
            store.start()
    print(report.summary())
    assert report.faults == SHORT_RUN_FAULTS
    assert report.overlaps == []
    assert report.token_regressions == []
    assert report.slow_recoveries == []
    assert report.crashes == []
    assert report.terms >= 2  # leadership did move: the faults hit leaders


def obs(node: str, a: float, b: float, token: int | None) -> Observation:
    return Observation(node, a, b, token, token)


def test_checker_reports_overlapping_terms() -> None:
    history = [obs("x", 1.0, 1.1, 5), obs("x", 2.0, 2.1, 5), obs("y", 1.5, 1.6, 6), obs("y", 3.0, 3.1, 6)]
    report = check(history, [], ttl=1.0)
    assert len(report.overlaps) == 1 and "term 6" in report.overlaps[0]


def test_checker_reports_token_regressions_and_shared_tokens() -> None:
    report = check([obs("x", 1.0, 1.1, 7), obs("y", 2.0, 2.1, 6)], [], ttl=1.0)
    assert report.token_regressions == ["token 6 (y) follows token 7"]
    report = check([obs("x", 1.0, 1.1, 7), obs("y", 2.0, 2.1, 7)], [], ttl=1.0)
    assert report.token_regressions == ["token 7 claimed by x and y"]


def test_checker_reports_slow_recovery_after_a_heal() -> None:
    history = [obs("x", 1.0, 1.1, 1), obs("y", 4.5, 4.6, 2)]
    report = check(history, [Fault("kill_leader", "x", 1.2, 1.2)], ttl=1.0)
    assert len(report.slow_recoveries) == 1 and "after 3.300s" in report.slow_recoveries[0]
    report = check(history[:1], [Fault("kill_leader", "x", 1.2, 1.2)], ttl=1.0)
    assert "no leader afterwards" in report.slow_recoveries[0]


def test_checker_ignores_work_not_confirmed_after_it_was_done() -> None:
    # y read token 6 before its work but not after (it was deposed meanwhile): not counted as leader work
    history = [obs("x", 1.0, 2.0, 5), Observation("y", 1.5, 1.6, 6, None), obs("y", 3.0, 3.1, 6)]
    assert check(history, [], ttl=1.0).overlaps == []


def test_checker_reports_a_missing_leader_even_when_the_next_fault_came_late() -> None:
    # no leader after the heal at 1.2; the harness gave up waiting and injected the next fault at 5.0
    history = [obs("x", 1.0, 1.1, 1), obs("y", 5.5, 5.6, 2)]
    faults = [Fault("kill_leader", "x", 1.2, 1.2), Fault("cut", "y", 5.0, 5.1)]
    report = check(history, faults, ttl=1.0)
    assert (
        len(report.slow_recoveries) == 1 and "no leader before the next fault 3.800s later" in report.slow_recoveries[0]
    )
    # a fault injected within ttl + 1 s of the heal, before anyone led, is measured instead
    faults = [Fault("kill_leader", "x", 1.2, 1.2), Fault("cut", "y", 2.0, 5.1)]
    assert check(history, faults, ttl=1.0).slow_recoveries == []


@pytest.mark.slow
@pytest.mark.parametrize("backend", [b for b in ("etcd", "zk") if b in BACKENDS])
def test_a_paused_store_heals_when_it_commits_a_write_again(backend: str, stores: dict[str, StoreFixture]) -> None:
    store: Any = stores[backend]
    assert store.await_commits(10.0) is not None  # serving: a write commits at once
    store.pause()
    try:
        assert store.await_commits(1.2) is None  # every member stopped: nothing commits
    finally:
        store.resume()
    ended = time.monotonic()
    back = store_back(store, ended)
    assert ended <= back < ended + 10.0


def test_a_store_that_cannot_tell_heals_when_its_fault_ends() -> None:
    class Unknown:
        pass

    class Late:
        def await_commits(self, limit: float) -> float | None:
            return 7.5

    class Never:
        def await_commits(self, limit: float) -> float | None:
            return None

    assert store_back(Unknown(), 5.0) == 5.0
    assert store_back(Late(), 5.0) == 7.5
    assert store_back(Never(), 5.0) == 5.0  # the slow recovery is then the candidates' to answer for


@pytest.mark.slow
@pytest.mark.skipif("zk" not in BACKENDS, reason="no ZooKeeper store")
def test_zk_shared_client_recovers_when_kazoo_gives_up(stores: dict[str, StoreFixture], tmp_path: Path) -> None:
    """Soak finding (zk, seed 70000): a link that loses bytes mid-stream made kazoo's connection thread die
    ("xids do not match" escapes its connect loop); the shared client stayed CLOSED, so every candidate's
    reads failed forever and no one led for 20 s, until a killed worker came back with a fresh client."""
    report = run_faults(stores["zk"], tmp_path, faults=10, seed=1, ttl=1.0, kinds=("lossy", "kill_leader"), budget=120)
    print(report.summary())
    assert report.faults_by_kind.get("lossy", 0) >= 5
    assert report.overlaps == [] and report.token_regressions == []
    assert report.slow_recoveries == [] and report.crashes == []


@pytest.mark.slow
def test_sqlite_candidate_started_during_an_outage_survives(stores: dict[str, StoreFixture], tmp_path: Path) -> None:
    """Soak finding (sqlite, chunk seed 70006): a worker respawned just before a store outage died in
    swarmha.connect() (schema set-up hit the locked file), so one candidate fewer campaigned from then on.
    Seed 3 with kill_any + store_outage crashed 9 workers in 10 faults before the fix."""
    store = stores["sqlite"]
    try:
        report = run_faults(store, tmp_path, faults=10, seed=3, ttl=1.0, kinds=("kill_any", "store_outage"), budget=90)
    finally:
        store.start()
    print(report.summary())
    assert report.crashes == []
    assert report.overlaps == [] and report.token_regressions == [] and report.slow_recoveries == []


@pytest.mark.skipif("zk" not in BACKENDS, reason="no ZooKeeper store")
@pytest.mark.parametrize("takeover", ["before the delete is sent", "after the first delete step"])
def test_zk_deposed_leaders_late_delete_spares_its_successors_key(
    stores: dict[str, StoreFixture], monkeypatch: pytest.MonkeyPatch, takeover: str
) -> None:
    """Soak finding (zk, seed 70000, overlap of 1.6 ms): the deposed leader c0 (link delayed) read its key
    (czxid = its token) for a stale-key delete; its session ended meanwhile, c2 created the key anew, and
    c0's delete *by data version* (0 in every new znode) arrived and removed c2's key while c2 still led;
    c1 won the free key at once. This replays that interleaving deterministically (the takeover after the
    delete's first store step: the read, in that code), and the takeover just before the delete is sent (a
    delete that arrives late): either way c2's key must survive, and only c0's own entry may go."""
    url = stores["zk"].url()
    deposed, successor = swarmha.connect(url), swarmha.connect(url)
    new_session = successor.session(1.0)
    try:
        old_session = deposed.session(1.0)
        old = deposed.create("svc/leader", "c0", old_session)
        assert old is not None
        replaced: list[Record] = []

        def take_over() -> None:
            old_session.close()
            record = successor.create("svc/leader", "c2", new_session)
            assert record is not None
            replaced.append(record)

        def patch(conn: Any) -> None:  # every request of the deposed Discovery goes through one of its connections
            real_op = conn.op

            def op(what: str, fn: Callable[[object], object], session: object = None) -> object:
                if what == "delete" and not replaced and takeover.startswith("before"):
                    take_over()
                result = real_op(what, fn, session=session)
                if what == "delete" and not replaced:
                    take_over()
                return result

            monkeypatch.setattr(conn, "op", op)

        patch(deposed._core.shared)  # type: ignore[attr-defined]
        patch(deposed._core.connection(1.0))  # type: ignore[attr-defined]
        deleted = deposed.delete("svc/leader", old.token)
        assert replaced and successor.get("svc/leader") == replaced[0]
        # Sent late, it finds nothing to delete; in the other order the first step removed c0's own entry.
        assert deleted is not takeover.startswith("before")
    finally:
        new_session.close()
        deposed.close()
        successor.close()


def test_fault_proxy_frees_finished_connections_and_forwards_past_fd_1024() -> None:
    """Soak finding (zk-cluster, seed 70000): the proxy never closed a finished connection's sockets, and polled
    with select(), which rejects descriptors >= 1024. After a few thousand reconnects every new proxied
    connection died at once, and the ZooKeeper ensemble looked as if it refused sessions for a minute."""
    echo = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        echo.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = echo.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.sendall(conn.recv(64))

    server = threading.Thread(target=serve, name="test-echo")
    server.start()
    proxy = FaultProxy(echo.getsockname())
    ballast: list[socket.socket] = []
    try:
        for i in range(200):
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as c:
                c.sendall(b"ping %d" % i)
                assert c.recv(64) == b"ping %d" % i
        wait_for(lambda: not proxy._conns, 10.0, "the proxy to close its finished connections")
        while (probe := socket.socket()).fileno() < 1100:  # push the next descriptors past select()'s limit
            ballast.append(probe)
        probe.close()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as c:
            c.sendall(b"late")
            assert c.recv(64) == b"late"
    finally:
        for s in ballast:
            s.close()
        proxy.close()
        stop.set()
        server.join(5)
        echo.close()
