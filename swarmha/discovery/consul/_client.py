"""The HTTP layer of the Consul backend: the agents of a URL, and a client whose connections can be aborted.

:class:`Agents` holds what every request to a URL's agents shares (base URLs and which one is current, headers,
``dc``, TLS, the request timeout). :class:`Client` is one httpx client (one connection pool) over
:class:`_AbortableBackend`, httpcore's sync network backend remembering its sockets, so that another thread can
end a blocking query at once (:meth:`Client.abort` shuts the sockets down, which wakes a thread blocked reading
them). Every failure becomes a :class:`~swarmha.errors.DiscoveryError` (see :meth:`Client.request`); no httpx or
httpcore exception escapes.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import httpcore
import httpx

from swarmha.discovery._base import Record
from swarmha.errors import DiscoveryError, DiscoveryUnavailable, SessionExpired

__all__ = ["Agents", "Client", "decode", "index_of", "kv_record"]


class Agents:
    """The agents a consul:// URL names and how to talk to them. Thread-safe."""

    def __init__(
        self,
        bases: list[str],
        *,
        timeout: float,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.bases = bases
        self.timeout = timeout
        self.headers = dict(headers)
        self.query = dict(query)
        self.ssl = ssl_context
        self._lock = threading.Lock()
        self._current = 0

    def base(self) -> str:
        """The agent to talk to now."""
        with self._lock:
            return self.bases[self._current % len(self.bases)]

    def rotate(self, failed: str) -> None:
        """``failed`` did not answer at the transport level: the next call goes to the next agent."""
        with self._lock:
            if self.bases[self._current % len(self.bases)] == failed:
                self._current += 1


def decode(response: httpx.Response, what: str) -> Any:
    """The JSON body of ``response``; DiscoveryError if it is not JSON."""
    try:
        return response.json()
    except ValueError as e:
        raise DiscoveryError(f"consul answered {what} with something that is not JSON: {response.text[:200]!r}") from e


def index_of(response: httpx.Response) -> int:
    """The ``X-Consul-Index`` of an answer (0 if missing or malformed)."""
    try:
        return int(response.headers.get("X-Consul-Index", "0"))
    except ValueError:
        return 0


def kv_record(data: Any) -> Record:
    """The Record of one KV entry as Consul answers it (the token is its ``ModifyIndex``)."""
    try:
        raw = data.get("Value")
        value = base64.b64decode(raw).decode("utf-8") if raw else ""
        return Record(value, int(data["ModifyIndex"]), data.get("Session") or None)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise DiscoveryError(f"consul answered with a malformed KV entry {data!r}: {e}") from e


class _AbortableBackend(httpcore.NetworkBackend):
    """httpcore's sync network backend, remembering its sockets so :meth:`abort` can shut them all down.

    Shutting a socket down (unlike closing it) wakes a thread blocked reading from it. After :meth:`abort`, every
    new connection fails at once: an aborted client is done (make a new one).
    """

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()
        self._lock = threading.Lock()
        self._socks: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._aborted = False

    def track(self, stream: httpcore.NetworkStream) -> httpcore.NetworkStream:
        sock = stream.get_extra_info("socket")
        with self._lock:
            aborted = self._aborted
            if isinstance(sock, socket.socket):
                self._socks.add(sock)
        if aborted:
            stream.close()
            raise httpcore.ConnectError("connection closed by the client")
        return _TrackedStream(stream, self)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        return self.track(self._inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:  # pragma: no cover - consul:// URLs name TCP hosts
        return self.track(self._inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _TrackedStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: _AbortableBackend) -> None:
        self._inner = inner
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, timeout)

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return self._backend.track(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


_HTTPCORE_ERRORS: tuple[type[Exception], ...] = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.ConnectionNotAvailable,
    httpcore.UnsupportedProtocol,
)


class _Transport(httpx.BaseTransport):
    """An httpx transport over an httpcore pool with an abortable network backend (bodies read eagerly)."""

    def __init__(self, ssl_context: ssl.SSLContext | None, connections: int) -> None:
        self.backend = _AbortableBackend()
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=connections,
            max_keepalive_connections=connections,
            keepalive_expiry=60.0,
            network_backend=self.backend,
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = self._pool.request(
                request.method,
                httpcore.URL(
                    scheme=request.url.raw_scheme,
                    host=request.url.raw_host,
                    port=request.url.port,
                    target=request.url.raw_path,
                ),
                headers=request.headers.raw,
                content=request.read(),
                extensions=request.extensions,
            )
        except _HTTPCORE_ERRORS as e:
            raise httpx.TransportError(f"{type(e).__name__}: {e}") from e
        return httpx.Response(status_code=response.status, headers=response.headers, content=response.content)

    def abort(self) -> None:
        self.backend.abort()

    def close(self) -> None:
        self._pool.close()


class Client:
    """One HTTP client to ``agents`` over at most ``connections`` connections; every failure becomes DiscoveryError.

    HTTP/1.1 carries one request at a time per connection, so ``connections`` is how many requests of the client
    can be in flight together: the others wait for their turn (up to the agents' timeout, then
    DiscoveryUnavailable). The client counts them itself rather than let httpcore's pool queue them: a full
    httpcore 1.0 pool may close a connection that it just handed to another request (which then fails with
    "Bad file descriptor"), as measured with 900 candidates on three one-connection Discoveries.
    """

    def __init__(self, agents: Agents, connections: int = 1) -> None:
        self._agents = agents
        self._turns = threading.BoundedSemaphore(max(1, connections))
        self._transport = _Transport(agents.ssl, max(1, connections))
        self._http = httpx.Client(transport=self._transport, headers=agents.headers, trust_env=False)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        content: bytes | None = None,
        read_timeout: float | None = None,
        conflict_ok: bool = False,
    ) -> httpx.Response:
        """Send one request to the current agent; the answer, if its status is below 400, 404, or 409 when asked.

        Transport errors, timeouts, 429/502/503/504 and "no cluster leader" raise DiscoveryUnavailable (and a
        transport error moves on to the next agent); "invalid session" raises SessionExpired; any other status
        DiscoveryError with Consul's message.
        """
        agents = self._agents
        base = agents.base()
        query = dict(agents.query)
        query.update(params or {})
        timeout = httpx.Timeout(agents.timeout, read=read_timeout or agents.timeout)
        if not self._turns.acquire(timeout=agents.timeout):
            raise DiscoveryUnavailable(
                f"consul agent {base}: {method} {path} found no free connection within {agents.timeout:g}s"
            )
        try:
            response = self._http.request(
                method, base + path, params=query, content=content, timeout=timeout, follow_redirects=False
            )
        except httpx.HTTPError as e:
            agents.rotate(base)
            raise DiscoveryUnavailable(f"consul agent {base} did not answer {method} {path}: {e}") from e
        except RuntimeError as e:  # the client was closed under us
            raise DiscoveryUnavailable(f"consul connection to {base} is closed") from e
        finally:
            self._turns.release()
        status = response.status_code
        if status < 400 or status == 404 or (status == 409 and conflict_ok):
            return response
        message = response.text.strip()[:500]
        what = f"consul agent {base} answered {method} {path} with {status}: {message}"
        lowered = message.lower()
        if "invalid session" in lowered and "ttl" not in lowered:
            raise SessionExpired(what)
        if status in (429, 502, 503, 504) or (status == 500 and "leader" in lowered):
            raise DiscoveryUnavailable(what)
        raise DiscoveryError(what)

    def abort(self) -> None:
        """Shut every connection down now (wakes a request blocked on one); the client is unusable afterwards."""
        self._transport.abort()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._http.close()
