"""etcd watches: every watch of one Discovery multiplexed on one gRPC Watch stream (see :class:`WatchStream`)."""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
from pyetcd import etcdrpc
from pyetcd.etcdrpc import kv_pb2

from swarmha.discovery._base import Record
from swarmha.discovery._fed import FedWatch, Outage
from swarmha.discovery.etcd._client import FAILOVER, Client, log, to_record
from swarmha.errors import DiscoveryError, DiscoveryUnavailable

__all__ = ["STREAM_IDLE", "EtcdWatch", "WatchStream"]

#: The watch stream's thread ends this long after the last watch closed (a new watch starts it again).
STREAM_IDLE = 2.0


class EtcdWatch(FedWatch):
    """An etcd watch on one key, one of the many multiplexed on the Discovery's watch stream (:class:`WatchStream`)."""

    def __init__(
        self, client: Client, stream: WatchStream, key: bytes, seen: Record | None, start: int, changed: bool
    ) -> None:
        super().__init__(seen, changed)
        self._client = client
        self._stream = stream
        self.key = key
        self.next_rev = start

    def _unregister(self) -> None:
        self._stream.remove(self)

    def resync(self) -> None:
        """The revision to resume from was compacted away: read the key again and fire if it changed."""
        log.info("etcd watch on %r: revision %d compacted; re-reading", self.key, self.next_rev)
        record, revision = self._client.read(self.key)
        self.next_rev = revision + 1
        self.observe(record)


class WatchStream:
    """Every watch of one Discovery on one gRPC Watch stream (etcd multiplexes watchers on a stream).

    The ``swarmha-etcd-watch`` thread runs while any watch is open (it ends :data:`STREAM_IDLE` seconds after the
    last one closed). The server numbers the watchers of a stream in the order their create requests arrive, so
    creates are sent one after the other and each ``created`` answer names the next watch waiting for its id.
    When the stream breaks it is opened again (on the next endpoint if need be) and every open watch is created
    anew from the revision after the last event it delivered, so no change is missed; a watch whose revision was
    compacted re-reads its key. If no endpoint takes the stream back within ``timeout``, every watch open then
    fails (its :meth:`Watch.wait` raises :class:`~swarmha.errors.DiscoveryUnavailable`).
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._cond = threading.Condition()
        self._open: set[EtcdWatch] = set()
        self._requests: queue.SimpleQueue[Any] | None = None  # of the current stream
        self._awaiting: collections.deque[EtcdWatch] = collections.deque()  # created, in order, not yet answered
        self._ids: dict[int, EtcdWatch] = {}
        self._by_watch: dict[EtcdWatch, int] = {}
        self._thread: threading.Thread | None = None
        self._call: Any = None
        self._closed = False

    def add(self, watch: EtcdWatch) -> None:
        with self._cond:
            if self._closed:
                watch.fail(DiscoveryError("etcd discovery is closed"))
                return
            self._open.add(watch)
            if self._requests is not None:
                self._create(watch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="swarmha-etcd-watch", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _create(self, watch: EtcdWatch) -> None:
        """Ask the current stream for a watcher of ``watch``. Caller holds the lock; a stream is open."""
        assert self._requests is not None
        self._awaiting.append(watch)
        create = etcdrpc.WatchCreateRequest(key=watch.key, start_revision=watch.next_rev)
        self._requests.put(etcdrpc.WatchRequest(create_request=create))

    def remove(self, watch: EtcdWatch) -> None:
        with self._cond:
            self._open.discard(watch)
            watch_id = self._by_watch.pop(watch, None)
            if watch_id is not None:
                self._ids.pop(watch_id, None)
                if self._requests is not None:
                    cancel = etcdrpc.WatchCancelRequest(watch_id=watch_id)
                    self._requests.put(etcdrpc.WatchRequest(cancel_request=cancel))
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            watches, self._open = list(self._open), set()
            call, thread = self._call, self._thread
            if self._requests is not None:
                self._requests.put(None)
            self._cond.notify_all()
        for watch in watches:
            watch.close()
        if call is not None:
            call.cancel()
        if thread is not None and thread is not threading.current_thread():
            thread.join(10.0)

    def _run(self) -> None:
        outage = Outage(self._client.timeout)
        try:
            while True:
                with self._cond:
                    if not self._open and not self._closed:
                        self._cond.wait_for(lambda: self._open or self._closed, STREAM_IDLE)
                    if self._closed or not self._open:
                        self._thread = None
                        return
                live = False
                try:
                    live = self._stream()
                    reason = "the stream ended"
                except DiscoveryError as e:
                    reason = str(e)
                except Exception as e:  # never let the thread die silently
                    log.exception("etcd watch stream: unexpected error")
                    reason = f"{type(e).__name__}: {e}"
                with self._cond:
                    if self._closed:
                        self._thread = None
                        return
                now = time.monotonic()
                log.debug("etcd watch stream broke (%s); resuming %d watches", reason, len(self._open))
                if live:  # it had worked: a fresh break, resume at once
                    outage.ok(broke_at=now)
                    continue
                if outage.failed(now):
                    with self._cond:
                        failed, self._open = list(self._open), set()
                    error = DiscoveryUnavailable(f"etcd watches could not be resumed: {reason}")
                    for watch in failed:
                        watch.fail(error)
                    continue
                outage.pause(self._cond, lambda: self._closed)
        finally:
            with self._cond:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _stream(self) -> bool:
        """Run one stream until it breaks; True if the server created a watcher on it (it worked)."""
        ep, md = self._client.endpoint()
        # Ask the member to cancel the watches when it loses the cluster leader, so an isolated member's
        # silence is not mistaken for "no change": the stream breaks and resumes on another endpoint.
        md = (*(md or ()), ("hasleader", "true"))
        requests: queue.SimpleQueue[Any] = queue.SimpleQueue()

        def outgoing() -> Iterator[Any]:
            while True:
                request = requests.get()
                if request is None:
                    return
                yield request

        live = False
        try:
            call = ep.watch.Watch(outgoing(), metadata=md)
            with self._cond:
                if self._closed:
                    call.cancel()
                    return False
                self._call, self._requests = call, requests
                self._awaiting.clear()
                self._ids.clear()
                self._by_watch.clear()
                for watch in list(self._open):
                    self._create(watch)
            for response in call:
                live = True
                self._answer(response)
        except grpc.RpcError as e:
            with self._cond:
                if self._closed:
                    return live
            if e.code() in FAILOVER:
                self._client.failed(ep)
            raise self._client.translate(e, "watch", ep) from None
        finally:
            requests.put(None)
            with self._cond:
                if self._requests is requests:
                    self._call = self._requests = None
        return live

    def _answer(self, response: Any) -> None:
        watch_id = int(response.watch_id)
        with self._cond:
            if response.created:
                watch = self._awaiting.popleft() if self._awaiting else None
                if watch is None:
                    return
                if watch not in self._open:  # closed before the server answered: cancel it there too
                    if self._requests is not None:
                        cancel = etcdrpc.WatchCancelRequest(watch_id=watch_id)
                        self._requests.put(etcdrpc.WatchRequest(cancel_request=cancel))
                    return
                self._ids[watch_id] = watch
                self._by_watch[watch] = watch_id
            watch = self._ids.get(watch_id)
        if watch is None:
            return
        if response.compact_revision:
            watch.resync()
            with self._cond:  # the server cancelled that watcher: a new one from the revision after the read
                self._ids.pop(watch_id, None)
                self._by_watch.pop(watch, None)
                if watch in self._open and self._requests is not None:
                    self._create(watch)
            return
        if response.canceled:
            raise DiscoveryError(f"etcd cancelled a watch: {response.cancel_reason or 'no reason given'}")
        for event in response.events:
            watch.next_rev = int(event.kv.mod_revision) + 1
            watch.observe(None if event.type == kv_pb2.Event.DELETE else to_record(event.kv))
