"""``consul://HOST[:PORT][,HOST[:PORT]...]/prefix``: Discovery on Consul's KV store and sessions (HTTP API).

URL parameters (all optional)::

    token=SECRET          ACL token, sent as the X-Consul-Token header
    dc=NAME               datacenter (default: the agent's)
    https=1               talk HTTPS (implied by ca= or cert=)
    ca=/path/ca.pem       CA bundle that verifies the agent's certificate
    cert=/path/c.pem      client certificate (with key=/path/k.pem) for agents with verify_incoming
    key=/path/k.pem
    timeout=5             seconds every request may take (blocking queries: their wait plus this)
    session_ttl_min=10s   the servers' ``session_ttl_min`` (Consul's default: 10s). Set it only when your
                          servers run with a lower one; the servers still refuse what their setting refuses.

Default port 8500; with several hosts, a host that fails at the transport level is skipped for the next call.

How the Discovery contract maps onto Consul:

* A :class:`Session` is a Consul session with ``Behavior=delete`` (an expired leader's key disappears instead
  of staying behind with a dead address), ``LockDelay=0s`` (no wait after a crash on top of the TTL), and the
  default ``serfHealth`` check of the agent it was created on.
* **Session TTL = ttl/2.** Consul invalidates a TTL session ``2 x TTL`` after its last renewal (the server
  multiplies every TTL by ``SessionTTLMultiplier = 2`` for grace; the documented contract only promises "not
  before TTL"). With TTL = ttl/2 the key vanishes ``ttl`` after the last renewal the server received, so the
  **crash failover bound is ttl** (plus one blocking-query round trip), while a leader that cannot renew demotes
  itself at ``renew_deadline`` (default 2/3 ttl) -- before the server lets anyone else in.
* Consul refuses session TTLs outside ``[session_ttl_min, 86400s]`` (``session_ttl_min`` defaults to 10s), so
  ``ttl`` must lie in ``[2 x session_ttl_min, 172800s]`` -- ``[20s, 48h]`` with default servers. Anything else
  raises :class:`~swarmha.errors.ConfigurationError` naming those numbers, before a request is sent; should the
  servers refuse a TTL anyway (their ``session_ttl_min`` is higher than the URL claims), that answer is turned
  into the same error.
* :meth:`ConsulDiscovery.create` is Consul's acquire (the ``lock`` verb of ``PUT /v1/txn``, the same state
  change as ``PUT /v1/kv/KEY?acquire=SESSION``, but answered with the entry, so one round trip yields the
  index), preceded in the same transaction by ``check-not-exists``: a key that exists without a lock (say, a
  leader key Swarm classic left behind with ``behavior=release``) is not taken over; delete it once.
* The fencing token is the key's ``ModifyIndex`` after the acquire: the Raft index of the acquiring write,
  larger than every index of any earlier term on the key (``CreateIndex`` would stay put if a key left behind
  unlocked were acquired again, and ``LockIndex`` restarts at 1 when a key is deleted and re-created).
  Any later write to the key changes it, so the token always names "the write that made the current state".
  An acquire refused because of Consul's lock-delay (set by some other client's session) raises
  :class:`~swarmha.errors.DiscoveryUnavailable` so that callers back off instead of spinning.
* :meth:`ConsulDiscovery.delete` is compare-and-delete in one transaction, ``check-index`` + ``delete``: one
  atomic write, so a waiter wakes once and finds the key gone (no release-then-delete window in which the key
  exists unlocked), and an absent key answers False (a plain ``DELETE ?cas=`` answers true for it).
* :meth:`ConsulDiscovery.watch` uses blocking queries (``?index=&wait=``) on a connection of its own; the index
  is the ``X-Consul-Index`` of the read that produced the caller's record, so no change after it is missed.
  A thread per watch keeps one blocking query (``wait`` = 5 minutes) in flight across :meth:`Watch.wait` calls
  and their timeouts, so an idle watch sends one request per 5 minutes, however often it is waited on (a
  leader waits on its own key between renewals: an idle leader costs its renewals and nothing else).
  :meth:`Watch.close` shuts the watch's socket down, which wakes a blocked :meth:`Watch.wait` at once.

Failure modes: every request is bounded (``timeout``); transport errors, timeouts, 5xx answers and "no cluster
leader" raise :class:`~swarmha.errors.DiscoveryUnavailable`; an unknown session (renew 404, acquire on an
invalidated session) raises :class:`~swarmha.errors.SessionExpired`; 403 and other 4xx answers raise
:class:`~swarmha.errors.DiscoveryError` with Consul's message. No httpx exception escapes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import re
import socket
import ssl
import threading
import urllib.parse
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import httpcore
import httpx

from swarmha.discovery._base import Discovery, Record, Session, Watch, check_key, check_ttl
from swarmha.discovery._url import DiscoveryURL
from swarmha.errors import (
    ConfigurationError,
    DiscoveryError,
    DiscoveryUnavailable,
    InvalidDiscoveryURL,
    SessionExpired,
)

__all__ = ["DEFAULT_PORT", "SESSION_TTL_MAX", "SESSION_TTL_MIN", "ConsulDiscovery", "session_ttl_for"]

log = logging.getLogger("swarmha.discovery.consul")

DEFAULT_PORT = 8500
#: Consul's default ``session_ttl_min`` server option and its fixed maximum session TTL (seconds).
SESSION_TTL_MIN = 10.0
SESSION_TTL_MAX = 86400.0
#: Consul invalidates a TTL session this many TTLs after its last renewal (``structs.SessionTTLMultiplier``).
TTL_MULTIPLIER = 2.0
#: Longest blocking-query wait an unbounded :meth:`Watch.wait` asks for (Consul's default wait).
WATCH_WAIT = 300.0
DEFAULT_TIMEOUT = 5.0

_TRUE = {"1", "true", "yes", "on"}
_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)?$")
_DURATION_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def session_ttl_for(ttl: float, session_ttl_min: float = SESSION_TTL_MIN) -> float:
    """The Consul session TTL used for a swarmha ``ttl`` (``ttl/2``); ConfigurationError if Consul would refuse it."""
    ttl = check_ttl(ttl)
    session_ttl = ttl / TTL_MULTIPLIER
    if not session_ttl_min <= session_ttl <= SESSION_TTL_MAX:
        raise ConfigurationError(
            f"ttl={ttl:g}s needs a Consul session TTL of ttl/2 = {session_ttl:g}s, but Consul accepts session TTLs "
            f"between session_ttl_min={session_ttl_min:g}s and {SESSION_TTL_MAX:g}s, so ttl must lie between "
            f"{session_ttl_min * TTL_MULTIPLIER:g}s and {SESSION_TTL_MAX * TTL_MULTIPLIER:g}s (Consul invalidates a "
            f"session up to 2x its TTL after the last renewal, so swarmha asks for ttl/2). If your servers run with "
            f"a lower session_ttl_min, say so in the URL: ?session_ttl_min=5s"
        )
    return session_ttl


def _duration(text: str, what: str, url: DiscoveryURL) -> float:
    m = _DURATION.match(text.strip())
    if m is None:
        raise InvalidDiscoveryURL(f"consul URL {str(url)!r}: {what}={text!r} is not a duration like 10s, 500ms or 2.5")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def _go_duration(seconds: float) -> str:
    """A Go duration string Consul parses exactly (millisecond resolution, at least 1ms)."""
    return f"{max(1, math.ceil(seconds * 1000))}ms"


class _AbortableBackend(httpcore.NetworkBackend):
    """httpcore's sync network backend, remembering its sockets so :meth:`abort` can shut them all down.

    Shutting a socket down (unlike closing it) wakes a thread blocked reading from it, which is what lets
    :meth:`Watch.close` end a blocking query from another thread at once.
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

    def __init__(self, ssl_context: ssl.SSLContext | None, keepalive: int) -> None:
        self.backend = _AbortableBackend()
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=max(keepalive, 1) * 4,
            max_keepalive_connections=keepalive,
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


class _Client:
    """One HTTP client (one connection pool) to the agents of a URL; translates every failure to DiscoveryError."""

    def __init__(self, owner: ConsulDiscovery, keepalive: int) -> None:
        self._owner = owner
        self._transport = _Transport(owner._ssl, keepalive)
        self._http = httpx.Client(transport=self._transport, headers=owner._headers, trust_env=False)

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
        owner = self._owner
        base = owner._base()
        query = dict(owner._query)
        query.update(params or {})
        timeout = httpx.Timeout(owner._timeout, read=read_timeout or owner._timeout)
        try:
            response = self._http.request(
                method, base + path, params=query, content=content, timeout=timeout, follow_redirects=False
            )
        except httpx.HTTPError as e:
            owner._rotate(base)
            raise DiscoveryUnavailable(f"consul agent {base} did not answer {method} {path}: {e}") from e
        except RuntimeError as e:  # the client was closed under us
            raise DiscoveryUnavailable(f"consul connection to {base} is closed") from e
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
        self._transport.abort()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._http.close()


def _decode(response: httpx.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError as e:
        raise DiscoveryError(f"consul answered {what} with something that is not JSON: {response.text[:200]!r}") from e


def _index(response: httpx.Response) -> int:
    try:
        return int(response.headers.get("X-Consul-Index", "0"))
    except ValueError:
        return 0


class _ConsulSession(Session):
    def __init__(self, d: ConsulDiscovery, ttl: float, session_ttl: float) -> None:
        self._d = d
        self.ttl = ttl
        self.session_ttl = session_ttl
        self._closed = False
        body = {
            "Name": "swarmha",
            "TTL": _go_duration(session_ttl),
            "Behavior": "delete",
            "LockDelay": "0s",
        }
        try:
            response = d._client.request("PUT", "/v1/session/create", content=json.dumps(body).encode())
        except DiscoveryError as e:
            if "session ttl" in str(e).lower():
                raise ConfigurationError(
                    f"consul refused a session TTL of {session_ttl:g}s (ttl={ttl:g}s): {e}. The servers' "
                    f"session_ttl_min is higher than the URL's session_ttl_min={d.session_ttl_min:g}s; ttl must be "
                    f"at least 2 x the servers' session_ttl_min (Consul's default: 10s, so ttl >= 20s)"
                ) from e
            raise
        if response.status_code == 404:
            raise DiscoveryError(f"consul has no session API at {d._base()} (404)")
        data = _decode(response, "session create")
        if not isinstance(data, dict) or not isinstance(data.get("ID"), str):
            raise DiscoveryError(f"consul answered session create without an ID: {data!r}")
        self.id = data["ID"]

    def keepalive(self) -> None:
        if self._closed:
            raise SessionExpired(f"session {self.id} was closed")
        response = self._d._client.request("PUT", f"/v1/session/renew/{self.id}")
        if response.status_code == 404:
            raise SessionExpired(f"consul session {self.id} expired or was destroyed")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(DiscoveryError):
            self._d._client.request("PUT", f"/v1/session/destroy/{self.id}")


class _ConsulWatch(Watch):
    """Blocking queries on one key, sent by a thread of the watch over a connection of its own.

    The thread (``swarmha-consul-watch[PATH]``, started by the first :meth:`wait`) keeps one blocking query
    (``wait`` = 5 minutes) in flight *across* :meth:`wait` calls and their timeouts, so a leader that waits on
    its own key between renewals costs one query per 5 minutes, not one or two per renewal period. After a
    change it sends the next query only once a :meth:`wait` has reported that change. A failed query ends the
    thread: every later :meth:`wait` raises that error (callers close the watch and make a new one).
    :meth:`close` shuts the connection down, which wakes the query and a blocked :meth:`wait` at once, and
    joins the thread.
    """

    def __init__(self, d: ConsulDiscovery, path: str, seen: Record | None, index: int | None) -> None:
        self._d = d
        self._path = path
        self._seen = seen
        self._index = index  # X-Consul-Index of a read that returned `seen`; None: read once first
        self._client = _Client(d, keepalive=1)
        self._cond = threading.Condition()
        self._closed = False
        self._interrupted = False  # interrupt(): every wait() returns False, the thread lives on
        self._changed = False  # a change the thread saw that no wait() has reported yet
        self._error: DiscoveryError | None = None
        self._thread: threading.Thread | None = None

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name=f"swarmha-consul-watch[{self._path}]", daemon=True
                )
                self._thread.start()
            self._cond.wait_for(
                lambda: self._closed or self._interrupted or self._changed or self._error is not None, timeout
            )
            if self._closed or self._interrupted:
                return False
            if self._changed:
                self._changed = False
                self._cond.notify_all()  # the thread may query again
                return True
            if self._error is not None:
                raise self._error
            return False

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while self._changed and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    index = self._index
                params: dict[str, str] = {}
                read_timeout = None
                if index is not None:
                    # Consul adds up to wait/16 of jitter: ask for 16/17 of WATCH_WAIT.
                    wait = WATCH_WAIT * 16.0 / 17.0
                    params = {"index": str(index), "wait": _go_duration(wait)}
                    read_timeout = WATCH_WAIT + self._d._timeout
                response = self._client.request("GET", self._path, params=params, read_timeout=read_timeout)
                record = self._d._record(response)
                new_index = _index(response)
                if index is not None and new_index < index:
                    new_index = 0  # the index went backwards (a snapshot restore): start over with a plain read
                with self._cond:
                    self._index = new_index
                    if record != self._seen:
                        self._seen = record
                        self._changed = True
                        self._cond.notify_all()
        except Exception as e:
            error = e if isinstance(e, DiscoveryError) else DiscoveryError(f"consul watch on {self._path}: {e!r}")
            with self._cond:
                if not self._closed:
                    if not isinstance(e, DiscoveryError):
                        log.error("consul watch on %s: unexpected error", self._path, exc_info=e)
                    self._error = error
                    self._cond.notify_all()
        finally:
            self._client.close()

    def interrupt(self) -> None:
        """Wake a pending :meth:`wait` (and make later ones return False) without joining the thread."""
        with self._cond:
            self._interrupted = True
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._cond.notify_all()
        self._client.abort()
        if thread is None:
            self._client.close()
        elif thread is not threading.current_thread():
            thread.join(self._d._timeout + 5.0)


class ConsulDiscovery(Discovery):
    """Discovery over a Consul agent's HTTP API; see the module docstring for the URL and the guarantees."""

    def __init__(self, url: DiscoveryURL) -> None:
        if not url.hosts:
            raise InvalidDiscoveryURL(f"consul URL {str(url)!r} names no agent: consul://HOST:8500/prefix")
        self.url = url
        p = url.params
        known = {"token", "dc", "https", "ca", "cert", "key", "timeout", "session_ttl_min"}
        unknown = sorted(set(p) - known)
        if unknown:
            raise InvalidDiscoveryURL(
                f"consul URL {str(url)!r} has unknown parameters {unknown}; known: {', '.join(sorted(known))}"
            )
        self._timeout = _duration(p["timeout"], "timeout", url) if "timeout" in p else DEFAULT_TIMEOUT
        if self._timeout <= 0:
            raise InvalidDiscoveryURL(f"consul URL {str(url)!r}: timeout must be positive")
        self.session_ttl_min = (
            _duration(p["session_ttl_min"], "session_ttl_min", url) if "session_ttl_min" in p else SESSION_TTL_MIN
        )
        tls = p.get("https", "").lower() in _TRUE or "ca" in p or "cert" in p
        if "key" in p and "cert" not in p:
            raise InvalidDiscoveryURL(f"consul URL {str(url)!r}: key= needs cert=")
        self._ssl: ssl.SSLContext | None = None
        if tls:
            try:
                self._ssl = ssl.create_default_context(cafile=p.get("ca") or None)
                if "cert" in p:
                    self._ssl.load_cert_chain(p["cert"], p.get("key") or None)
            except (OSError, ssl.SSLError) as e:
                raise ConfigurationError(f"consul URL {str(url)!r}: cannot load TLS files: {e}") from e
        scheme = "https" if tls else "http"
        self._bases = [
            f"{scheme}://[{h}]:{port}" if ":" in h else f"{scheme}://{h}:{port}"
            for h, port in url.endpoints(DEFAULT_PORT)
        ]
        self._current = 0
        self._headers = {"X-Consul-Token": p["token"]} if p.get("token") else {}
        self._query = {"dc": p["dc"]} if p.get("dc") else {}
        self._prefix = url.path + "/" if url.path else ""
        self._lock = threading.Lock()
        self._closed = False
        self._watches: weakref.WeakSet[_ConsulWatch] = weakref.WeakSet()
        self._client = _Client(self, keepalive=8)
        # X-Consul-Index of the last read of each key, with what it returned: lets watch() block at once.
        self._reads: dict[str, tuple[Record | None, int]] = {}

    # -- plumbing ------------------------------------------------------------------------------------

    def _base(self) -> str:
        with self._lock:
            return self._bases[self._current % len(self._bases)]

    def _rotate(self, failed: str) -> None:
        with self._lock:
            if self._bases[self._current % len(self._bases)] == failed:
                self._current += 1

    def _k(self, key: str) -> str:
        return self._prefix + check_key(key)

    def _path(self, full_key: str) -> str:
        return "/v1/kv/" + urllib.parse.quote(full_key, safe="/")

    def _check_open(self) -> None:
        if self._closed:
            raise DiscoveryUnavailable(f"consul discovery {self.url} is closed")

    @staticmethod
    def _entry(data: Any) -> Record:
        try:
            raw = data.get("Value")
            value = base64.b64decode(raw).decode("utf-8") if raw else ""
            return Record(value, int(data["ModifyIndex"]), data.get("Session") or None)
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise DiscoveryError(f"consul answered with a malformed KV entry {data!r}: {e}") from e

    def _record(self, response: httpx.Response) -> Record | None:
        if response.status_code == 404:
            return None
        data = _decode(response, "a KV read")
        if not isinstance(data, list) or len(data) != 1:
            raise DiscoveryError(f"consul answered a KV read with {data!r}, expected one entry")
        return self._entry(data[0])

    def _read(self, full_key: str) -> Record | None:
        response = self._client.request("GET", self._path(full_key))
        record = self._record(response)
        with self._lock:
            self._reads[full_key] = (record, _index(response))
        return record

    # -- the contract --------------------------------------------------------------------------------

    def check_ttl(self, ttl: float) -> None:
        """Refuse a ttl whose session TTL (ttl/2) lies outside what the servers accept (see the module doc)."""
        session_ttl_for(check_ttl(ttl), self.session_ttl_min)

    def session(self, ttl: float) -> Session:
        """A Consul session with TTL ``ttl/2`` (invalidated ~``ttl`` after the last renewal), behaviour delete."""
        session_ttl = session_ttl_for(ttl, self.session_ttl_min)
        self._check_open()
        return _ConsulSession(self, check_ttl(ttl), session_ttl)

    def _txn(self, ops: list[dict[str, Any]]) -> tuple[list[Record], list[str]]:
        """Run KV operations atomically (``PUT /v1/txn``): the Records written, or the errors that undid them."""
        body = json.dumps([{"KV": op} for op in ops]).encode()
        response = self._client.request("PUT", "/v1/txn", content=body, conflict_ok=True)
        data = _decode(response, "a transaction")
        if not isinstance(data, dict):
            raise DiscoveryError(f"consul answered a transaction with {data!r}")
        if response.status_code == 409:
            errors = [str(e.get("What", e)) if isinstance(e, dict) else str(e) for e in data.get("Errors") or []]
            if any("invalid session" in e.lower() for e in errors):
                raise SessionExpired(f"consul refused a lock with an invalidated session: {'; '.join(errors)}")
            return [], errors or ["conflict"]
        if response.status_code != 200:
            raise DiscoveryError(f"consul answered a transaction with {response.status_code}: {response.text[:200]}")
        return [self._entry(r["KV"]) for r in data.get("Results") or [] if isinstance(r, dict) and "KV" in r], []

    def _write(
        self, k: str, value: str, session: Session | None, *, absent: bool = False
    ) -> tuple[Record | None, list[str]]:
        """Write ``k`` (locked by ``session`` if given; only if absent if asked) in one transaction.

        The Record carries the write's index. Errors: why Consul refused (the transaction then did nothing).
        """
        op: dict[str, Any] = {"Key": k, "Value": base64.b64encode(value.encode("utf-8")).decode()}
        op["Verb"] = "set" if session is None else "lock"
        if session is not None:
            op["Session"] = session.id
        checks: list[dict[str, Any]] = [{"Verb": "check-not-exists", "Key": k}] if absent else []
        records, errors = self._txn([*checks, op])
        if errors:
            return None, errors
        if len(records) != 1:
            raise DiscoveryError(f"consul answered a write of {k!r} without its entry")
        # The transaction answers without the value; the write just stored ours.
        return Record(value, records[0].token, records[0].session), []

    def create(self, key: str, value: str, session: Session) -> Record | None:
        """Create ``key`` locked by ``session``: one transaction ``check-not-exists`` + ``lock`` (Consul's acquire)."""
        k = self._k(key)
        self._check_open()
        record, errors = self._write(k, value, session, absent=True)
        if record is not None:
            if record.session != session.id:
                raise SessionExpired(f"consul session {session.id} did not get {k!r}: {record}")
            return record
        if any("lock delay" in e.lower() for e in errors):
            raise DiscoveryUnavailable(f"consul refused to lock {k!r}: it is in a lock-delay ({'; '.join(errors)})")
        return None

    def put(self, key: str, value: str, session: Session | None = None) -> Record:
        """Write ``key``; with a session, lock it for that session (fails if another session holds it)."""
        k = self._k(key)
        self._check_open()
        record, errors = self._write(k, value, session)
        if record is None:
            raise DiscoveryError(f"consul refused to write {k!r}: {'; '.join(errors)}")
        return record

    def get(self, key: str) -> Record | None:
        self._check_open()
        return self._read(self._k(key))

    def delete(self, key: str, token: int) -> bool:
        """Compare-and-delete: one transaction ``check-index`` + ``delete`` (False if absent or another token)."""
        k = self._k(key)
        self._check_open()
        _, errors = self._txn([{"Verb": "check-index", "Key": k, "Index": token}, {"Verb": "delete", "Key": k}])
        return not errors

    def list(self, prefix: str) -> Mapping[str, Record]:
        p = self._k(prefix) + "/"
        self._check_open()
        response = self._client.request("GET", self._path(p), params={"recurse": "true"})
        if response.status_code == 404:
            return {}
        data = _decode(response, "a KV list")
        if not isinstance(data, list):
            raise DiscoveryError(f"consul answered a KV list with {data!r}")
        out: dict[str, Record] = {}
        for entry in data:
            name = entry.get("Key", "") if isinstance(entry, dict) else ""
            if name.startswith(p) and not name.endswith("/"):
                out[name[len(self._prefix) :]] = self._entry(entry)
        return out

    def watch(self, key: str, seen: Record | None) -> Watch:
        k = self._k(key)
        self._check_open()
        with self._lock:
            last = self._reads.get(k)
        index = last[1] if last is not None and last[0] == seen and last[1] > 0 else None
        w = _ConsulWatch(self, self._path(k), seen, index)
        with self._lock:
            self._watches.add(w)
        return w

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            watches = list(self._watches)
        for w in watches:
            w.close()
        self._client.close()
