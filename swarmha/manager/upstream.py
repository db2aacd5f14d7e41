"""The manager's one HTTP client for its upstreams (Docker engines, the primary manager): connections, the
keep-alive :class:`Pool`, the HTTP/1.1 wire format, and the manager's own requests (:func:`request`,
:func:`fetch`, :func:`stream`). Relaying a client's request through it is :mod:`swarmha.manager.forward`.

Guarantees:

* Upstream connections are kept alive in a :class:`Pool` keyed by upstream address and reused only for plain
  request/response exchanges; a connection goes back to the pool only after a complete response that did not ask
  to close. A pooled connection that turns out closed (the upstream closed it while idle) is replaced by a fresh
  one and the request sent again, once, if its body is known.
* Failure modes, so callers can decide about retrying: :class:`UpstreamUnreachable` (the connection could not be
  opened; nothing was sent, any request may be retried); :class:`UpstreamBroken` (the upstream failed before its
  response head arrived; ``retryable`` is True when the request is idempotent and carried no body).

This is a small HTTP/1.1 client written for this (head parsing, Content-Length, chunked, until-close framing),
not h11 or httpx, by measurement: its peers are trusted (the primary manager, whose front parses with h11 and
llhttp, and the Docker engines), and it is on every forwarded request's path twice (replica → primary,
primary → engine).
With h11 here as well (commit f6347b8) the added p50 per hop on ``/containers/json`` went from a median
0.67-0.71 ms to 0.82-0.93 ms over six interleaved runs of ``python -m benchmarks.manager`` on 2 loaded cores,
and past the 1 ms goal in 3 of 6 runs (h11 server with this client: 1 of 6, a round where both were over).
Requests from untrusted clients are parsed by h11 or llhttp (:mod:`swarmha.manager.http`); what this client
sends is framed anew from that parse (framing headers are never copied from the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import attrs

from swarmha.manager.http import READ_SIZE, header_value
from swarmha.manager.http.tls import open_connection as open_tls

__all__ = [
    "BROKEN",
    "CLOSED",
    "HIJACK_GRACE",
    "HOP",
    "IDEMPOTENT",
    "NOT_COPIED",
    "RESPONSE_LIMIT",
    "SMALL",
    "Head",
    "Link",
    "Pool",
    "Response",
    "Stale",
    "Streamed",
    "Upstream",
    "UpstreamBroken",
    "UpstreamUnreachable",
    "connect",
    "connection_named",
    "fetch",
    "framing",
    "keeps_alive",
    "read_body",
    "read_head",
    "request",
    "request_head",
    "stream",
]

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"})
FRAMING = frozenset({b"content-length", b"transfer-encoding"})
NOT_COPIED = HOP | FRAMING  # request headers the forwarder does not copy (it frames the request anew)


def connection_named(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The header names (lowercased) that a ``Connection`` header lists: hop-by-hop too (RFC 9110 §7.6.1), so
    never forwarded. Empty for the common message without one (one pass over the names)."""
    named: frozenset[bytes] = frozenset()
    for n, v in headers:
        if len(n) == 10 and n.lower() == b"connection":
            named |= {t.strip().lower() for t in v.split(b",") if t.strip()}
    return named


#: After the upstream ended a hijacked stream, how long the client may still send before we close.
HIJACK_GRACE = 2.0
#: Responses up to this size with a Content-Length are read whole and written to the client in one piece;
#: request bodies up to this size are read before forwarding (so the request can use a pooled connection).
SMALL = 256 * 1024
#: Largest upstream response head accepted.
MAX_HEAD = 64 * 1024
#: Largest whole response :func:`request` reads unless told otherwise.
RESPONSE_LIMIT = 64 << 20


@attrs.frozen(cache_hash=True)
class Upstream:
    """Where to forward: host, port, and the TLS context to use (None: plain TCP)."""

    host: str
    port: int
    ssl: ssl.SSLContext | None = attrs.field(default=None, eq=False)
    #: The ``Host`` header value sent with every request (made once, not per request).
    host_header: bytes = attrs.field(
        init=False, eq=False, repr=False, default=attrs.Factory(lambda u: b"%s:%d" % (u.host.encode(), u.port), True)
    )

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class UpstreamUnreachable(Exception):
    """The upstream connection could not be opened; nothing was sent."""


class UpstreamBroken(Exception):
    """The upstream failed before answering; ``retryable`` says whether resending is safe."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class Stale(Exception):
    """A reused connection was closed by the upstream before it answered anything."""


class Link:
    """One upstream connection."""

    __slots__ = ("expired", "idle_since", "loop", "reader", "reused", "up", "writer")

    def __init__(self, up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.up = up
        self.reader = reader
        self.writer = writer
        self.reused = False
        self.idle_since = 0.0
        self.loop = asyncio.get_running_loop()
        #: :meth:`expire` ran: the connection was aborted because an exchange on it took too long.
        self.expired = False

    def expire(self) -> None:
        """Abort the connection (a pending read on it ends at once): the exchange on it timed out."""
        self.expired = True
        self.writer.transport.abort()

    def usable(self, now: float, idle_timeout: float) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof() and now - self.idle_since < idle_timeout

    def close(self) -> None:
        self.writer.close()


async def connect(up: Upstream, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a connection to ``up``; raises :class:`UpstreamUnreachable`."""
    try:
        if up.ssl is not None:  # with half-close, so a client's stdin EOF reaches the engine (see HalfCloseTLS)
            return await asyncio.wait_for(open_tls(up.host, up.port, up.ssl, limit=READ_SIZE), timeout)
        return await asyncio.wait_for(asyncio.open_connection(up.host, up.port, limit=READ_SIZE), timeout)
    except (OSError, TimeoutError, ssl.SSLError) as e:
        raise UpstreamUnreachable(f"cannot connect to {up}: {e or type(e).__name__}") from e


class Pool:
    """Idle keep-alive connections per upstream (at most ``per_upstream`` each, closed after ``idle_timeout``).

    asyncio keeps reading every connection, so an upstream's FIN on an idle connection is seen before reuse
    (``at_eof``); such connections are dropped on acquire.
    """

    def __init__(self, per_upstream: int = 32, idle_timeout: float = 30.0) -> None:
        self.per_upstream = per_upstream
        self.idle_timeout = idle_timeout
        self._idle: dict[Upstream, list[Link]] = {}

    async def acquire(self, up: Upstream, timeout: float, fresh: bool = False) -> Link:
        link = None if fresh else self.take(up)
        if link is None:
            reader, writer = await connect(up, timeout)
            link = Link(up, reader, writer)
        return link

    def take(self, up: Upstream) -> Link | None:
        """An idle connection to ``up`` that is still usable, or None."""
        links = self._idle.get(up)
        if not links:
            return None
        now = time.monotonic()
        while links:
            link = links.pop()
            if link.usable(now, self.idle_timeout):
                link.reused = True
                return link
            link.close()
        return None

    def release(self, link: Link) -> None:
        links = self._idle.setdefault(link.up, [])
        if len(links) >= self.per_upstream or link.writer.is_closing():
            link.close()
            return
        link.idle_since = time.monotonic()
        links.append(link)

    def keep_only(self, up: Upstream | None) -> None:
        """Close the idle connections to every upstream but ``up`` (the primary changed: drop the old one's)."""
        for other in [u for u in self._idle if u != up]:
            for link in self._idle.pop(other):
                link.close()

    def close(self) -> None:
        self.keep_only(None)


# -- the upstream side of an exchange: request out, response head and body in -------------------------------------


@attrs.define
class Head:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    version: bytes
    #: The first Transfer-Encoding, Content-Length and Connection values (None: no such header).
    te: bytes | None = None
    length: bytes | None = None
    connection: bytes | None = None


def request_head(method: str, target: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode("latin-1")]
    lines += [n + b": " + v for n, v in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _parse_head(raw: bytes) -> Head:
    lines = raw[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ValueError(f"bad status line {lines[0][:80]!r}")
    head = Head(int(code), reason, [], version)
    headers = head.headers
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise ValueError(f"bad header line {line[:80]!r}")
        value = value.strip()
        headers.append((name, value))
        key = name.lower()
        if key == b"content-length":
            if head.length is None:
                head.length = value
        elif key == b"transfer-encoding":
            if head.te is None:
                head.te = value
        elif key == b"connection" and head.connection is None:
            head.connection = value
    return head


async def read_head(reader: asyncio.StreamReader) -> Head:
    while True:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as e:
            raise ValueError(f"response head larger than {MAX_HEAD} bytes") from e
        head = _parse_head(raw)
        if 100 <= head.status < 200 and head.status != 101:
            continue  # 100 Continue and friends: the real answer follows
        return head


def framing(head: Head, method: str) -> tuple[str, int]:
    """("none"|"length"|"chunked"|"close", length) for the response body."""
    if method == "HEAD" or head.status in (204, 304) or 100 <= head.status < 200:
        return "none", 0
    te = head.te
    if te is not None and b"chunked" in te.lower():
        return "chunked", 0
    length = head.length
    if length is not None:
        if not length.isdigit():
            raise ValueError(f"bad Content-Length {length[:40]!r}")
        return "length", int(length)
    return "close", 0


def keeps_alive(head: Head, kind: str) -> bool:
    conn = (head.connection or b"").lower()
    if kind == "close" or b"close" in conn:
        return False
    return head.version == b"HTTP/1.1" or b"keep-alive" in conn


async def read_body(reader: asyncio.StreamReader, kind: str, length: int) -> AsyncIterator[bytes]:
    """The response body as it arrives (chunked decoded), in pieces of at most READ_SIZE bytes."""
    if kind == "length":
        left = length
        while left:
            data = await reader.read(min(left, READ_SIZE))
            if not data:
                raise ConnectionError(f"connection closed with {left} body bytes missing")
            left -= len(data)
            yield data
    elif kind == "chunked":
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, dropped
                    pass
                return
            while size:  # a chunk may be the whole answer (dockerd writes a list in one): in pieces
                data = await reader.read(min(size, READ_SIZE))
                if not data:
                    raise ConnectionError(f"connection closed with {size} chunk bytes missing")
                size -= len(data)
                yield data
            await reader.readexactly(2)
    elif kind == "close":
        while data := await reader.read(READ_SIZE):
            yield data


#: What an upstream connection's failure raises. RuntimeError: uvloop's ``write()`` on a transport whose peer
#: closed it raises ``RuntimeError("unable to perform operation on <TCPTransport closed=True ...>")`` (asyncio's own
#: loop drops the data and logs instead); nothing of that write was sent. Seen as a 500 "internal error" from a
#: replica whose pooled connection to a primary SIGKILLed a moment before (tests/test_manager_failover.py).
CLOSED = (ConnectionError, RuntimeError)
BROKEN = (OSError, ssl.SSLError, ValueError, RuntimeError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)


@attrs.frozen
class Response:
    """A whole upstream response (from :func:`request` or :func:`fetch`)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str, default: str = "") -> str:
        """The first value of header ``name`` (case-insensitive), as text."""
        return header_value(self.headers, name, default)

    def json(self) -> Any:
        """The body parsed as JSON (ValueError when it is not)."""
        return json.loads(self.body)


def _client_request(
    method: str, target: str, up: Upstream, body: bytes | None, headers: Iterable[tuple[bytes, bytes]]
) -> bytes:
    sent = [(b"host", up.host_header)]
    if headers:
        sent += [(n, v) for n, v in headers if n.lower() not in NOT_COPIED and n.lower() != b"host"]
    if body is not None and (body or method in ("POST", "PUT", "PATCH")):
        sent.append((b"content-length", b"%d" % len(body)))
    return request_head(method, target, sent) + (body or b"")


async def request(
    pool: Pool,
    up: Upstream,
    method: str,
    target: str,
    *,
    body: bytes | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
    timeout: float = 5.0,
    limit: int = RESPONSE_LIMIT,
    sink: Callable[[bytes], object] | None = None,
) -> Response:
    """One request to ``up`` over a pooled connection, the whole answer read (the manager's own calls).

    ``timeout`` bounds the whole exchange (the connection is aborted when it passes). Raises
    :class:`UpstreamUnreachable` (nothing sent), :class:`UpstreamBroken` (also on a timeout or a body over
    ``limit``). A pooled connection found closed before it answered anything is replaced once.

    With ``sink``, a 200 answer's body is not kept: each piece goes to ``sink`` as it arrives (a ValueError it
    raises ends the exchange as :class:`UpstreamBroken`), the Response's body is empty, no ``limit`` applies,
    and ``timeout`` bounds the wait for the head and then each wait for the next piece. Another status is read
    whole as without it.
    """
    data = _client_request(method, target, up, body, headers)
    for attempt in (0, 1):
        link = pool.take(up) if attempt == 0 else None
        if link is None:
            link = await pool.acquire(up, timeout, fresh=True)
        # the timeout aborts the connection (the pending read ends at once): a timer, not a cancellation scope
        timer = link.loop.call_later(timeout, link.expire)
        try:
            writer = link.writer
            try:
                writer.write(data)
                if writer.transport.get_write_buffer_size():
                    await writer.drain()
                head = await read_head(link.reader)
            except (OSError, RuntimeError, asyncio.IncompleteReadError):  # RuntimeError: see CLOSED
                if link.reused and attempt == 0 and not link.expired:
                    link.close()
                    continue
                raise
            kind, length = framing(head, method)
            content = b""
            if sink is not None and head.status == 200:  # streamed: the timer restarts with every piece
                async for piece in read_body(link.reader, kind, length):
                    sink(piece)
                    timer.cancel()
                    timer = link.loop.call_later(timeout, link.expire)
            elif kind in ("length", "none") and length <= limit:  # the common case: one read, no generator
                content = await link.reader.readexactly(length) if length else b""
            else:
                chunks, size = [], 0
                async for piece in read_body(link.reader, kind, length):
                    size += len(piece)
                    if size > limit:
                        raise ValueError(f"response larger than {limit} bytes")
                    chunks.append(piece)
                content = b"".join(chunks)
        except BROKEN as e:
            link.close()
            why = f"no answer within {timeout:g} s" if link.expired else str(e) or type(e).__name__
            raise UpstreamBroken(f"{up} failed: {why}", method in IDEMPOTENT and not body) from e
        except BaseException:
            link.close()
            raise
        finally:
            timer.cancel()
        if keeps_alive(head, kind):
            pool.release(link)
        else:
            link.close()
        return Response(head.status, head.headers, content)
    raise AssertionError("unreachable")


async def fetch(
    pool: Pool, up: Upstream, target: str, *, timeout: float = 5.0, limit: int = RESPONSE_LIMIT
) -> Response:
    """``GET target`` with :func:`request` (for aggregation)."""
    return await request(pool, up, "GET", target, timeout=timeout, limit=limit)


@attrs.define
class Streamed:
    """A response whose body is read as it arrives (from :func:`stream`)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    _reader: asyncio.StreamReader
    _kind: str
    _length: int

    def header(self, name: str, default: str = "") -> str:
        return header_value(self.headers, name, default)

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (chunked decoded); ConnectionError and friends when the upstream breaks."""
        return read_body(self._reader, self._kind, self._length)

    async def lines(self) -> AsyncIterator[bytes]:
        """The body split into lines (each without its line end; a last line without one is included)."""
        rest = b""
        async for chunk in self.chunks():
            rest += chunk
            *done, rest = rest.split(b"\n")
            for line in done:
                yield line.rstrip(b"\r")
        if rest:
            yield rest

    async def read(self, limit: int = 64 << 20) -> bytes:
        chunks, size = [], 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                raise ValueError(f"response larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


@contextlib.asynccontextmanager
async def stream(
    up: Upstream,
    method: str,
    target: str,
    *,
    body: bytes | AsyncIterator[bytes] | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
    connect_timeout: float = 5.0,
) -> AsyncIterator[Streamed]:
    """A request to ``up`` on a connection of its own whose response body is read as it arrives (``events``,
    pull progress, ``save``); the connection is closed on exit. ``body`` may be an async iterator (sent
    chunked). Raises :class:`UpstreamUnreachable`, :class:`UpstreamBroken` before the head; reading the body
    raises what the connection raises (OSError, ValueError, asyncio.IncompleteReadError)."""
    reader, writer = await connect(up, connect_timeout)
    try:
        try:
            if body is None or isinstance(body, bytes):
                writer.write(_client_request(method, target, up, body, headers))
            else:
                hs = [*headers, (b"transfer-encoding", b"chunked")]
                sent = [(b"host", str(up).encode())]
                skip = HOP | {b"host", b"content-length"}
                sent += [(n, v) for n, v in hs if n.lower() not in skip]
                writer.write(request_head(method, target, sent))
                async for chunk in body:
                    if chunk:
                        writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                        await writer.drain()
                writer.write(b"0\r\n\r\n")
            await writer.drain()
            head = await read_head(reader)
            kind, length = framing(head, method)
        except BROKEN as e:
            raise UpstreamBroken(f"{up} failed before answering: {e or type(e).__name__}", False) from e
        yield Streamed(head.status, head.headers, reader, kind, length)
    finally:
        writer.close()
