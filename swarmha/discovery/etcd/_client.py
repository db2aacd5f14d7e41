"""One etcd client per Discovery: a gRPC channel per member, failover, authentication, errors, the read cache.

:class:`Client` runs every request of a Discovery (:meth:`Client.call`): endpoints are tried in the URL's order,
starting with the last one that answered; a call that finds its endpoint unreachable moves on to the next one
within the same ``timeout``; with ``user:password@`` it authenticates first and again when the token expired.
It also remembers, per key, the state and revision of the last read (:meth:`Client.remember`), so a watch on that
state starts right after it. Every gRPC error leaves it translated: unreachable, timed out, no leader →
``DiscoveryUnavailable``; lease not found → ``SessionExpired``; anything else → ``DiscoveryError``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import grpc
from pyetcd import etcdrpc

from swarmha.discovery._base import Record
from swarmha.discovery._url import DiscoveryURL
from swarmha.errors import DiscoveryError, DiscoveryUnavailable, InvalidDiscoveryURL, SessionExpired

__all__ = ["DEFAULT_PORT", "FAILOVER", "Client", "Endpoint", "prefix_end", "to_record"]

log = logging.getLogger("swarmha.discovery.etcd")

DEFAULT_PORT = 2379
#: Keys whose last read (state, revision) is remembered, so a watch on that state needs no read of its own. Above
#: the number of keys one process campaigns for (measured: with 1,024 and 10,000 keys every watch read its key
#: again, a third more requests); an entry is a few hundred bytes.
_CACHE_LIMIT = 65536
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
#: Codes after which the next endpoint may answer where this one did not.
FAILOVER = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class Endpoint:
    """One etcd member: a lazily opened gRPC channel and its stubs."""

    def __init__(self, host: str, port: int, credentials: Any) -> None:
        self.target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._credentials = credentials
        self._channel: Any = None
        self.kv: Any = None
        self.lease: Any = None
        self.watch: Any = None
        self.auth: Any = None

    def open(self) -> Endpoint:
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


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix`` (etcd's range_end for a prefix)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def to_record(kv: Any) -> Record:
    return Record(kv.value.decode(), int(kv.create_revision), f"{kv.lease:x}" if kv.lease else None)


def describe(error: Any) -> str:
    try:
        return f"{error.code().name}: {error.details()}"
    except Exception:
        return repr(error)


class _Attempt:
    """One request's failover state: until when it may try, how many endpoints failed, re-authenticated yet."""

    def __init__(self, client: Client, what: str, timeout: float | None) -> None:
        self._client = client
        self._what = what
        self._deadline = time.monotonic() + (client.timeout if timeout is None else timeout)
        self._failovers = 0
        self._reauthenticated = False

    def remaining(self) -> float:
        return max(0.01, self._deadline - time.monotonic())

    def again(self, error: Any, ep: Endpoint) -> bool:
        """True if the request is to be sent again after ``error`` (an expired token, or an unreachable endpoint
        while another remains and time is left)."""
        client = self._client
        code, details = error.code(), (error.details() or "")
        if (
            client._user is not None
            and not self._reauthenticated
            and (code is grpc.StatusCode.UNAUTHENTICATED or "auth token" in details)
        ):
            self._reauthenticated = True
            with client._lock:
                client._token = None
            return True
        if code in FAILOVER:
            client.failed(ep)
            self._failovers += 1
            if self._failovers < len(client._endpoints) and time.monotonic() < self._deadline - 0.01:
                log.debug("etcd %s at %s failed (%s); trying the next endpoint", self._what, ep.target, details)
                return True
        return False


class Client:
    """See the module docstring. Thread-safe."""

    def __init__(self, url: DiscoveryURL, timeout: float) -> None:
        """Raises :class:`~swarmha.errors.InvalidDiscoveryURL` for a user without a password (or the reverse),
        a lone ``cert`` or ``key``, or a certificate file that cannot be read."""
        self.url = url
        self.timeout = timeout
        if (url.username is None) != (url.password is None):
            raise InvalidDiscoveryURL(f"etcd URL {str(url)!r} needs both user and password (user:password@host)")
        self._user = url.username
        self._password = url.password
        credentials = self.credentials(url)
        self._endpoints = [Endpoint(h, p, credentials) for h, p in url.endpoints(DEFAULT_PORT)]
        self._lock = threading.Lock()
        self._current = 0
        self._token: str | None = None
        self._closed = False
        self._reads: dict[bytes, tuple[Record | None, int]] = {}

    @staticmethod
    def credentials(url: DiscoveryURL) -> Any:
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

    def endpoint(self) -> tuple[Endpoint, Any]:
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
                if e.code() in FAILOVER:
                    self.failed(ep)
                raise self.translate(e, "authenticate", ep) from None
            with self._lock:
                self._token = token
        return ep, (("token", token),) if token else None

    def failed(self, ep: Endpoint) -> None:
        """``ep`` did not answer: later calls start at the next endpoint."""
        with self._lock:
            if self._endpoints[self._current] is ep:
                self._current = (self._current + 1) % len(self._endpoints)

    def translate(self, error: Any, what: str, ep: Endpoint) -> DiscoveryError:
        code = error.code()
        message = f"etcd {what} at {ep.target} failed: {describe(error)}"
        if code in FAILOVER or code is grpc.StatusCode.CANCELLED:
            return DiscoveryUnavailable(message)
        if code is grpc.StatusCode.NOT_FOUND and "lease" in (error.details() or ""):
            return SessionExpired(message)
        return DiscoveryError(message)

    def call(self, what: str, fn: Callable[[Endpoint, float, Any], _T], timeout: float | None = None) -> _T:
        """Run ``fn(endpoint, timeout, metadata)`` with failover, all within ``timeout``; translate errors."""
        attempt = _Attempt(self, what, timeout)
        while True:
            ep, md = self.endpoint()
            try:
                return fn(ep, attempt.remaining(), md)
            except grpc.RpcError as e:
                if attempt.again(e, ep):
                    continue
                raise self.translate(e, what, ep) from None
            except ValueError as e:  # grpc raises it for a call on a channel closed by close()
                raise DiscoveryError(f"etcd {what} failed: {e}") from None

    def call_async(
        self,
        what: str,
        start: Callable[[Endpoint, float, Any], Any],
        answer: Callable[[Any], _T],
        timeout: float | None = None,
    ) -> Future[_T]:
        """:meth:`call` without blocking: ``start(endpoint, timeout, metadata)`` sends the request and returns its
        gRPC future (``stub.Method.future(...)``); the future returned here gets ``answer(response)`` or the
        translated error, with the same failover and re-authentication as :meth:`call` (the next attempt is sent
        from gRPC's callback thread). Requests of one Discovery made this way are pipelined on its channel."""
        result: Future[_T] = Future()
        attempt = _Attempt(self, what, timeout)

        def send() -> None:
            try:
                ep, md = self.endpoint()
                call = start(ep, attempt.remaining(), md)
            except DiscoveryError as e:
                result.set_exception(e)
                return
            except grpc.RpcError as e:  # the authentication's own failure, translated by endpoint(): not here
                result.set_exception(DiscoveryError(f"etcd {what} failed: {describe(e)}"))
                return
            except ValueError as e:  # a channel closed by close()
                result.set_exception(DiscoveryError(f"etcd {what} failed: {e}"))
                return
            call.add_done_callback(lambda done: answered(ep, done))

        def answered(ep: Endpoint, call: Any) -> None:
            try:
                error = call.exception()
            except BaseException:  # cancelled (the channel closed)
                result.set_exception(DiscoveryUnavailable(f"etcd {what} at {ep.target} was cancelled"))
                return
            if error is None:
                try:
                    result.set_result(answer(call.result()))
                except Exception as e:
                    result.set_exception(e)
                return
            if isinstance(error, grpc.RpcError) and attempt.again(error, ep):
                send()
                return
            if isinstance(error, grpc.RpcError):
                result.set_exception(self.translate(error, what, ep))
            else:
                result.set_exception(DiscoveryError(f"etcd {what} failed: {error}"))

        send()
        return result

    def remember(self, key: bytes, record: Record | None, revision: int) -> None:
        """Note the state of ``key`` read at ``revision``: a later watch on that state starts right after it."""
        with self._lock:
            old = self._reads.get(key)
            if old is not None and old[1] > revision:
                return
            if old is None and len(self._reads) >= _CACHE_LIMIT:
                self._reads.pop(next(iter(self._reads)))
            self._reads[key] = (record, revision)

    def read(self, key: bytes) -> tuple[Record | None, int]:
        request = etcdrpc.RangeRequest(key=key)
        response = self.call("get", lambda ep, t, md: ep.kv.Range(request, timeout=t, metadata=md))
        return self._was_read(key, response)

    def read_async(self, key: bytes) -> Future[tuple[Record | None, int]]:
        """:meth:`read` pipelined (see :meth:`call_async`)."""
        request = etcdrpc.RangeRequest(key=key)
        return self.call_async(
            "get",
            lambda ep, t, md: ep.kv.Range.future(request, timeout=t, metadata=md),
            lambda response: self._was_read(key, response),
        )

    def _was_read(self, key: bytes, response: Any) -> tuple[Record | None, int]:
        record = to_record(response.kvs[0]) if response.kvs else None
        revision = int(response.header.revision)
        self.remember(key, record, revision)
        return record, revision

    def known(self, key: bytes) -> tuple[Record | None, int] | None:
        """The state of ``key`` at the last read (and its revision), if remembered."""
        with self._lock:
            return self._reads.get(key)

    def stop(self) -> None:
        """Refuse further calls (they raise DiscoveryError); :meth:`close` then closes the channels."""
        with self._lock:
            self._closed = True

    def close(self) -> None:
        """Refuse further calls and close every channel. Idempotent."""
        self.stop()
        for ep in self._endpoints:
            with contextlib.suppress(Exception):
                ep.close()
