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
framing): it is on every forwarded request's path, and h11's generality cost more than the hop budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import h11

from swarmha.manager.http import READ_SIZE, ClientGone, Exchange

__all__ = [
    "IDEMPOTENT",
    "Pool",
    "Response",
    "Upstream",
    "UpstreamBroken",
    "UpstreamUnreachable",
    "fetch",
    "forward",
    "splice",
]

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"})
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
#: After the upstream ended a hijacked stream, how long the client may still send before we close.
HIJACK_GRACE = 2.0
#: Responses up to this size with a Content-Length are read whole and written to the client in one piece;
#: request bodies up to this size are read before forwarding (so the request can use a pooled connection).
SMALL = 256 * 1024
#: Largest upstream response head accepted.
MAX_HEAD = 64 * 1024


@attrs.frozen
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
    """One upstream connection and its h11 client state machine."""

    __slots__ = ("h11", "idle_since", "reader", "received", "reused", "up", "writer")

    def __init__(self, up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.up = up
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.reused = False
        self.received = False  # any byte of the current response yet
        self.idle_since = 0.0

    def usable(self, now: float, idle_timeout: float) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof() and now - self.idle_since < idle_timeout

    def send(self, event: Any) -> bytes:
        return self.h11.send(event) or b""

    async def event(self) -> Any:
        """The next h11 event of the response, reading as needed."""
        h = self.h11
        while True:
            event = h.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.reader.read(READ_SIZE)
            if data:
                self.received = True
            h.receive_data(data)

    def stale(self, e: BaseException) -> bool:
        """True when a reused connection broke before any response byte (closed while idle in the pool)."""
        return self.reused and not self.received and isinstance(e, (ConnectionError, h11.RemoteProtocolError))

    def reusable(self) -> bool:
        """After a complete response: ready the next cycle; False when the connection must close."""
        h = self.h11
        if h.our_state is h11.DONE and h.their_state is h11.DONE:
            h.start_next_cycle()
            return True
        return False

    def close(self) -> None:
        self.writer.close()


async def connect(up: Upstream, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a connection to ``up``; raises :class:`UpstreamUnreachable`."""
    try:
        return await asyncio.wait_for(asyncio.open_connection(up.host, up.port, ssl=up.ssl, limit=READ_SIZE), timeout)
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
        now = time.monotonic()
        links = self._idle.get(up)
        while links and not fresh:
            link = links.pop()
            if link.usable(now, self.idle_timeout):
                link.reused = True
                link.received = False
                return link
            link.close()
        reader, writer = await connect(up, timeout)
        return _Link(up, reader, writer)

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


# -- the upstream side of an exchange: request out, response head and body in (h11 frames both) --------------------


def _request(method: str, target: str, headers: list[tuple[bytes, bytes]]) -> h11.Request:
    return h11.Request(method=method.encode("ascii"), target=target.encode("latin-1"), headers=headers)


async def _read_head(link: _Link) -> h11.Response | h11.InformationalResponse:
    """The response head (a 101 included); other 1xx answers (100 Continue) are skipped."""
    while True:
        event = await link.event()
        if type(event) is h11.Response or (type(event) is h11.InformationalResponse and event.status_code == 101):
            return event
        if type(event) is not h11.InformationalResponse:
            raise ConnectionError(f"unexpected {event!r} instead of a response")


async def _body(link: _Link) -> AsyncIterator[bytes]:
    """The response body as it arrives (h11 decodes chunked and until-close bodies)."""
    while True:
        event = await link.event()
        if type(event) is h11.Data:
            yield event.data
        elif type(event) is h11.EndOfMessage:
            return
        else:
            raise ConnectionError(f"unexpected {event!r} inside a response body")


_BROKEN = (OSError, ssl.SSLError, ValueError, h11.ProtocolError)


def _request_headers(ex: Exchange, body: bytes | None, host: str) -> list[tuple[bytes, bytes]]:
    """The client's headers without hop-by-hop ones, framed anew for what is sent (h11 checks the rest)."""
    headers = [(n, v) for n, v in ex.headers if n.lower() not in _HOP and n.lower() not in _FRAMING]
    if body is not None:
        if body or ex.method in ("POST", "PUT", "PATCH"):
            headers.append((b"content-length", b"%d" % len(body)))
    elif ex.chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    elif ex.content_length:
        headers.append((b"content-length", b"%d" % ex.content_length))
    if not any(n.lower() == b"host" for n, _ in headers):
        headers.append((b"host", host.encode()))
    if ex.upgrade:
        headers += [(b"connection", b"Upgrade"), (b"upgrade", ex.header("upgrade", "tcp").encode("latin-1"))]
    return headers


async def _send_streamed_body(ex: Exchange, link: _Link) -> None:
    async for chunk in ex.body_chunks():
        link.writer.write(link.send(h11.Data(data=chunk)))
        await link.writer.drain()
    link.writer.write(link.send(h11.EndOfMessage()))


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
    link = await lender.acquire(up, connect_timeout, fresh=dedicated)
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
    writer, up = link.writer, link.up
    retryable = ex.method in IDEMPOTENT and body in (None, b"") and not ex.has_body
    try:
        head_bytes = link.send(_request(ex.method, target or ex.target, _request_headers(ex, body, str(up))))
        if body is None and ex.has_body:
            writer.write(head_bytes)
            await _send_streamed_body(ex, link)
        else:  # head, body and end in one write
            writer.write(head_bytes + (link.send(h11.Data(data=body)) if body else b"") + link.send(h11.EndOfMessage()))
        await writer.drain()
        head = await _read_head(link)
    except ClientGone:
        raise
    except h11.LocalProtocolError as e:  # the client's request cannot be sent as it is (h11 refused it)
        raise UpstreamBroken(f"cannot send this request to {up}: {e}", False) from e
    except _BROKEN as e:
        if link.stale(e):  # closed while idle in the pool: the upstream read nothing of this request
            raise _Stale() from e
        raise UpstreamBroken(f"{up} failed before answering: {e or type(e).__name__}", retryable) from e
    status, reason = head.status_code, head.reason
    headers = [(n, v) for n, v in head.headers.raw_items() if n.lower() not in _HOP]
    if on_head is not None:
        on_head(status, headers)
    if status == 101:  # the upstream switched protocols
        headers += [(b"connection", b"Upgrade"), (b"upgrade", ex.header("upgrade", "tcp").encode("latin-1"))]
        c_reader, c_writer, client_early = await ex.switch(headers, reason or b"UPGRADED")
        upstream_early, _closed = link.h11.trailing_data
        await splice(c_reader, c_writer, client_early, link.reader, writer, bytes(upstream_early))
        return False
    small = ex.method == "HEAD" or status in (204, 304)  # no body
    if not small:
        length = chunked = None
        for n, v in head.headers.raw_items():
            name = n.lower()
            if name == b"content-length":
                length = v
            elif name == b"transfer-encoding":
                chunked = v
        small = chunked is None and length is not None and int(length.split(b",", 1)[0]) <= SMALL
    if small:  # read whole (h11 checked its length), written in one piece
        try:
            data = b"".join([chunk async for chunk in _body(link)])
        except _BROKEN as e:
            raise UpstreamBroken(f"{up} broke during the response: {e or type(e).__name__}", retryable) from e
        await ex.complete(status, headers, data, reason)
        return link.reusable()
    await ex.start(status, headers, reason)
    pump = asyncio.ensure_future(_pump(ex, link))
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
    return link.reusable()


async def _pump(ex: Exchange, link: _Link) -> None:
    try:
        async for data in _body(link):
            await ex.send(data)
    except _BROKEN as e:
        raise ClientGone(f"{link.up} broke during the response: {e or type(e).__name__}") from e
    await ex.end()


@attrs.frozen
class Response:
    """A whole upstream response (from :func:`fetch`)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


async def fetch(pool: Pool, up: Upstream, target: str, *, timeout: float = 5.0, limit: int = 64 << 20) -> Response:
    """GET ``target`` from ``up`` over a pooled connection and read the whole answer (for aggregation).

    Raises :class:`UpstreamUnreachable`, :class:`UpstreamBroken` (also on a timeout or a body over ``limit``).
    """
    request = _request("GET", target, [(b"host", str(up).encode())])
    for attempt in (0, 1):
        link = await pool.acquire(up, timeout, fresh=attempt == 1)
        try:
            async with asyncio.timeout(timeout):
                try:
                    link.writer.write(link.send(request) + link.send(h11.EndOfMessage()))
                    await link.writer.drain()
                    head = await _read_head(link)
                except _BROKEN as e:
                    if attempt == 0 and link.stale(e):
                        link.close()
                        continue
                    raise
                chunks, size = [], 0
                async for data in _body(link):
                    size += len(data)
                    if size > limit:
                        raise ValueError(f"response larger than {limit} bytes")
                    chunks.append(data)
        except (*_BROKEN, TimeoutError) as e:
            link.close()
            raise UpstreamBroken(f"{up} failed: {e or type(e).__name__}", True) from e
        except BaseException:
            link.close()
            raise
        if link.reusable():
            pool.release(link)
        else:
            link.close()
        return Response(head.status_code, head.headers.raw_items(), b"".join(chunks))
    raise AssertionError("unreachable")


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
