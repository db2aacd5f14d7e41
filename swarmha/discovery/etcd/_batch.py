"""Claims batched into few etcd requests: the claims that wait while others are in flight go out together.

A claim is one transaction per key (compare ``create_revision == 0`` → put with the lease [+ range of a listing], else
range of the key). Sent one by one, each costs a gRPC call, and on a small machine creating the call from Python (~0.6
ms of CPU) was half of a process's CPU while 10,000 keys were being claimed. :class:`Batcher` sends a claim at once
when fewer than :data:`IN_FLIGHT` claim requests are in flight (the single-claim path is exactly the plain
transaction, with no added wait); claims made while that many are in flight are queued, and when one answers what is
queued goes out as one outer transaction (no compare) whose success ops are the claims' own transactions, nested (etcd
>= 3.3). Each nested response answers its own claim as the plain transaction's response would (with the outer header:
every put of one transaction has the same revision, which is each claim's token for its own key).

A lone claim (none other in flight) goes *inline* when the Batcher is made with ``inline=True`` (the Discovery's
is): the blocking call on the caller's thread (the election engine's worker), its answer in a future that is done
when :meth:`Batcher.claim` returns. Sent as a gRPC future, the answer would reach the waiting campaign through
gRPC's callback thread and then an engine worker: two thread hops on the path of every graceful handover, as
ZooKeeper's lone operations avoid too (``zookeeper/_async.py``'s ``Pipeline``). While it is in flight, other
claims go out (or queue) as above.

Limits of etcd respected: a transaction may hold at most ``--max-txn-ops`` ops (128 by default), counted per
level: the outer one has one op per claim, and each nested one may use what its parent left (etcd's
``checkTxnRequest``: a claim uses 2, so 126 claims would fit); a batch holds at most :data:`BATCH` claims. A
transaction may not put one key twice, so a batch holds each key once (a second claim of that key waits for the
next batch).

Failure modes: a batch that failed because the store was unreachable or too slow fails every claim in it with
the error the plain call would have raised (each campaign retries as before). An error that may belong to one
claim only (an expired lease: ``SessionExpired``; a refused request) sends every claim of the batch again alone,
so each gets its own answer. Thread-safe; answers come on gRPC's callback threads.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import attrs
from pyetcd import etcdrpc

from swarmha.discovery._base import Claim
from swarmha.discovery.etcd._client import Client
from swarmha.errors import DiscoveryError, DiscoveryUnavailable

__all__ = ["BATCH", "IN_FLIGHT", "Batcher"]

#: Claims in one batch at most (etcd's default ``--max-txn-ops`` of 128 allows 126 two-op claims).
BATCH = 64
#: Claim requests in flight at once; more claims queue for the next batch. Each batch waits for the server's
#: disk (a commit); several in flight share its commits (etcd writes concurrent proposals in one fsync).
IN_FLIGHT = 4


@attrs.define
class _Pending:
    key: bytes
    request: Any  # the claim's TxnRequest
    answer: Callable[[Any], Claim]  # the claim's answer from its TxnResponse
    result: Future[Claim]


class Batcher:
    """See the module docstring: up to :data:`IN_FLIGHT` claim requests in flight; the claims queued meanwhile go
    out as one."""

    def __init__(self, client: Client, in_flight: int = IN_FLIGHT, *, inline: bool = False) -> None:
        self._client = client
        self._in_flight = in_flight
        self._inline = inline
        self._lock = threading.Lock()
        self._busy = 0  # claim requests in flight
        self._queue: deque[_Pending] = deque()

    def claim(self, key: bytes, request: Any, answer: Callable[[Any], Claim]) -> Future[Claim]:
        """Send the claim ``request`` for ``key`` now (room in flight; a lone one inline, see the module docstring)
        or with the next batch."""
        pending = _Pending(key, request, answer, Future())
        with self._lock:
            if self._busy >= self._in_flight:
                self._queue.append(pending)
                return pending.result
            alone = self._inline and self._busy == 0
            self._busy += 1
        if alone:
            try:
                response = self._client.call("create", lambda ep, t, md: ep.kv.Txn(request, timeout=t, metadata=md))
                pending.result.set_result(answer(response))
            except Exception as e:
                pending.result.set_exception(e)
            self._next()
            return pending.result
        self._send([pending])
        return pending.result

    def _send(self, batch: list[_Pending]) -> None:
        if len(batch) == 1:
            self._single(batch[0]).add_done_callback(lambda _: self._next())
            return
        outer = etcdrpc.TxnRequest(success=[etcdrpc.RequestOp(request_txn=p.request) for p in batch])
        future = self._client.call_async(
            "create", lambda ep, t, md: ep.kv.Txn.future(outer, timeout=t, metadata=md), lambda response: response
        )
        future.add_done_callback(lambda f: self._answered(batch, f))

    def _single(self, p: _Pending) -> Future[Claim]:
        """``p`` sent alone as the plain transaction; its answer (or error) copied to ``p.result``."""
        future = self._client.call_async(
            "create", lambda ep, t, md: ep.kv.Txn.future(p.request, timeout=t, metadata=md), p.answer
        )
        future.add_done_callback(lambda f: _copy(f, p.result))
        return future

    def _answered(self, batch: list[_Pending], future: Future[Any]) -> None:
        error = future.exception()
        if error is None:
            response = future.result()
            if len(response.responses) != len(batch):  # not etcd's answer to this request: no claim decided
                error = DiscoveryError(f"etcd answered {len(response.responses)} claims of {len(batch)}")
        if error is None:
            for p, op in zip(batch, response.responses, strict=True):
                try:
                    nested = op.response_txn
                    nested.header.CopyFrom(response.header)
                    p.result.set_result(p.answer(nested))
                except Exception as e:
                    p.result.set_exception(e)
            self._next()
        elif isinstance(error, DiscoveryUnavailable):  # unreachable, timed out: what each claim would have seen
            for p in batch:
                p.result.set_exception(error)
            self._next()
        else:  # may be one claim's (an expired lease, a refused op): each claim again alone, for its own answer
            remaining = [len(batch)]
            lock = threading.Lock()

            def one_done(_: Future[Claim]) -> None:
                with lock:
                    remaining[0] -= 1
                    last = remaining[0] == 0
                if last:
                    self._next()

            for p in batch:
                self._single(p).add_done_callback(one_done)

    def _next(self) -> None:
        """The claim request in flight answered: send what queued meanwhile (one batch), or become idle."""
        with self._lock:
            if not self._queue:
                self._busy -= 1
                return
            batch: list[_Pending] = []
            keys: set[bytes] = set()
            held: list[_Pending] = []
            while self._queue and len(batch) < BATCH:
                p = self._queue.popleft()
                if p.key in keys:
                    held.append(p)  # one put per key and transaction: the next batch
                else:
                    keys.add(p.key)
                    batch.append(p)
            self._queue.extendleft(reversed(held))
        self._send(batch)


def _copy(source: Future[Claim], target: Future[Claim]) -> None:
    error = source.exception()
    if error is None:
        target.set_result(source.result())
    else:
        target.set_exception(error)
