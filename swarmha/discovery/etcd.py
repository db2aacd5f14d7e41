"""``etcd://h1:2379,h2:2379/prefix``: the etcd v3 backend (gRPC API, etcd 3.4 or later).

URL: ``etcd://[user:password@]host[:port][,host[:port]...]/prefix[?options]``; the default port is 2379 and
the path is the key prefix (``/prefix/svc/leader`` in etcd). Query options:

``timeout=SECONDS``  bound of every request, failover included (default 5).
``ca=PATH``          PEM CA bundle to verify the servers; turns TLS on.
``cert=PATH``, ``key=PATH``  PEM client certificate and key (both or neither); turn TLS on.
``tls=1``            TLS with the system CA roots (when no ``ca`` is given).
``prepare=0``        no tickets (:meth:`EtcdDiscovery.prepare`): a waiting candidate grants no lease ahead.

With ``user:password@`` the backend authenticates (etcd's ``Authenticate`` RPC) and sends the token with every
call, authenticating again when the server rejects an expired token. Unknown options are refused.

How the contract maps to etcd:

* A :class:`~swarmha.discovery.Session` is an etcd **lease** of ``ceil(ttl)`` seconds (etcd leases are whole
  seconds, and the server raises a TTL below its minimum, 1.5 x the election timeout ~ 2 s by default, to that
  minimum: a key can outlive ``ttl`` by that much). ``keepalive`` is one ``LeaseKeepAlive`` round trip and
  raises :class:`~swarmha.errors.SessionExpired` when the server reports the lease gone (TTL <= 0).
* ``create`` is one transaction: ``create_revision(key) == 0`` -> put with the lease. The fencing token is the
  key's ``create_revision``, i.e. the revision of the acquiring write; etcd revisions strictly increase over
  the whole store, so tokens do too. ``delete`` is a transaction ``create_revision(key) == token`` -> delete.
  ``release`` (a leader's graceful exit) revokes the lease: one write that removes the key with it.
* ``watch`` starts an etcd watch at the revision right after the read that produced ``seen`` (remembered per
  key from the last ``get``/``create``; otherwise read again first), so no change in between is missed. When the
  stream breaks it is resumed from the last revision it delivered, on the next endpoint if need be; when that
  revision was compacted the key is read again and the watch fires if it differs. If no endpoint takes the
  watch back within ``timeout``, :meth:`Watch.wait` raises :class:`~swarmha.errors.DiscoveryUnavailable`.
* Endpoints are tried in the URL's order, starting with the last one that answered; a call that finds its
  endpoint unreachable moves on to the next one within the same ``timeout``. Requests that may have been
  applied before the connection broke are retried only where that is safe (``create`` recognises a key its
  own lease already holds; ``delete`` and ``put`` are idempotent).

Failure modes: every gRPC error is translated: unreachable, timed out, no leader -> ``DiscoveryUnavailable``;
lease not found -> ``SessionExpired``; anything else (permission denied, bad request) -> ``DiscoveryError``.
Threads: one ``swarmha-etcd-watch`` thread per Discovery, running one gRPC watch stream for every open watch
(etcd multiplexes watchers on a stream), while any watch is open; joined by ``close``. One gRPC channel per
endpoint, opened when first used.

Client library: ``etcd-sdk-python`` (``import pyetcd``), the maintained fork of python-etcd3 that runs on
protobuf >= 4 (``etcd3`` 0.12 does not). This module uses only its generated gRPC stubs (``pyetcd.etcdrpc``)
and drives failover, deadlines, auth refresh and watch resumption itself: the package's client class shares one
watch stream and an unnamed, never-joined thread per client, parks a failed endpoint for minutes, and lets some
raw gRPC errors through. The package does not declare its ``protobuf`` dependency; ``swarmha[etcd]`` does.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import grpc
from pyetcd import etcdrpc
from pyetcd.etcdrpc import kv_pb2

from swarmha.discovery._base import Discovery, Record, Session, Watch, check_key, check_ttl
from swarmha.discovery._fed import FedWatch, Outage
from swarmha.discovery._url import DiscoveryURL
from swarmha.errors import (
    ConfigurationError,
    DiscoveryError,
    DiscoveryUnavailable,
    InvalidDiscoveryURL,
    SessionExpired,
)

__all__ = ["DEFAULT_PORT", "DEFAULT_TIMEOUT", "EtcdDiscovery"]

log = logging.getLogger("swarmha.discovery.etcd")

DEFAULT_PORT = 2379
DEFAULT_TIMEOUT = 5.0
_OPTIONS = {"timeout", "ca", "cert", "key", "tls", "prepare"}
#: A ticket's lease is used for a claim while younger than this share of its ttl (see EtcdDiscovery.prepare).
TICKET_AGE = 1.0 / 6.0
#: The watch stream's thread ends this long after the last watch closed (a new watch starts it again).
STREAM_IDLE = 2.0
_CACHE_LIMIT = 1024
_T = TypeVar("_T")

# Reconnect quickly after an outage (gRPC's default backoff grows to 2 minutes, which would delay recovery
# long after the store is back). The cap bounds how late a client notices a restarted member: with 1 s (+20 %
# jitter) the fault soak saw a store_outage recovery of 2.41 s for a 1 s ttl (bound 2 s), the channel's next
# attempt coming up to 1.2 s after the member was back; 300 ms costs ~3 connection attempts a second per client
# and member while that member is down. Ping idle connections so a silently dead server breaks long watch
# streams; etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time), hence 10 s.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 300),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.use_local_subchannel_pool", 1),
]
# Codes after which the next endpoint may answer where this one did not.
_FAILOVER = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class _Endpoint:
    """One etcd member: a lazily opened gRPC channel and its stubs."""

    def __init__(self, host: str, port: int, credentials: Any) -> None:
        self.target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._credentials = credentials
        self._channel: Any = None
        self.kv: Any = None
        self.lease: Any = None
        self.watch: Any = None
        self.auth: Any = None

    def open(self) -> _Endpoint:
        if self._channel is None:
            if self._credentials is None:
                channel = grpc.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
            else:
                channel = grpc.secure_channel(self.target, self._credentials, options=_CHANNEL_OPTIONS)
            self.kv = etcdrpc.KVStub(channel)
            self.lease = etcdrpc.LeaseStub(channel)
            self.watch = etcdrpc.WatchStub(channel)
            self.auth = etcdrpc.AuthStub(channel)
            self._channel = channel
        return self

    def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()


def _prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix`` (etcd's range_end for a prefix)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def _record(kv: Any) -> Record:
    return Record(kv.value.decode(), int(kv.create_revision), f"{kv.lease:x}" if kv.lease else None)


def _describe(error: Any) -> str:
    try:
        return f"{error.code().name}: {error.details()}"
    except Exception:
        return repr(error)


class _EtcdSession(Session):
    """An etcd lease; see the module docstring."""

    def __init__(self, discovery: EtcdDiscovery, ttl: float, *, ticket: bool = False) -> None:
        self._d = discovery
        self.ttl = ttl
        self._closed = False
        self.ticket = ticket
        self._grant()

    def _grant(self) -> None:
        """Get a new lease from etcd (a ticket notes, in ``clock``, when the lease's TTL clock started)."""
        request = etcdrpc.LeaseGrantRequest(TTL=max(1, math.ceil(self.ttl)))
        sent = time.monotonic()
        response = self._d._call("lease grant", lambda ep, t, md: ep.lease.LeaseGrant(request, timeout=t, metadata=md))
        if response.error:
            raise DiscoveryError(f"etcd refused a lease of {request.TTL}s: {response.error}")
        self.lease_id = int(response.ID)
        self.granted_ttl = int(response.TTL)
        self.id = f"{self.lease_id:x}"
        if self.ticket:
            self.clock = sent  # the server starts the lease's TTL after this
        if self.granted_ttl > request.TTL:
            log.warning("etcd granted lease %s a TTL of %ds instead of %ds", self.id, self.granted_ttl, request.TTL)

    def fresh_for_claim(self) -> None:
        """A ticket whose lease is older than ``TICKET_AGE * ttl`` takes a new lease (the old one holds no key
        and expires on its own): a claim never starts a term more than that far into its lease."""
        if self.clock is not None and time.monotonic() - self.clock > TICKET_AGE * self.ttl:  # set: a ticket
            self._grant()

    def keepalive(self) -> None:
        if self._closed:
            raise SessionExpired(f"lease {self.id} was closed")
        request = etcdrpc.LeaseKeepAliveRequest(ID=self.lease_id)

        def refresh(ep: _Endpoint, timeout: float, md: Any) -> Any:
            call = ep.lease.LeaseKeepAlive(iter([request]), timeout=timeout, metadata=md)
            try:
                return next(call, None)
            finally:
                call.cancel()

        timeout = min(self._d.timeout, max(0.5, 2.0 * self.ttl / 3.0))
        response = self._d._call("lease keepalive", refresh, timeout=timeout)
        if response is None:
            raise DiscoveryUnavailable(f"etcd closed the keepalive stream of lease {self.id} without an answer")
        if response.TTL <= 0:
            raise SessionExpired(f"lease {self.id} expired")

    def revoke(self) -> None:
        """Revoke the lease (etcd deletes its keys in the same write); raise if etcd was not reached.

        Marks the session closed first, whatever happens. A lease etcd no longer knows (expired) is not an
        error: its keys are gone already.
        """
        self._closed = True
        request = etcdrpc.LeaseRevokeRequest(ID=self.lease_id)
        with contextlib.suppress(SessionExpired):
            self._d._call("lease revoke", lambda ep, t, md: ep.lease.LeaseRevoke(request, timeout=t, metadata=md))

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.revoke()
        except DiscoveryError as e:
            log.debug("lease %s not revoked (it expires with its TTL): %s", self.id, e)


class _EtcdWatch(FedWatch):
    """An etcd watch on one key, one of the many multiplexed on the Discovery's watch stream (:class:`_WatchStream`)."""

    def __init__(self, discovery: EtcdDiscovery, key: bytes, seen: Record | None, start: int, changed: bool) -> None:
        super().__init__(seen, changed)
        self._d = discovery
        self.key = key
        self.next_rev = start

    def _unregister(self) -> None:
        self._d._stream.remove(self)

    def observe(self, record: Record | None) -> None:
        """(The stream's thread) the key is now ``record``."""
        with self._cond:
            if record != self._seen:
                self._seen = record
                self._changed = True
                self._kick()

    def resync(self) -> None:
        """The revision to resume from was compacted away: read the key again and fire if it changed."""
        log.info("etcd watch on %r: revision %d compacted; re-reading", self.key, self.next_rev)
        record, revision = self._d._read(self.key)
        self.next_rev = revision + 1
        self.observe(record)


class _WatchStream:
    """Every watch of one Discovery on one gRPC Watch stream (etcd multiplexes watchers on a stream).

    The ``swarmha-etcd-watch`` thread runs while any watch is open (it ends :data:`STREAM_IDLE` seconds after the
    last one closed). The server numbers the watchers of a stream in the order their create requests arrive, so
    creates are sent one after the other and each ``created`` answer names the next watch waiting for its id.
    When the stream breaks it is opened again (on the next endpoint if need be) and every open watch is created
    anew from the revision after the last event it delivered, so no change is missed; a watch whose revision was
    compacted re-reads its key. If no endpoint takes the stream back within ``timeout``, every watch open then
    fails (its :meth:`Watch.wait` raises :class:`~swarmha.errors.DiscoveryUnavailable`).
    """

    def __init__(self, discovery: EtcdDiscovery) -> None:
        self._d = discovery
        self._cond = threading.Condition()
        self._open: set[_EtcdWatch] = set()
        self._requests: queue.SimpleQueue[Any] | None = None  # of the current stream
        self._awaiting: collections.deque[_EtcdWatch] = collections.deque()  # created, in order, not yet answered
        self._ids: dict[int, _EtcdWatch] = {}
        self._by_watch: dict[_EtcdWatch, int] = {}
        self._thread: threading.Thread | None = None
        self._call: Any = None
        self._closed = False

    def add(self, watch: _EtcdWatch) -> None:
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

    def _create(self, watch: _EtcdWatch) -> None:
        """Ask the current stream for a watcher of ``watch``. Caller holds the lock; a stream is open."""
        assert self._requests is not None
        self._awaiting.append(watch)
        create = etcdrpc.WatchCreateRequest(key=watch.key, start_revision=watch.next_rev)
        self._requests.put(etcdrpc.WatchRequest(create_request=create))

    def remove(self, watch: _EtcdWatch) -> None:
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
        outage = Outage(self._d.timeout)
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
        ep, md = self._d._endpoint()
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
            if e.code() in _FAILOVER:
                self._d._failed(ep)
            raise self._d._translate(e, "watch", ep) from None
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
            watch.observe(None if event.type == kv_pb2.Event.DELETE else _record(event.kv))


class EtcdDiscovery(Discovery):
    """Discovery over an etcd v3 cluster (see the module docstring for the URL, options and guarantees)."""

    def __init__(self, url: DiscoveryURL) -> None:
        if url.scheme != "etcd":
            raise InvalidDiscoveryURL(f"discovery URL {str(url)!r} is not an etcd:// URL")
        if not url.hosts:
            raise InvalidDiscoveryURL(f"etcd URL {str(url)!r} names no host: etcd://host[:port][,host...]/prefix")
        url.check_options(_OPTIONS)
        self.url = url
        self.timeout = url.seconds("timeout", DEFAULT_TIMEOUT)
        if (url.username is None) != (url.password is None):
            raise InvalidDiscoveryURL(f"etcd URL {str(url)!r} needs both user and password (user:password@host)")
        self._user = url.username
        self._password = url.password
        credentials = self._credentials(url)
        self._endpoints = [_Endpoint(h, p, credentials) for h, p in url.endpoints(DEFAULT_PORT)]
        self._prefix = (url.path + "/") if url.path else ""
        prepare = url.params.get("prepare", "1")
        if prepare not in ("0", "1"):
            raise InvalidDiscoveryURL(f"etcd URL {str(url)!r}: prepare must be 0 or 1, not {prepare!r}")
        self._prepare = prepare == "1"
        self._lock = threading.Lock()
        self._current = 0
        self._token: str | None = None
        self._closed = False
        self._stream = _WatchStream(self)
        self._reads: dict[bytes, tuple[Record | None, int]] = {}

    @staticmethod
    def _credentials(url: DiscoveryURL) -> Any:
        ca, cert, key = (url.params.get(k) for k in ("ca", "cert", "key"))
        tls = url.params.get("tls", "").lower() in {"1", "true", "yes", "on"}
        if (cert is None) != (key is None):
            raise InvalidDiscoveryURL(f"etcd URL {str(url)!r}: cert and key go together")
        if not (tls or ca or cert):
            return None

        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as e:
                raise InvalidDiscoveryURL(f"etcd URL {str(url)!r}: cannot read {path!r}: {e.strerror}") from None

        return grpc.ssl_channel_credentials(
            root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert)
        )

    # -- calls, failover, errors ---------------------------------------------------------------------------

    def _endpoint(self) -> tuple[_Endpoint, Any]:
        """The endpoint to talk to now, and the call metadata (authenticating first when needed)."""
        with self._lock:
            if self._closed:
                raise DiscoveryError(f"etcd discovery {self.url} is closed")
            ep = self._endpoints[self._current].open()
            token = self._token
        if self._user is not None and token is None:
            request = etcdrpc.AuthenticateRequest(name=self._user, password=self._password or "")
            try:
                token = ep.auth.Authenticate(request, timeout=self.timeout).token
            except grpc.RpcError as e:
                if e.code() in _FAILOVER:
                    self._failed(ep)
                raise self._translate(e, "authenticate", ep) from None
            with self._lock:
                self._token = token
        return ep, (("token", token),) if token else None

    def _failed(self, ep: _Endpoint) -> None:
        """``ep`` did not answer: later calls start at the next endpoint."""
        with self._lock:
            if self._endpoints[self._current] is ep:
                self._current = (self._current + 1) % len(self._endpoints)

    def _translate(self, error: Any, what: str, ep: _Endpoint) -> DiscoveryError:
        code = error.code()
        message = f"etcd {what} at {ep.target} failed: {_describe(error)}"
        if code in _FAILOVER or code is grpc.StatusCode.CANCELLED:
            return DiscoveryUnavailable(message)
        if code is grpc.StatusCode.NOT_FOUND and "lease" in (error.details() or ""):
            return SessionExpired(message)
        return DiscoveryError(message)

    def _call(self, what: str, fn: Callable[[_Endpoint, float, Any], _T], timeout: float | None = None) -> _T:
        """Run ``fn(endpoint, timeout, metadata)`` with failover, all within ``timeout``; translate errors."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        attempts = 0
        reauthenticated = False
        while True:
            ep, md = self._endpoint()
            try:
                return fn(ep, max(0.01, deadline - time.monotonic()), md)
            except grpc.RpcError as e:
                code, details = e.code(), (e.details() or "")
                if (
                    self._user is not None
                    and not reauthenticated
                    and (code is grpc.StatusCode.UNAUTHENTICATED or "auth token" in details)
                ):
                    reauthenticated = True
                    with self._lock:
                        self._token = None
                    continue
                if code in _FAILOVER:
                    self._failed(ep)
                    attempts += 1
                    if attempts < len(self._endpoints) and time.monotonic() < deadline - 0.01:
                        log.debug("etcd %s at %s failed (%s); trying the next endpoint", what, ep.target, details)
                        continue
                raise self._translate(e, what, ep) from None
            except ValueError as e:  # grpc raises it for a call on a channel closed by close()
                raise DiscoveryError(f"etcd {what} failed: {e}") from None

    def _k(self, key: str) -> bytes:
        return (self._prefix + check_key(key)).encode()

    def _remember(self, key: bytes, record: Record | None, revision: int) -> None:
        """Note the state of ``key`` read at ``revision``: a later watch on that state starts right after it."""
        with self._lock:
            old = self._reads.get(key)
            if old is not None and old[1] > revision:
                return
            if old is None and len(self._reads) >= _CACHE_LIMIT:
                self._reads.pop(next(iter(self._reads)))
            self._reads[key] = (record, revision)

    def _read(self, key: bytes) -> tuple[Record | None, int]:
        request = etcdrpc.RangeRequest(key=key)
        response = self._call("get", lambda ep, t, md: ep.kv.Range(request, timeout=t, metadata=md))
        record = _record(response.kvs[0]) if response.kvs else None
        revision = int(response.header.revision)
        self._remember(key, record, revision)
        return record, revision

    @staticmethod
    def _own(session: Session) -> _EtcdSession:
        """``session`` as an etcd session; ConfigurationError if it is another backend's."""
        if not isinstance(session, _EtcdSession):
            raise ConfigurationError(f"{session!r} is not a session of an etcd discovery")
        return session

    @classmethod
    def _open(cls, session: Session) -> _EtcdSession:
        """``session`` as an open etcd session, or the error that using it must raise."""
        own = cls._own(session)
        if own._closed:
            raise SessionExpired(f"lease {own.id} was closed")
        return own

    @classmethod
    def _lease(cls, session: Session) -> int:
        return cls._open(session).lease_id

    # -- the Discovery contract ------------------------------------------------------------------------------

    def session(self, ttl: float) -> Session:
        """A new lease of ``ceil(ttl)`` seconds (see the module docstring for the server's minimum)."""
        return _EtcdSession(self, check_ttl(ttl))

    def prepare(self, key: str, value: str, ttl: float) -> Session | None:
        """A ticket: a lease granted now, while the candidate waits, so that the claim after the holder left
        is one write (the transaction) instead of two (grant, then transaction), as long as the wait was short.

        The ticket's ``clock`` is when its lease's TTL started (the grant was sent); a claim with a ticket older
        than ``TICKET_AGE * ttl`` (1/6) first takes a new lease, exactly what a plain session costs, so the claim
        never comes more than ``ttl/6`` into the lease and the owner counts its term from ``clock``. A lease that
        was not used holds nothing and expires on its own after ``ttl``: the price is one lease grant each time a
        candidate starts waiting without a ticket (not periodic). ``prepare=0`` in the URL turns tickets off.
        Never raises: None when etcd could not be reached.
        """
        if not self._prepare:
            return None
        try:
            return _EtcdSession(self, check_ttl(ttl), ticket=True)
        except DiscoveryError as e:
            log.debug("no ticket for %r (the claim will grant its lease): %s", key, e)
            return None

    def create(self, key: str, value: str, session: Session) -> Record | None:
        """Put ``key`` with the session's lease if its create_revision is 0; token = revision of that put.

        With an old ticket (see :meth:`prepare`) a new lease is granted first."""
        k = self._k(key)
        own = self._open(session)
        own.fresh_for_claim()
        lease = own.lease_id
        request = etcdrpc.TxnRequest(
            compare=[etcdrpc.Compare(key=k, target=etcdrpc.Compare.CREATE, result=etcdrpc.Compare.EQUAL)],
            success=[etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=k, value=value.encode(), lease=lease))],
            failure=[etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=k))],
        )
        response = self._call("create", lambda ep, t, md: ep.kv.Txn(request, timeout=t, metadata=md))
        revision = int(response.header.revision)
        if response.succeeded:
            record = Record(value, revision, session.id)
            self._remember(k, record, revision)
            return record
        kvs = response.responses[0].response_range.kvs
        current = _record(kvs[0]) if kvs else None
        self._remember(k, current, revision)
        if kvs and int(kvs[0].lease) == lease and current is not None and current.value == value:
            return current  # our own earlier attempt, applied before its answer was lost: it is ours
        return None

    def put(self, key: str, value: str, session: Session | None = None) -> Record:
        """Create or overwrite ``key`` (with the session's lease if given); the token stays the key's creation."""
        k = self._k(key)
        lease = self._lease(session) if session is not None else 0
        request = etcdrpc.TxnRequest(
            success=[
                etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=k, value=value.encode(), lease=lease)),
                etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=k)),
            ],
        )
        response = self._call("put", lambda ep, t, md: ep.kv.Txn(request, timeout=t, metadata=md))
        record = _record(response.responses[1].response_range.kvs[0])
        self._remember(k, record, int(response.header.revision))
        return record

    def get(self, key: str) -> Record | None:
        """The key's Record (token = its create_revision), read linearizably."""
        return self._read(self._k(key))[0]

    def delete(self, key: str, token: int) -> bool:
        """Delete ``key`` in one transaction iff its create_revision equals ``token``."""
        k = self._k(key)
        if token <= 0:
            return False
        request = etcdrpc.TxnRequest(
            compare=[
                etcdrpc.Compare(
                    key=k, target=etcdrpc.Compare.CREATE, result=etcdrpc.Compare.EQUAL, create_revision=token
                )
            ],
            success=[etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=k))],
        )
        response = self._call("delete", lambda ep, t, md: ep.kv.Txn(request, timeout=t, metadata=md))
        deleted = bool(response.succeeded) and response.responses[0].response_delete_range.deleted > 0
        if deleted:
            self._remember(k, None, int(response.header.revision))
        return deleted

    def release(self, key: str, token: int, session: Session) -> None:
        """Hand over ``key`` by revoking the session's lease: one raft write that deletes every key attached
        to the lease, ``key`` among them while it is still the one the session created (a successor's key has
        a lease of its own, so it is never touched; ``token`` is therefore not needed).

        One write instead of a compare-and-delete and a revoke: the next candidate's lease grant, sent when
        the delete event reaches it, is not queued behind our revoke's disk sync. Raises
        :class:`~swarmha.errors.DiscoveryUnavailable` when no endpoint answered: the key then goes when the
        lease expires (within its TTL). The session is closed in every case.
        """
        own = self._own(session)
        if not own._closed:
            own.revoke()

    def list(self, prefix: str) -> Mapping[str, Record]:
        p = self._k(prefix) + b"/"
        request = etcdrpc.RangeRequest(key=p, range_end=_prefix_end(p))
        response = self._call("list", lambda ep, t, md: ep.kv.Range(request, timeout=t, metadata=md))
        skip = len(self._prefix.encode())
        return {kv.key[skip:].decode(): _record(kv) for kv in response.kvs}

    def watch(self, key: str, seen: Record | None) -> Watch:
        """A watch from the revision after the read that returned ``seen`` (read again if that is unknown)."""
        k = self._k(key)
        with self._lock:
            known = self._reads.get(k)
        state, changed = seen, False
        if known is not None and known[0] == seen:
            revision = known[1]
        else:
            state, revision = self._read(k)
            changed = state != seen
        watch = _EtcdWatch(self, k, state, revision + 1, changed)
        self._stream.add(watch)
        return watch

    def close(self) -> None:
        """Close every watch (and the stream's thread) and the channels. Leases are left to expire. Idempotent."""
        with self._lock:
            self._closed = True
        self._stream.close()
        for ep in self._endpoints:
            with contextlib.suppress(Exception):
                ep.close()
