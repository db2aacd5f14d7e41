"""etcd claims batched into few requests (swarmha.discovery.etcd._batch): the single-claim path is the plain
transaction; claims queued while the requests allowed are in flight go out as one outer transaction of nested
ones; errors reach every claim. The first tests drive a Batcher with a fake client; the last ones run against a
real etcd 3.4."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from pyetcd import etcdrpc

import swarmha
from swarmha.discovery._base import Claim, Record
from swarmha.discovery.etcd._batch import BATCH, Batcher
from swarmha.errors import DiscoveryError, DiscoveryUnavailable, SessionExpired
from tests.support.net import free_ports
from tests.support.servers import Cluster, etcd_cluster
from tests.support.stores import fresh_prefix

WAIT = 10.0


class FakeClient:
    """Records each request sent through ``call_async``; the test answers them (``pending``) in any order. A
    blocking ``call`` runs ``during`` (what other threads do while it is in flight), then answers ``response``."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, Callable[[Any], Any], Future[Any]]] = []
        self.called: list[Any] = []
        self.during: Callable[[], None] = lambda: None
        self.response: Any = None

    def call(self, what: str, fn: Callable[..., Any]) -> Any:
        txn = lambda request, timeout, metadata: self.called.append(request)  # noqa: E731
        fn(SimpleNamespace(kv=SimpleNamespace(Txn=txn)), 1.0, None)
        self.during()
        return self.response

    def call_async(self, what: str, start: Callable[..., Any], answer: Callable[[Any], Any]) -> Future[Any]:
        sent: list[Any] = []
        txn = SimpleNamespace(future=lambda request, timeout, metadata: sent.append(request))
        start(SimpleNamespace(kv=SimpleNamespace(Txn=txn)), 1.0, None)
        result: Future[Any] = Future()
        self.pending.append((sent[0], answer, result))
        return result

    def answer(self, index: int, response: Any) -> None:
        _, answer, result = self.pending[index]
        result.set_result(answer(response))

    def fail(self, index: int, error: Exception) -> None:
        self.pending[index][2].set_exception(error)


def claim_request(key: bytes) -> Any:
    return etcdrpc.TxnRequest(
        compare=[etcdrpc.Compare(key=key, target=etcdrpc.Compare.CREATE, result=etcdrpc.Compare.EQUAL)],
        success=[etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=key, value=b"v", lease=7))],
        failure=[etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=key))],
    )


def won(response: Any) -> Claim:
    """A fake answer: the claim won iff its transaction succeeded; the token is the header's revision."""
    if not response.succeeded:
        return Claim(None, None)
    return Claim(Record("v", int(response.header.revision), "7"), None)


def batcher(in_flight: int = 1, *, inline: bool = False) -> tuple[Batcher, FakeClient]:
    client = FakeClient()
    return Batcher(client, in_flight, inline=inline), client  # type: ignore[arg-type]


def test_a_lone_claim_is_sent_at_once_as_the_plain_transaction() -> None:
    b, client = batcher()
    future = b.claim(b"k", claim_request(b"k"), won)
    assert len(client.pending) == 1
    assert client.pending[0][0] == claim_request(b"k")  # not wrapped in an outer transaction
    client.answer(0, etcdrpc.TxnResponse(succeeded=True, header=etcdrpc.ResponseHeader(revision=5)))
    claim = future.result(0)
    assert claim.created is not None and claim.created.token == 5
    # idle again: the next lone claim goes out at once, plain
    b.claim(b"j", claim_request(b"j"), won)
    assert len(client.pending) == 2 and client.pending[1][0] == claim_request(b"j")


def test_a_lone_claim_goes_inline_and_claims_made_meanwhile_go_out_as_usual() -> None:
    b, client = batcher(in_flight=2, inline=True)
    meanwhile: list[Future[Claim]] = []
    client.during = lambda: meanwhile.extend(b.claim(k, claim_request(k), won) for k in (b"b", b"c", b"d"))
    client.response = etcdrpc.TxnResponse(succeeded=True, header=etcdrpc.ResponseHeader(revision=5))
    first = b.claim(b"a", claim_request(b"a"), won)
    assert first.done() and first.result(0).created.token == 5  # type: ignore[union-attr]
    assert client.called == [claim_request(b"a")]  # the plain transaction, on this thread
    # while it was in flight: "b" went out alone (room for two), "c" and "d" queued, sent as one when "a" answered
    assert client.pending[0][0] == claim_request(b"b")
    assert [op.request_txn for op in client.pending[1][0].success] == [claim_request(b"c"), claim_request(b"d")]
    assert not any(f.done() for f in meanwhile)
    client.answer(0, etcdrpc.TxnResponse(succeeded=True, header=etcdrpc.ResponseHeader(revision=6)))
    nested = [etcdrpc.ResponseOp(response_txn=etcdrpc.TxnResponse(succeeded=True)) for _ in range(2)]
    client.answer(1, etcdrpc.TxnResponse(succeeded=True, header=etcdrpc.ResponseHeader(revision=7), responses=nested))
    assert [f.result(0).created.token for f in meanwhile] == [6, 7, 7]  # type: ignore[union-attr]
    client.during = lambda: None
    assert b.claim(b"e", claim_request(b"e"), won).done()  # idle again: inline again
    assert client.called[-1] == claim_request(b"e") and len(client.pending) == 2


def test_claims_queued_behind_one_in_flight_go_out_as_one_nested_transaction_each_key_once() -> None:
    b, client = batcher()
    first = b.claim(b"k0", claim_request(b"k0"), won)
    keys = [b"a", b"b", b"a", b"c"]  # "a" twice: one put per key and transaction
    queued = [b.claim(k, claim_request(k), won) for k in keys]
    assert len(client.pending) == 1  # nothing more sent while the first is in flight
    client.answer(0, etcdrpc.TxnResponse(succeeded=True, header=etcdrpc.ResponseHeader(revision=5)))
    assert first.result(0).created is not None
    outer = client.pending[1][0]
    assert not outer.compare and [op.request_txn for op in outer.success] == [
        claim_request(k) for k in (b"a", b"b", b"c")
    ]
    nested = [etcdrpc.ResponseOp(response_txn=etcdrpc.TxnResponse(succeeded=s)) for s in (True, False, True)]
    client.answer(1, etcdrpc.TxnResponse(succeeded=True, header=etcdrpc.ResponseHeader(revision=9), responses=nested))
    assert queued[0].result(0).created.token == 9  # type: ignore[union-attr]
    assert queued[1].result(0).created is None
    assert queued[3].result(0).created.token == 9  # type: ignore[union-attr]
    assert not queued[2].done() and client.pending[2][0] == claim_request(b"a")  # alone: the only one left


def test_claims_go_out_alone_until_the_requests_allowed_are_in_flight_then_queue_for_the_first_answer() -> None:
    b, client = batcher(in_flight=2)
    b.claim(b"a", claim_request(b"a"), won)
    b.claim(b"b", claim_request(b"b"), won)
    assert [p[0] for p in client.pending] == [claim_request(b"a"), claim_request(b"b")]  # two alone, at once
    queued = [b.claim(k, claim_request(k), won) for k in (b"c", b"d")]
    assert len(client.pending) == 2  # both slots taken: these wait
    client.answer(1, etcdrpc.TxnResponse(succeeded=True, header=etcdrpc.ResponseHeader(revision=3)))
    outer = client.pending[2][0]  # the slot freed by "b" sends both queued claims as one
    assert [op.request_txn for op in outer.success] == [claim_request(b"c"), claim_request(b"d")]
    nested = [etcdrpc.ResponseOp(response_txn=etcdrpc.TxnResponse(succeeded=True)) for _ in range(2)]
    client.answer(2, etcdrpc.TxnResponse(succeeded=True, header=etcdrpc.ResponseHeader(revision=4), responses=nested))
    assert [f.result(0).created.token for f in queued] == [4, 4]  # type: ignore[union-attr]
    client.answer(0, etcdrpc.TxnResponse(succeeded=True))
    b.claim(b"e", claim_request(b"e"), won)  # idle again: sent at once, plain
    b.claim(b"f", claim_request(b"f"), won)
    assert [p[0] for p in client.pending[3:]] == [claim_request(b"e"), claim_request(b"f")]


def test_a_batch_holds_at_most_BATCH_claims() -> None:
    b, client = batcher()
    b.claim(b"first", claim_request(b"first"), won)
    for i in range(BATCH + 3):
        b.claim(b"k%d" % i, claim_request(b"k%d" % i), won)
    client.answer(0, etcdrpc.TxnResponse(succeeded=True))
    assert len(client.pending[1][0].success) == BATCH


def test_an_unreachable_store_fails_every_claim_of_the_batch_with_the_same_error() -> None:
    b, client = batcher()
    b.claim(b"k0", claim_request(b"k0"), won)
    queued = [b.claim(k, claim_request(k), won) for k in (b"a", b"b", b"c")]
    client.answer(0, etcdrpc.TxnResponse(succeeded=True))
    error = DiscoveryUnavailable("etcd create at x failed: UNAVAILABLE")
    client.fail(1, error)
    for f in queued:
        assert f.exception(0) is error
    assert len(client.pending) == 2  # not sent again: each campaign retries on its own
    b.claim(b"d", claim_request(b"d"), won)  # idle again
    assert client.pending[2][0] == claim_request(b"d")


def test_an_error_that_may_be_one_claims_sends_each_claim_again_alone() -> None:
    b, client = batcher()
    b.claim(b"k0", claim_request(b"k0"), won)
    queued = [b.claim(k, claim_request(k), won) for k in (b"a", b"b")]
    client.answer(0, etcdrpc.TxnResponse(succeeded=True))
    client.fail(1, SessionExpired("lease not found"))
    assert [p[0] for p in client.pending[2:]] == [claim_request(b"a"), claim_request(b"b")]
    client.fail(2, SessionExpired("lease not found"))
    client.answer(3, etcdrpc.TxnResponse(succeeded=True, header=etcdrpc.ResponseHeader(revision=4)))
    assert isinstance(queued[0].exception(0), SessionExpired)
    assert queued[1].result(0).created is not None


# -- against a real etcd ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = etcd_cluster(tmp_path_factory.mktemp("etcd-batch"), 1)
    yield cluster
    cluster.close()


@pytest.mark.slow
def test_concurrent_claims_elect_one_winner_per_key_with_its_token(single: Cluster) -> None:
    d = swarmha.connect(f"etcd://{single.hosts}/{fresh_prefix('etcd')}")
    try:
        sessions = [d.session(10), d.session(10)]
        keys = [f"k{i}" for i in range(2 * BATCH)]
        # every key claimed by both sessions, with the steering listing, from four threads as the engine's
        # workers send them (one thread alone would wait for each lone claim inline): batches of nested claims
        claims: dict[tuple[str, int], Future[Claim]] = {}

        def send(part: int) -> None:
            for key in keys[part::4]:
                for n, s in enumerate(sessions):
                    claims[key, n] = d.claim_async(key, f"node{n}", s, f"{key}-control")

        threads = [threading.Thread(target=send, args=(part,)) for part in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        results = {k: f.result(WAIT) for k, f in claims.items()}
        tokens = []
        for key in keys:
            won = [n for n in (0, 1) if results[key, n].created is not None]
            assert len(won) == 1, key
            record = d.get(key)
            assert record is not None and record.value == f"node{won[0]}"
            assert results[key, won[0]].created == record
            assert results[key, 1 - won[0]].holder == record
            tokens.append(record.token)
        assert len(set(tokens)) < len(tokens)  # some were written by one transaction: batched
    finally:
        d.close()


def test_a_lone_claim_on_an_idle_discovery_is_answered_when_claim_async_returns(single: Cluster) -> None:
    d = swarmha.connect(f"etcd://{single.hosts}/{fresh_prefix('etcd')}")
    try:
        session = d.session(10)
        future = d.claim_async("k", "n", session, "k.election")
        assert future.done(), "sent inline: no hop through gRPC's callback thread"
        claim = future.result(0)
        assert claim.created is not None and claim.listed == {} and d.get("k") == claim.created
    finally:
        d.close()


@pytest.mark.slow
def test_an_unreachable_store_fails_each_queued_claim(single: Cluster) -> None:
    live = swarmha.connect(f"etcd://{single.hosts}/{fresh_prefix('etcd')}")
    (port,) = free_ports(1)
    dead = swarmha.connect(f"etcd://127.0.0.1:{port}/p?timeout=0.5")
    try:
        session = live.session(10)
        futures = [dead.claim_async(f"k{i}", "n", session) for i in range(5)]
        for f in futures:
            assert isinstance(f.exception(WAIT), DiscoveryError)
    finally:
        dead.close()
        live.close()
