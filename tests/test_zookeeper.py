"""ZooKeeper-specific behaviour against real ZooKeeper 3.8 servers: session states, watches, 3-member faults.

The election contract itself runs on ZooKeeper in tests/test_contract.py; this file pins what only ZK has.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kazoo.exceptions import ConnectionLoss

import swarmha
from swarmha.discovery import Record, Session
from swarmha.discovery.zookeeper import _discovery, _queue
from swarmha.errors import DiscoveryError, DiscoveryUnavailable, InvalidDiscoveryURL, SessionExpired
from tests.support import cluster_scenarios
from tests.support.fault.proxy import FaultProxy
from tests.support.helpers import Collector, prepare_0_gives_no_ticket, wait_for
from tests.support.net import established_to
from tests.support.servers import Cluster, zk_cluster
from tests.support.stores import fresh_prefix

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = zk_cluster(tmp_path_factory.mktemp("zk1"), 1)
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = zk_cluster(tmp_path_factory.mktemp("zk3"), 3)
    yield cluster
    cluster.close()


def url_for(cluster: Cluster) -> cluster_scenarios.UrlFor:
    prefix = fresh_prefix("zk")
    return lambda order: f"zk://{','.join(cluster.members[i].address for i in order)}/{prefix}?timeout=2"


def test_url_options_are_checked() -> None:
    with pytest.raises(InvalidDiscoveryURL, match="unknown option"):
        swarmha.connect("zk://127.0.0.1/p?bogus=1")
    with pytest.raises(InvalidDiscoveryURL, match="timeout"):
        swarmha.connect("zk://127.0.0.1/p?timeout=0")


def test_token_is_the_czxid_and_keys_are_ephemeral(single: Cluster) -> None:
    d = swarmha.connect(f"zk://{single.hosts}/{fresh_prefix('zk')}")
    try:
        session = d.session(5)
        record = d.create("svc/leader", "n1", session)
        assert record is not None and record.session == session.id
        assert d.get("svc/leader") == record
        session.close()
        assert d.get("svc/leader") is None  # closing the session's connection removed the ephemeral at once
        again = d.session(5)
        second = d.create("svc/leader", "n2", again)
        assert second is not None and second.token > record.token
        again.close()
    finally:
        d.close()


def test_an_entry_whose_withdraw_failed_is_deleted_once_the_connection_answers(
    single: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A losing create withdraws its queue entry; when that delete fails (ConnectionLoss in the fault soak) the
    entry must still go, or it holds the key, unowned, for as long as the connection's session lives."""
    d = swarmha.connect(f"zk://{single.hosts}/{fresh_prefix('zk')}?prepare=0")
    try:
        holder, loser = d.session(30), d.session(30)
        first = d.create("svc/leader", "n1", holder)
        assert first is not None
        conn = loser.conn  # type: ignore[attr-defined]
        op = conn.op

        def failing_withdraw(what: str, fn: Any, session: Any = None) -> Any:
            if what == "withdraw":
                raise DiscoveryUnavailable("injected: the connection was lost")
            return op(what, fn, session=session)

        monkeypatch.setattr(conn, "op", failing_withdraw)
        with pytest.raises(DiscoveryUnavailable, match="injected"):
            d.create("svc/leader", "n2", loser)
        monkeypatch.setattr(conn, "op", op)
        assert d.delete("svc/leader", first.token)
        wait_for(lambda: d.get("svc/leader") is None, 5.0, "the key free: no entry of the loser left in its queue")
        again = d.create("svc/leader", "n2", loser)
        assert again is not None and again.value == "n2" and again.token > first.token
    finally:
        d.close()


@pytest.mark.parametrize("then", ["the ticket is closed", "the same session queues again"])
def test_an_entry_whose_create_answer_was_lost_never_holds_the_key(
    single: Cluster, monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    """An entry create the server applied but whose answer was lost (the connection dropped: ConnectionLoss) made
    an entry nothing tracks. Once the entries ahead of it left it held the key, unclaimed and never expiring, for
    as long as its connection's ZooKeeper session lived: the fault soak saw 15 s without a leader after a server
    restart right after an election. The entry must go when its session ends, or when that session queues again."""
    d = swarmha.connect(f"zk://{single.hosts}/{fresh_prefix('zk')}")
    try:
        holder = d.session(30)
        first = d.create("svc/leader", "n1", holder)
        assert first is not None
        create_entry = _queue._create_entry

        def applied_but_answer_lost(client: Any, path: str, data: bytes) -> Any:
            create_entry(client, path, data).get(timeout=5)
            raise ConnectionLoss()

        if then == "the ticket is closed":
            monkeypatch.setattr(_queue, "_create_entry", applied_but_answer_lost)
            assert d.prepare("svc/leader", "n2", 30) is None  # failed: the ticket was closed again
            monkeypatch.setattr(_queue, "_create_entry", create_entry)
        else:
            waiter = d.session(30)
            monkeypatch.setattr(_queue, "_create_entry", applied_but_answer_lost)
            with pytest.raises(DiscoveryUnavailable):
                d.create("svc/leader", "n2", waiter)
            monkeypatch.setattr(_queue, "_create_entry", create_entry)
            assert d.create("svc/leader", "n2", waiter) is None  # queued behind n1, not behind its lost entry
        holder.close()
        wait_for(lambda: d.get("svc/leader") is None, 5.0, "the key free once its holder left")
        third = d.session(30)
        won = d.create("svc/leader", "n3", third)
        assert won is not None and won.value == "n3"
    finally:
        d.close()


def test_a_session_not_renewed_within_ttl_expires_and_its_key_goes(single: Cluster) -> None:
    d = swarmha.connect(f"zk://{single.hosts}/{fresh_prefix('zk')}")
    try:
        session = d.session(1.0)
        record = d.create("k", "v", session)
        assert record is not None
        with d.watch("k", record) as watch:
            assert watch.wait(3.0) is True
        assert d.get("k") is None
        with pytest.raises(SessionExpired):
            session.keepalive()
        session.close()
    finally:
        d.close()


@contextlib.contextmanager
def held_with_ticket(
    cluster: Cluster, key: str, value: str, ttl: float, listing: str | None = None
) -> Iterator[tuple[swarmha.Discovery, Session, Record, Session]]:
    """A Discovery on ``cluster``, a holder of ``key`` (value "a", ttl 30 s) and a ticket queued behind it (told
    the ``listing`` of its claim)."""
    d = swarmha.connect(f"zk://{cluster.hosts}/{fresh_prefix('zk')}")
    holder = d.session(30.0)
    ticket = None
    try:
        first = d.create(key, "a", holder)
        assert first is not None
        ticket = d.prepare(key, value, ttl, listing=listing)
        assert ticket is not None
        yield d, holder, first, ticket
    finally:
        if ticket is not None:
            ticket.close()
        holder.close()
        d.close()


def test_a_ticket_waits_in_the_queue_without_a_ttl_clock_and_wins_with_a_read(single: Cluster) -> None:
    with held_with_ticket(single, "k", "b", 1.0) as (d, holder, first, ticket):
        assert d.create("k", "b", ticket) is None  # queued behind the holder, and stays queued
        assert d.get("k") == first
        time.sleep(1.5)  # longer than its ttl: a ticket's clock does not run while it waits
        ticket.keepalive()  # still alive
        with d.watch("k", first) as watch:
            assert watch.wait(0.05) is False  # armed on the holder's entry
            d.release("k", first.token, holder)
            assert watch.wait(5.0) is True and watch.known_absent  # saw it go: create without a read first
        queued = ticket.entries[d._path("k")]  # type: ignore[attr-defined]
        second = d.create("k", "b", ticket)
        assert second is not None and second == queued.record and second.token > first.token
        assert second.session == ticket.id and d.get("k") == second
        with d.watch("k", second) as watch:  # claimed: not renewed, the guard closes it ttl after the create
            assert watch.wait(3.0) is True
        assert d.get("k") is None


def steering_listings(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, str]]:
    """(kazoo client, path) of every ``K.election`` listing from now on (a spy on the Discovery's children
    requests)."""
    listed: list[tuple[Any, str]] = []
    children = _discovery._children

    def spy(client: Any, path: str, **kwargs: Any) -> Any:
        if path.endswith(".election"):
            listed.append((client, path))
        return children(client, path, **kwargs)

    monkeypatch.setattr(_discovery, "_children", spy)
    return listed


def test_the_steering_keys_after_a_win_are_listed_on_the_connection_that_made_the_ticket_first(
    single: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ZooKeeper orders what one connection sees, not what two see: the deletion event that made the ticket first
    # came on its session's connection, so a transfer written before the holder left shows on that connection.
    with held_with_ticket(single, "k", "b", 5.0) as (d, holder, first, ticket):
        assert d.create("k", "b", ticket) is None
        core = d._core  # type: ignore[attr-defined]
        shared, own = core.shared.client, ticket.conn.client  # type: ignore[attr-defined]
        assert shared is not own
        listed = steering_listings(monkeypatch)
        d.put("k.election/transfer", "b")  # persistent: the release closes the holder's session
        with d.watch("k", first) as watch:
            assert watch.wait(0.05) is False
            d.release("k", first.token, holder)
            assert watch.wait(5.0) is True and watch.known_absent
        claim = d.claim_async("k", "b", ticket, "k.election", vacant=True).result(5.0)
        assert claim.created is not None and claim.created.session == ticket.id
        assert claim.listed is not None and set(claim.listed) == {"k.election/transfer"}
        steering = [client for client, path in listed if path.endswith("/k.election")]
        assert steering == [own], "listed once, on the ticket's own connection"


def ticket_entry(ticket: Session, key: str) -> Any:
    """The ticket's entry in the queue of ``key``."""
    entries = ticket.entries  # type: ignore[attr-defined]
    return next(e for path, e in entries.items() if path.endswith(f"/{key}"))


@pytest.mark.parametrize("steered", [False, True], ids=["nothing-steered", "transfer-written-before-release"])
def test_a_ticket_next_in_line_lists_the_steering_keys_only_when_its_watch_saw_them_change(
    single: Cluster, monkeypatch: pytest.MonkeyPatch, steered: bool
) -> None:
    # The ticket watches k.election while it waits: if that znode stayed absent up to the deletion event that
    # made the ticket first, the claim lists nothing; a transfer written before the holder left (it creates
    # k.election) comes as an event before that deletion, and the claim lists as it always did.
    with held_with_ticket(single, "k", "b", 5.0, listing="k.election") as (d, holder, first, ticket):
        entry = ticket_entry(ticket, "k")
        wait_for(lambda: entry.steer_state == "quiet", 5.0, "the ticket's steering watch to be set")
        listed = steering_listings(monkeypatch)
        if steered:
            d.put("k.election/transfer", "c")  # persistent: the release closes the holder's session
        d.release("k", first.token, holder)
        wait_for(lambda: entry.first, 5.0, "the deletion event to make the ticket first")
        claim = d.claim_async("k", "b", ticket, "k.election", vacant=True).result(5.0)
        assert claim.created is not None and claim.created.session == ticket.id
        if steered:
            assert claim.listed is not None and set(claim.listed) == {"k.election/transfer"}
            assert len(listed) == 1, "the claim lists what its watch saw change"
        else:
            assert claim.listed == {}
            assert listed == [], "nothing changed under k.election: no listing"


def test_a_dropped_connection_makes_the_steering_watch_stale(single: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    # The server forgets a connection's watches when it drops, and kazoo does not set them again: a transfer
    # written after the reconnect fires nothing on the ticket's (lost) steering watch, so the claim must list.
    host, port = single.hosts.split(":")
    proxy = FaultProxy((host, int(port)))
    prefix = fresh_prefix("zk")
    d = swarmha.connect(f"zk://{proxy.address}/{prefix}")
    writer = swarmha.connect(f"zk://{single.hosts}/{prefix}")
    holder = writer.session(30.0)
    ticket = None
    try:
        first = writer.create("k", "a", holder)
        assert first is not None
        ticket = d.prepare("k", "b", 5.0, listing="k.election")
        assert ticket is not None
        entry = ticket_entry(ticket, "k")
        wait_for(lambda: entry.steer_state == "quiet", 5.0, "the ticket's steering watch to be set")
        conn = ticket.conn  # type: ignore[attr-defined]
        proxy.set_mode("drop")
        wait_for(lambda: not conn.connected.is_set(), 5.0, "kazoo to notice")
        proxy.set_mode("pass")
        wait_for(conn.connected.is_set, 10.0, "the same session on a new connection")
        hub = d._core.hub  # type: ignore[attr-defined]
        predecessor = (id(conn), entry.predecessor)
        wait_for(lambda: predecessor in hub._subs, 5.0, "the turn check to watch the predecessor again")
        listed = steering_listings(monkeypatch)
        writer.put("k.election/transfer", "c")
        writer.release("k", first.token, holder)
        wait_for(lambda: entry.first, 5.0, "the deletion event to make the ticket first")
        claim = d.claim_async("k", "b", ticket, "k.election", vacant=True).result(5.0)
        assert claim.created is not None
        assert claim.listed is not None and set(claim.listed) == {"k.election/transfer"}
        assert len(listed) == 1
    finally:
        if ticket is not None:
            ticket.close()
        holder.close()
        writer.close()
        d.close()


def test_an_unclaimed_ticket_that_comes_first_expires_within_its_ttl(single: Cluster) -> None:
    with held_with_ticket(single, "k", "stuck", 1.0) as (d, holder, first, ticket):  # never claimed
        d.release("k", first.token, holder)
        wait_for(lambda: (r := d.get("k")) is not None and r.session == ticket.id, 5.0, "the ticket to hold the key")
        started = time.monotonic()
        wait_for(lambda: d.get("k") is None, 5.0, "the unclaimed ticket to expire")
        assert time.monotonic() - started <= 1.0 + 0.5  # ttl (counted from the holder's departure), plus slack


def test_closing_a_ticket_withdraws_it_and_put_never_overwrites_an_election_key(single: Cluster) -> None:
    with held_with_ticket(single, "svc/leader", "b", 30.0) as (d, _, first, ticket):
        ticket.close()
        assert d.list("svc") == {"svc/leader": first}
        with pytest.raises(DiscoveryError, match="election key"):
            d.put("svc/leader", "x")
        assert d.delete("svc/leader", first.token)
        assert d.get("svc/leader") is None  # the withdrawn ticket did not take over
        assert d.list("svc") == {}


def test_prepare_0_in_the_url_gives_no_ticket(single: Cluster) -> None:
    prepare_0_gives_no_ticket(f"zk://{single.hosts}/{fresh_prefix('zk')}?prepare=0", "zk")


def test_suspended_connection_is_unavailable_not_expired(single: Cluster) -> None:
    d = swarmha.connect(f"zk://{single.hosts}/{fresh_prefix('zk')}?timeout=1")
    session = d.session(30.0)
    try:
        record = d.create("k", "v", session)
        assert record is not None
        single.kill()
        wait_for(lambda: not session.conn.connected.is_set(), 5.0, "kazoo to notice")  # type: ignore[attr-defined]
        with pytest.raises(DiscoveryUnavailable):
            session.keepalive()
        single.start()
        # a handshake sent into the restarted server's start-up window can go unanswered; kazoo retries it after
        # the URL's timeout (1 s), not the session's 30 s (test_a_handshake_the_server_never_answers_...)
        wait_for(lambda: session.conn.connected.is_set(), 10.0, "the session to reconnect")  # type: ignore[attr-defined]
        session.keepalive()  # the same session, confirmed again
        assert d.get("k") == record
    finally:
        single.start()
        session.close()
        d.close()


def test_kazoo_reconnect_lines_are_said_once_a_second_not_at_every_attempt() -> None:
    from swarmha.discovery.zookeeper._connection import _KAZOO_LOG, _Repeats

    assert any(isinstance(f, _Repeats) for f in _KAZOO_LOG.filters)
    repeats = _Repeats(window=60.0)

    def record(msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord(_KAZOO_LOG.name, logging.WARNING, __file__, 1, msg, args, None)

    refused = "Connection dropped: socket connection error: %s"
    assert repeats.filter(record(refused, "Connection refused"))
    assert not repeats.filter(record(refused, "Connection refused"))  # the same text again: dropped
    assert repeats.filter(record(refused, "Connection reset by peer"))  # another text: said
    assert repeats.filter(record("Session has expired"))
    always = _Repeats(window=0.0)
    assert always.filter(record("x")) and always.filter(record("x"))  # the window is what drops a repeat


def _absent(d: swarmha.Discovery, key: str) -> bool:
    """The key is gone, as a read answers; False while reads are unavailable."""
    try:
        return d.get(key) is None
    except DiscoveryUnavailable:
        return False


def test_a_handshake_the_server_never_answers_is_retried_within_the_url_timeout(single: Cluster) -> None:
    # After a restart the server can leave a handshake sent into its start-up window unanswered (seen in CI and
    # in loops of these tests). kazoo waits session timeout / number of hosts for the answer: with ttl 10 s the
    # connection stayed away 10 s, long enough for a restarted server to expire the session. The fault proxy's
    # `lossy` mode loses the handshake the same way; the reconnect must come within the URL's timeout.
    host, port = single.hosts.split(":")
    proxy = FaultProxy((host, int(port)))
    d = swarmha.connect(f"zk://{proxy.address}/{fresh_prefix('zk')}?timeout=1")
    try:
        session = d.session(10.0)
        record = d.create("k", "v", session)
        assert record is not None
        conn = session.conn  # type: ignore[attr-defined]
        proxy.set_mode("drop")
        wait_for(lambda: not conn.connected.is_set(), 5.0, "kazoo to notice")
        proxy.set_mode("lossy")  # the next handshake is accepted and lost
        wait_for(lambda: proxy._conns, 5.0, "kazoo to connect and send its handshake into the void")
        time.sleep(0.2)  # let the handshake go out (the verdict is the bound below, not this pause)
        proxy.set_mode("pass")
        healed = time.monotonic()
        took = wait_for(lambda: conn.connected.is_set(), 10.0, "the connection back")
        assert took < 1.0 + 1.0, f"reconnected {took:.2f}s after the link healed; the URL's timeout is 1 s"
        session.keepalive()  # the same ZooKeeper session, not a new one
        assert d.get("k") == record
        assert time.monotonic() - healed < 5.0
    finally:
        d.close()
        proxy.close()


def test_watch_fires_for_a_change_made_while_its_member_was_down(trio: Cluster) -> None:
    cluster_scenarios.watch_resumes_on_another_member(trio, url_for(trio))


def test_killing_the_member_clients_talk_to_keeps_one_leader(trio: Cluster) -> None:
    cluster_scenarios.kill_the_member_clients_talk_to(trio, url_for(trio))


def test_whole_ensemble_down_demotes_then_recovers_without_restarts(trio: Cluster) -> None:
    cluster_scenarios.whole_cluster_down_and_back(trio, url_for(trio))


def test_a_session_closed_while_the_store_is_down_is_closed_once_it_is_back(single: Cluster) -> None:
    # The connection's ZooKeeper session survives the restart (the server restores it): the Session's entry
    # must be deleted once the connection is back, or the key would stay as long as the process lives.
    d = swarmha.connect(f"zk://{single.hosts}/{fresh_prefix('zk')}?timeout=1")
    try:
        session = d.session(10.0)
        assert d.create("k", "v", session) is not None
        single.kill()
        wait_for(lambda: not session.conn.connected.is_set(), 5.0, "kazoo to notice")  # type: ignore[attr-defined]
        started = time.monotonic()
        session.close()
        assert time.monotonic() - started < 2.0, "close() waited for the store"
        single.start()
        # the bound that matters runs from the connection's return, when the deferred delete is sent; reads go
        # through the Discovery's own connection, which may still be coming back (its handshake, then a new
        # ZooKeeper session if the restarted server expired its old one): unavailable meanwhile, not an answer
        wait_for(lambda: session.conn.connected.is_set(), 15.0, "the connection back")  # type: ignore[attr-defined]
        wait_for(lambda: _absent(d, "k"), 5.0, "the session's key to go once the connection is back")
    finally:
        single.start()
        d.close()
    assert not any(t.name.startswith("swarmha-zk") for t in threading.enumerate())  # the timer was joined


def test_a_leader_demoted_during_an_outage_does_not_block_the_election_after_it(single: Cluster) -> None:
    # ttl 10 s: the old leader's entry (its Session closed here while the server was down) would survive the
    # restart with the connection's restored ZooKeeper session and block every candidate; it is deleted once the
    # connection is back.
    d = swarmha.connect(f"zk://{single.hosts}/{fresh_prefix('zk')}?timeout=1")
    c = swarmha.Candidate(d, "svc/leader", node="n", ttl=10.0)
    events = Collector(c.run_for_election())
    try:
        assert events.next(10.0) is True
        single.kill()
        assert events.next(12.0) is False  # demoted at the renew deadline (~6.7 s)
        single.start()
        back_at = time.monotonic()
        won_at, value = events.next_timed(15.0)
        assert value is True
        assert won_at - back_at <= 3.0, f"re-elected {won_at - back_at:.2f}s after the restart"
    finally:
        single.start()
        c.stop()
        d.close()


def test_three_hundred_candidates_share_two_connections_and_a_few_threads(single: Cluster) -> None:
    # One KazooClient per Session used to exhaust the server's maxClientCnxns=60 at about 60 candidates.
    before = threading.active_count()
    d = swarmha.connect(f"zk://{single.hosts}/{fresh_prefix('zk')}")
    sessions = [d.session(5.0) for _ in range(300)]
    try:
        records = [d.create(f"k{i}", f"n{i}", s) for i, s in enumerate(sessions)]
        assert all(r is not None for r in records)
        assert len({r.session for r in records if r is not None}) == 300  # 300 Sessions told apart
        port = int(single.hosts.split(",")[0].rsplit(":", 1)[1])
        assert established_to(port) <= 2
        assert threading.active_count() - before <= 8  # kazoo runs 3 per client, plus the timer: not 3 per Session
        for s in sessions:
            s.keepalive()
        sessions[7].close()
        assert d.get("k7") is None and d.get("k8") == records[8]  # a Session's close takes its keys only
    finally:
        for s in sessions:
            s.close()
        d.close()
