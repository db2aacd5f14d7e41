"""etcd-specific behaviour against real etcd 3.4 servers: endpoint failover, watch resumption, 3-member faults.

The election contract itself runs on etcd in tests/test_contract.py; this file pins what only etcd has.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from pyetcd import etcdrpc

import swarmha
from swarmha.errors import DiscoveryUnavailable, InvalidDiscoveryURL, SessionExpired
from tests.support import cluster_scenarios
from tests.support.helpers import prepare_0_gives_no_ticket
from tests.support.net import free_ports
from tests.support.servers import Cluster, etcd_cluster
from tests.support.stores import fresh_prefix

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = etcd_cluster(tmp_path_factory.mktemp("etcd1"), 1)
    yield cluster
    cluster.close()


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = etcd_cluster(tmp_path_factory.mktemp("etcd3"), 3)
    yield cluster
    cluster.close()


def url_for(cluster: Cluster) -> cluster_scenarios.UrlFor:
    prefix = fresh_prefix("etcd")
    return lambda order: f"etcd://{','.join(cluster.members[i].address for i in order)}/{prefix}?timeout=2"


def test_url_options_are_checked() -> None:
    with pytest.raises(InvalidDiscoveryURL, match="unknown option"):
        swarmha.connect("etcd://127.0.0.1/p?bogus=1")
    with pytest.raises(InvalidDiscoveryURL, match="timeout"):
        swarmha.connect("etcd://127.0.0.1/p?timeout=-1")
    with pytest.raises(InvalidDiscoveryURL, match="cert and key"):
        swarmha.connect("etcd://127.0.0.1/p?cert=/x.pem")
    with pytest.raises(InvalidDiscoveryURL, match="cannot read"):
        swarmha.connect("etcd://127.0.0.1/p?ca=/nonexistent/ca.pem")


def test_a_dead_first_endpoint_fails_over_to_the_next(single: Cluster) -> None:
    (dead,) = free_ports(1)
    d = swarmha.connect(f"etcd://127.0.0.1:{dead},{single.hosts}/{fresh_prefix('etcd')}?timeout=2")
    try:
        session = d.session(5)
        record = d.create("k", "v", session)
        assert record is not None and d.get("k") == record
        with d.watch("k", record) as watch:
            assert d.delete("k", record.token)
            assert watch.wait(2.0) is True
        session.close()
    finally:
        d.close()


def test_token_is_the_revision_of_the_acquiring_write(single: Cluster) -> None:
    d = swarmha.connect(f"etcd://{single.hosts}/{fresh_prefix('etcd')}")
    try:
        session = d.session(5)
        first = d.create("k", "a", session)
        assert first is not None
        other = d.put("other", "x")  # any write in between raises the store revision
        assert d.delete("k", first.token)
        second = d.create("k", "b", session)
        assert second is not None and second.token > other.token > first.token
        session.close()
    finally:
        d.close()


def test_all_endpoints_down_is_unavailable_within_the_timeout() -> None:
    ports = free_ports(2)
    d = swarmha.connect(f"etcd://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/p?timeout=1")
    try:
        started = time.monotonic()
        with pytest.raises(DiscoveryUnavailable):
            d.get("k")
        assert time.monotonic() - started < 2.0
    finally:
        d.close()


def test_lease_expiry_is_session_expired(single: Cluster) -> None:
    d = swarmha.connect(f"etcd://{single.hosts}/{fresh_prefix('etcd')}")
    try:
        session = d.session(1)  # etcd raises it to its minimum TTL (2 s with default timings)
        record = d.create("k", "v", session)
        assert record is not None
        with d.watch("k", record) as watch:
            assert watch.wait(5.0) is True
        assert d.get("k") is None
        with pytest.raises(SessionExpired):
            session.keepalive()
        session.close()
    finally:
        d.close()


def test_a_fresh_ticket_claims_with_one_request_an_old_one_takes_a_new_lease(
    single: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prepare() grants the ticket's lease while the candidate waits: the claim is the transaction alone. A
    ticket older than ttl/6 gets a new lease at the claim, so a term never starts deep into its lease."""
    d = swarmha.connect(f"etcd://{single.hosts}/{fresh_prefix('etcd')}")
    calls: list[str] = []
    client = d._client  # type: ignore[attr-defined]
    real_call = client.call

    def counting(what: str, fn: Any, timeout: float | None = None) -> Any:
        calls.append(what)
        return real_call(what, fn, timeout)

    try:
        holder = d.session(30)
        assert d.create("k", "holder", holder) is not None
        ticket = d.prepare("k", "w", 30)
        assert ticket is not None and ticket.clock is not None
        granted_at = ticket.clock
        assert granted_at <= time.monotonic()
        monkeypatch.setattr(client, "call", counting)
        assert d.create("k", "w", ticket) is None  # lost: the ticket stays usable
        holder.close()
        calls.clear()
        won = d.create("k", "w", ticket)
        assert won is not None and won.session == ticket.id
        assert calls == ["create"] and ticket.clock == granted_at
        d.release("k", won.token, ticket)

        old = d.prepare("k", "w", 30)
        assert old is not None and old.clock is not None
        old_id = old.id
        old.clock -= 30 / 6 + 0.1  # as if it had waited longer than ttl/6
        calls.clear()
        before = time.monotonic()
        won = d.create("k", "w", old)
        assert won is not None and calls == ["lease grant", "create"]
        assert won.session == old.id != old_id and old.clock >= before
        d.release("k", won.token, old)
    finally:
        d.close()


def test_prepare_0_turns_tickets_off(single: Cluster) -> None:
    prepare_0_gives_no_ticket(f"etcd://{single.hosts}/{fresh_prefix('etcd')}?prepare=0", "etcd")


def test_watch_from_a_compacted_revision_rereads_the_key(single: Cluster) -> None:
    d = swarmha.connect(f"etcd://{single.hosts}/{fresh_prefix('etcd')}")
    try:
        seen = d.get("k")
        assert seen is None
        updated = d.put("k", "v1")
        latest = d.put("other", "x")
        kv = etcdrpc.KVStub(d._client._endpoints[0].open()._channel)  # type: ignore[attr-defined]
        kv.Compact(etcdrpc.CompactionRequest(revision=latest.token, physical=True), timeout=5)
        d._client._reads.clear()  # type: ignore[attr-defined]  # force the watch to start from the stale revision
        d._client.remember(d._k("k"), None, 1)  # type: ignore[attr-defined]
        with d.watch("k", seen) as watch:
            assert watch.wait(2.0) is True
        assert d.get("k") == updated
    finally:
        d.close()


def test_watch_resumes_from_the_last_revision_on_another_member(trio: Cluster) -> None:
    cluster_scenarios.watch_resumes_on_another_member(trio, url_for(trio))


def test_killing_the_member_clients_talk_to_keeps_one_leader(trio: Cluster) -> None:
    cluster_scenarios.kill_the_member_clients_talk_to(trio, url_for(trio))


def test_whole_cluster_down_demotes_then_recovers_without_restarts(trio: Cluster) -> None:
    cluster_scenarios.whole_cluster_down_and_back(trio, url_for(trio))
