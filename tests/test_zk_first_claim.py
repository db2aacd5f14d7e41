"""A claim of a ZooKeeper key not yet known to be a queue (``swarmha.discovery.zookeeper._queue``,
``create_with_entry_steps``), against a real ZooKeeper 3.8: one transaction makes the queue with the claimer's
entry in it; a claimer that finds the key there reads its holder, the queue's listing first, and leaves nothing
behind; a plain key or a missing parent goes the usual way."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from kazoo.client import KazooClient

import swarmha
from swarmha.discovery.zookeeper._entry import QUEUE_MARK
from tests.support.servers import Cluster, zk_cluster
from tests.support.stores import fresh_prefix

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = zk_cluster(tmp_path_factory.mktemp("zk-first"), 1)
    yield cluster
    cluster.close()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, str]]:
    """(client, request type) of every request sent through kazoo's request queue from now on."""
    seen: list[tuple[Any, str]] = []
    call = KazooClient._call

    def counted(client: KazooClient, request: Any, async_object: Any) -> Any:
        seen.append((client, type(request).__name__))
        return call(client, request, async_object)

    monkeypatch.setattr(KazooClient, "_call", counted)
    return seen


@pytest.fixture
def raw(single: Cluster) -> Iterator[KazooClient]:
    client = KazooClient(hosts=single.hosts)
    client.start(timeout=10)
    yield client
    client.stop()


def kinds(sent: list[tuple[Any, str]], client: Any) -> list[str]:
    return [kind for c, kind in sent if c is client]


@contextlib.contextmanager
def two(single: Cluster) -> Iterator[tuple[str, swarmha.Discovery, swarmha.Discovery]]:
    """A fresh prefix and two Discoveries on it (two processes, as it were), without tickets."""
    prefix = fresh_prefix("zk")
    first = swarmha.connect(f"zk://{single.hosts}/{prefix}?prepare=0")
    second = swarmha.connect(f"zk://{single.hosts}/{prefix}?prepare=0")
    try:
        yield prefix, first, second
    finally:
        first.close()
        second.close()


def test_a_first_claim_makes_the_queue_and_its_entry_in_one_request_and_the_token_is_the_entry_czxid(
    single: Cluster, sent: list[tuple[Any, str]], raw: KazooClient
) -> None:
    prefix = fresh_prefix("zk")
    raw.ensure_path(f"/{prefix}/svc")
    d = swarmha.connect(f"zk://{single.hosts}/{prefix}?prepare=0")
    try:
        session = d.session(10)
        sent.clear()
        claim = d.claim_async("svc/leader", "n1", session).result(5.0)
        assert claim.created is not None and claim.created.session == session.id
        assert kinds(sent, session.conn.client) == ["Transaction"]  # type: ignore[attr-defined]
        data, _ = raw.get(f"/{prefix}/svc/leader")
        assert data == QUEUE_MARK
        (entry,) = raw.get_children(f"/{prefix}/svc/leader")
        value, stat = raw.get(f"/{prefix}/svc/leader/{entry}")
        assert value == b"n1" and stat.ephemeralOwner and claim.created.token == stat.czxid
        assert d.get("svc/leader") == claim.created
        session.close()
        assert d.get("svc/leader") is None
        again = d.session(10)
        second = d.claim_async("svc/leader", "n2", again).result(5.0)
        assert second.created is not None and second.created.token > claim.created.token
    finally:
        d.close()


def test_a_claimer_finding_the_key_held_reads_the_holder_listing_first_and_leaves_no_entry(
    single: Cluster, sent: list[tuple[Any, str]], raw: KazooClient
) -> None:
    with two(single) as (prefix, first, second):
        won = first.claim_async("svc/leader", "n1", first.session(10)).result(5.0).created
        assert won is not None
        session = second.session(10)
        sent.clear()
        lost = second.claim_async("svc/leader", "n2", session).result(5.0)
        assert lost.created is None and lost.holder == won
        # the transaction found the key (and made nothing), then the listing and the head's read, on that
        # connection: no read of the queue's kind, no entry created and withdrawn again
        assert kinds(sent, session.conn.client) == ["Transaction", "GetChildren", "GetData"]  # type: ignore[attr-defined]
        assert len(raw.get_children(f"/{prefix}/svc/leader")) == 1
        sent.clear()
        assert second.claim_async("svc/leader", "n2", session).result(5.0).holder == won
        assert "Transaction" not in [kind for _, kind in sent], "a key known to be a queue is read first"


def test_a_plain_key_and_a_missing_parent_go_the_usual_way(
    single: Cluster, sent: list[tuple[Any, str]], raw: KazooClient
) -> None:
    with two(single) as (prefix, d, other):
        plain = d.put("config", "v1")
        lost = other.claim_async("config", "n2", other.session(10)).result(5.0)
        assert lost.created is None and lost.holder == plain
        assert raw.get(f"/{prefix}/config")[0] == b"v1" and raw.get_children(f"/{prefix}/config") == []
        session = other.session(10)
        sent.clear()
        deep = other.claim_async("a/b/c", "n2", session).result(5.0)  # no znode of a/b yet
        assert deep.created is not None and other.get("a/b/c") == deep.created
        made = kinds(sent, session.conn.client)  # type: ignore[attr-defined]
        assert made[:2] == ["Transaction", "Create"], "a missing parent: straight to the usual create, no read"
        assert raw.get(f"/{prefix}/a/b/c")[0] == QUEUE_MARK
