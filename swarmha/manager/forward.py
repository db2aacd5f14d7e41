"""Forward one request to an upstream (the primary manager, or a Docker engine) and relay the answer.

Guarantees:

* The caller picks the upstream per request, so a keep-alive client connection is still routed request by
  request. Upstream connections are kept alive in a :class:`Pool` keyed by upstream address and reused only for
  plain request/response exchanges; a hijacked request (``Upgrade``) or a request whose body is streamed gets a
  dedicated connection, and a connection goes back to the pool only after a complete response that did not ask
  to close.
* Responses are streamed, never buffered: each chunk the upstream sends is written to the client at once
  (``logs -f``, ``events``, ``stats`` and ``wait`` work through any number of hops). Only a response with a
  ``Content-Length`` up to :data:`SMALL` bytes is read whole and written in one piece.
* A hijacked request (``Connection: Upgrade``, ``Upgrade: tcp``: attach, exec start) that the upstream
  switches with 101 is spliced both ways; end-of-input is propagated with a half-close (``shutdown(SHUT_WR)``)
  on plain TCP. TLS has no half-close: there the stream ends when either side closes.
* A client that goes away while a response streams makes the upstream connection close (no orphan streams).

Failure modes, so callers can decide about retrying:

* :class:`UpstreamUnreachable`: the connection could not be opened; nothing was sent, any request may be retried.
* A pooled connection that turns out closed (the upstream closed it while idle: it reads no request from an idle
  connection it closes) is replaced by a fresh one and the request sent again, once, if its body is known.
* :class:`UpstreamBroken`: the upstream failed before its response head arrived. ``retryable`` is True when the
  request is idempotent and carried no body (so sending it again is safe).
* Once the response head was sent to the client, an upstream failure closes the client connection
  (:class:`~swarmha.manager.http.ClientGone`): the client sees a truncated response, never a made-up one.

The upstream side is a small HTTP/1.1 client written for this (head parsing, Content-Length, chunked, until-close
framing), not h11, by measurement: its peers are trusted (the primary manager, whose front parses with h11 and
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

from swarmha.manager.http import READ_SIZE, ClientGone, Exchange
from swarmha.manager.tls import open_connection as open_tls

__all__ = [
    "IDEMPOTENT",
    "Pool",
    "Response",
    "Streamed",
    "Upstream",
    "UpstreamBroken",
    "UpstreamUnreachable",
    "fetch",
    "forward",
    "request",
    "splice",
    "stream",
]

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"})
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_NOT_COPIED = _HOP | _FRAMING  # request headers the forwarder does not copy (it frames the request anew)
#: After the upstream ended a hijacked stream, how long the client may still send before we close.
HIJACK_GRACE = 2.0
#: Responses up to this size with a Content-Length are read whole and written to the client in one piece;
#: request bodies up to this size are read before forwarding (so the request can use a pooled connection).
SMALL = 256 * 1024
#: Largest upstream response head accepted.
MAX_HEAD = 64 * 1024


@attrs.frozen(cache_hash=True)
class Upstream:
    """Where to forward: host, port, and the TLS context to use (None: plain TCP)."""

    host: str
    port: int
    ssl: ssl.SSLContext | None = attrs.field(default=None, eq=False)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class UpstreamUnreachable(Exception):
    """The upstream connection could not be opened; nothing was sent."""


class UpstreamBroken(Exception):
    """The upstream failed before answering; ``retryable`` says whether resending is safe."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class _Stale(Exception):
    """A reused connection was closed by the upstream before it answered anything."""


class _Link:
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
        self._idle: dict[Upstream, list[_Link]] = {}

    async def acquire(self, up: Upstream, timeout: float, fresh: bool = False) -> _Link:
        link = None if fresh else self.take(up)
        if link is None:
            reader, writer = await connect(up, timeout)
            link = _Link(up, reader, writer)
        return link

    def take(self, up: Upstream) -> _Link | None:
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

    def release(self, link: _Link) -> None:
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
class _Head:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    version: bytes
    #: The first Transfer-Encoding, Content-Length and Connection values (None: no such header).
    te: bytes | None = None
    length: bytes | None = None
    connection: bytes | None = None


def _request_head(method: str, target: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode("latin-1")]
    lines += [n + b": " + v for n, v in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _parse_head(raw: bytes) -> _Head:
    lines = raw[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ValueError(f"bad status line {lines[0][:80]!r}")
    head = _Head(int(code), reason, [], version)
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


async def _read_head(reader: asyncio.StreamReader) -> _Head:
    while True:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as e:
            raise ValueError(f"response head larger than {MAX_HEAD} bytes") from e
        head = _parse_head(raw)
        if 100 <= head.status < 200 and head.status != 101:
            continue  # 100 Continue and friends: the real answer follows
        return head


def _framing(head: _Head, method: str) -> tuple[str, int]:
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


def _keeps_alive(head: _Head, kind: str) -> bool:
    conn = (head.connection or b"").lower()
    if kind == "close" or b"close" in conn:
        return False
    return head.version == b"HTTP/1.1" or b"keep-alive" in conn


async def _body(reader: asyncio.StreamReader, kind: str, length: int) -> AsyncIterator[bytes]:
    """The response body as it arrives (chunked decoded)."""
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
            yield await reader.readexactly(size)
            await reader.readexactly(2)
    elif kind == "close":
        while data := await reader.read(READ_SIZE):
            yield data


_BROKEN = (OSError, ssl.SSLError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)


def _request_headers(ex: Exchange, body: bytes | None, host: str) -> list[tuple[bytes, bytes]]:
    """The client's headers without hop-by-hop ones, framed anew for what is sent."""
    headers = []
    has_host = False
    for n, v in ex.headers:
        key = n.lower()
        if key not in _NOT_COPIED:
            headers.append((n, v))
            has_host = has_host or key == b"host"
    if body is not None:
        if body or ex.method in ("POST", "PUT", "PATCH"):
            headers.append((b"content-length", b"%d" % len(body)))
    elif ex.chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    elif ex.content_length:
        headers.append((b"content-length", b"%d" % ex.content_length))
    if not has_host:
        headers.append((b"host", host.encode()))
    if ex.upgrade:
        headers += [(b"connection", b"Upgrade"), (b"upgrade", ex.header("upgrade", "tcp").encode("latin-1"))]
    return headers


async def _send_streamed_body(ex: Exchange, writer: asyncio.StreamWriter, chunked: bool) -> None:
    async for chunk in ex.body_chunks():
        if chunk:
            writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            await writer.drain()
    if chunked:
        writer.write(b"0\r\n\r\n")


async def forward(
    ex: Exchange,
    up: Upstream,
    *,
    pool: Pool | None = None,
    body: bytes | None = None,
    target: str | None = None,
    connect_timeout: float = 3.0,
    on_head: Callable[[int, list[tuple[bytes, bytes]]], None] | None = None,
) -> None:
    """Send ``ex``'s request to ``up`` and relay the answer (see the module docstring for the guarantees).

    ``pool`` lends a kept-alive connection (None: a fresh connection, closed afterwards). ``body`` replaces the
    request body (already read by the caller); ``target`` replaces the request target. ``on_head`` sees the
    upstream's status and headers before they are relayed.
    """
    if body is None and not ex.upgrade and not ex.chunked and 0 < ex.content_length <= SMALL:
        body = await ex.body()  # small and known: forward it as bytes, so a pooled connection can carry it
    dedicated = pool is None or ex.upgrade or (body is None and ex.has_body)
    lender = pool if pool is not None else Pool(per_upstream=0)
    link = None if dedicated else lender.take(up)
    if link is None:
        link = await lender.acquire(up, connect_timeout, fresh=True)
    try:
        try:
            keep = await _relay(ex, link, body, target, on_head)
        except _Stale:
            link.close()
            link = await lender.acquire(up, connect_timeout, fresh=True)
            keep = await _relay(ex, link, body, target, on_head)
    except BaseException:
        link.close()
        raise
    if keep and not dedicated:
        lender.release(link)
    else:
        link.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(link.writer.wait_closed(), 1.0)


async def _relay(
    ex: Exchange,
    link: _Link,
    body: bytes | None,
    target: str | None,
    on_head: Callable[[int, list[tuple[bytes, bytes]]], None] | None,
) -> bool:
    """One exchange on ``link``; True when the connection may be reused."""
    reader, writer, up = link.reader, link.writer, link.up
    retryable = ex.method in IDEMPOTENT and body in (None, b"") and not ex.has_body
    headers = _request_headers(ex, body, str(up))
    try:
        head_bytes = _request_head(ex.method, target or ex.target, headers)
        sending: asyncio.Task[None] | None = None
        if body is not None:
            writer.write(head_bytes + body)
        else:
            writer.write(head_bytes)
            if ex.has_body:  # sent while the answer is awaited: an upstream may answer (413) before the body ends
                sending = asyncio.ensure_future(_send_streamed_body(ex, writer, ex.chunked))
        if sending is None and (writer.transport.get_write_buffer_size() or writer.transport.is_closing()):
            await writer.drain()
        try:
            head = await _read_head(reader)
        except BaseException:
            if sending is not None:
                sending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sending
            raise
        if sending is not None:
            if not sending.done() and head.status >= 400:
                sending.cancel()  # refused before the whole body was sent (413): the rest is not read
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sending
                ex.abandon_body()
            else:
                await sending  # an early success: the body is sent whole first, as before
    except ClientGone:
        raise
    except _BROKEN as e:
        nothing = isinstance(e, ConnectionError) or (isinstance(e, asyncio.IncompleteReadError) and not e.partial)
        if link.reused and nothing:  # closed while idle in the pool: the upstream read nothing of this request
            raise _Stale() from e
        raise UpstreamBroken(f"{up} failed before answering: {e or type(e).__name__}", retryable) from e
    headers = [(n, v) for n, v in head.headers if n.lower() not in _HOP]
    if on_head is not None:
        on_head(head.status, headers)
    if head.status == 101:  # the upstream switched protocols
        headers += [(b"connection", b"Upgrade"), (b"upgrade", ex.header("upgrade", "tcp").encode("latin-1"))]
        c_reader, c_writer, client_early = await ex.switch(headers, head.reason or b"UPGRADED")
        await splice(c_reader, c_writer, client_early, reader, writer, b"")
        return False
    try:
        kind, length = _framing(head, ex.method)
    except ValueError as e:
        raise UpstreamBroken(f"{up} answered badly: {e}", retryable) from e
    keep = _keeps_alive(head, kind)
    if kind in ("none", "length") and length <= SMALL:
        try:
            data = await reader.readexactly(length) if length else b""
        except _BROKEN as e:
            raise UpstreamBroken(f"{up} broke during the response: {e or type(e).__name__}", retryable) from e
        await ex.complete(head.status, headers, data, head.reason)
        return keep
    await ex.start(head.status, headers, head.reason)
    pump = asyncio.ensure_future(_pump(ex, reader, kind, length, up))
    gone = asyncio.ensure_future(ex.client_closed())
    try:
        await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pump, gone):
            if not task.done():
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone
    if not pump.done():
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump
        raise ClientGone("client closed the connection during a streamed response")
    pump.result()
    return keep


async def _pump(ex: Exchange, reader: asyncio.StreamReader, kind: str, length: int, up: Upstream) -> None:
    try:
        async for data in _body(reader, kind, length):
            await ex.send(data)
    except _BROKEN as e:
        raise ClientGone(f"{up} broke during the response: {e or type(e).__name__}") from e
    await ex.end()


@attrs.frozen
class Response:
    """A whole upstream response (from :func:`request` or :func:`fetch`)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str, default: str = "") -> str:
        """The first value of header ``name`` (case-insensitive), as text."""
        key = name.lower().encode("ascii")
        for n, v in self.headers:
            if n.lower() == key:
                return v.decode("latin-1")
        return default

    def json(self) -> Any:
        """The body parsed as JSON (ValueError when it is not)."""
        return json.loads(self.body)


def _client_request(
    method: str, target: str, up: Upstream, body: bytes | None, headers: Iterable[tuple[bytes, bytes]]
) -> bytes:
    sent = [(b"host", b"%s:%d" % (up.host.encode(), up.port))]
    if headers:
        sent += [(n, v) for n, v in headers if n.lower() not in _NOT_COPIED and n.lower() != b"host"]
    if body is not None and (body or method in ("POST", "PUT", "PATCH")):
        sent.append((b"content-length", b"%d" % len(body)))
    return _request_head(method, target, sent) + (body or b"")


async def request(
    pool: Pool,
    up: Upstream,
    method: str,
    target: str,
    *,
    body: bytes | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
    timeout: float = 5.0,
    limit: int = 64 << 20,
) -> Response:
    """One request to ``up`` over a pooled connection, the whole answer read (the manager's own calls).

    ``timeout`` bounds the whole exchange (the connection is aborted when it passes). Raises
    :class:`UpstreamUnreachable` (nothing sent), :class:`UpstreamBroken` (also on a timeout or a body over
    ``limit``). A pooled connection found closed before it answered anything is replaced once.
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
            writer.write(data)
            if writer.transport.get_write_buffer_size():
                await writer.drain()
            try:
                head = await _read_head(link.reader)
            except (OSError, asyncio.IncompleteReadError):
                if link.reused and attempt == 0 and not link.expired:
                    link.close()
                    continue
                raise
            kind, length = _framing(head, method)
            if kind in ("length", "none") and length <= limit:  # the common case: one read, no generator
                content = await link.reader.readexactly(length) if length else b""
            else:
                chunks, size = [], 0
                async for piece in _body(link.reader, kind, length):
                    size += len(piece)
                    if size > limit:
                        raise ValueError(f"response larger than {limit} bytes")
                    chunks.append(piece)
                content = b"".join(chunks)
        except _BROKEN as e:
            link.close()
            why = f"no answer within {timeout:g} s" if link.expired else str(e) or type(e).__name__
            raise UpstreamBroken(f"{up} failed: {why}", method in IDEMPOTENT and not body) from e
        except BaseException:
            link.close()
            raise
        finally:
            timer.cancel()
        if _keeps_alive(head, kind):
            pool.release(link)
        else:
            link.close()
        return Response(head.status, head.headers, content)
    raise AssertionError("unreachable")


async def fetch(pool: Pool, up: Upstream, target: str, *, timeout: float = 5.0, limit: int = 64 << 20) -> Response:
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
        return Response(self.status, self.headers, b"").header(name, default)

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (chunked decoded); ConnectionError and friends when the upstream breaks."""
        return _body(self._reader, self._kind, self._length)

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
                skip = _HOP | {b"host", b"content-length"}
                sent += [(n, v) for n, v in hs if n.lower() not in skip]
                writer.write(_request_head(method, target, sent))
                async for chunk in body:
                    if chunk:
                        writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                        await writer.drain()
                writer.write(b"0\r\n\r\n")
            await writer.drain()
            head = await _read_head(reader)
            kind, length = _framing(head, method)
        except _BROKEN as e:
            raise UpstreamBroken(f"{up} failed before answering: {e or type(e).__name__}", False) from e
        yield Streamed(head.status, head.headers, reader, kind, length)
    finally:
        writer.close()


async def _pipe(src: asyncio.StreamReader, early: bytes, dst: asyncio.StreamWriter) -> None:
    if early:
        dst.write(early)
        await dst.drain()
    while True:
        data = await src.read(READ_SIZE)
        if not data:
            break
        dst.write(data)
        await dst.drain()
    if dst.can_write_eof():
        with contextlib.suppress(OSError, RuntimeError):
            dst.write_eof()


async def splice(
    c_reader: asyncio.StreamReader,
    c_writer: asyncio.StreamWriter,
    client_early: bytes,
    u_reader: asyncio.StreamReader,
    u_writer: asyncio.StreamWriter,
    upstream_early: bytes,
) -> None:
    """Copy bytes both ways until the upstream's side ends (then give the client :data:`HIJACK_GRACE`)."""
    up = asyncio.ensure_future(_pipe(c_reader, client_early, u_writer))
    down = asyncio.ensure_future(_pipe(u_reader, upstream_early, c_writer))
    try:
        pending: set[asyncio.Future[None]] = {up, down}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(t.exception() is not None for t in done if not t.cancelled()):
                break  # a reset on either side ends the whole session
            if down in done and up in pending:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(up), HIJACK_GRACE)
                break
    finally:
        for task in (up, down):
            task.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
