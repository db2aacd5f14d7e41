"""Forward one request to an upstream (the primary manager, or a Docker engine) over a fresh HTTP/1.1 connection.

Guarantees:

* One upstream connection per request: a keep-alive client connection is still routed request by request.
* Responses are streamed, never buffered: each chunk the upstream sends is written to the client at once
  (``logs -f``, ``events``, ``stats`` and ``wait`` work through any number of hops).
* A hijacked request (``Connection: Upgrade``, ``Upgrade: tcp``: attach, exec start) that the upstream
  switches with 101 is spliced both ways; end-of-input is propagated with a half-close (``shutdown(SHUT_WR)``)
  on plain TCP. TLS has no half-close: there the stream ends when either side closes.
* A client that goes away while a response streams makes the upstream connection close (no orphan streams).

Failure modes, so callers can decide about retrying:

* :class:`UpstreamUnreachable`: the connection could not be opened; nothing was sent, any request may be retried.
* :class:`UpstreamBroken`: the upstream failed before its response head arrived. ``retryable`` is True when the
  request is idempotent and carried no body (so sending it again is safe).
* Once the response head was sent to the client, an upstream failure closes the client connection
  (:class:`~swarmha.manager.http.ClientGone`): the client sees a truncated response, never a made-up one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable

import attrs
import h11

from swarmha.manager.http import READ_SIZE, ClientGone, Exchange

__all__ = ["IDEMPOTENT", "Upstream", "UpstreamBroken", "UpstreamUnreachable", "forward", "splice"]

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"})
#: After the upstream ended a hijacked stream, how long the client may still send before we close.
HIJACK_GRACE = 2.0
#: Responses up to this size with a Content-Length are pumped without watching for the client leaving.
SMALL = 256 * 1024


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


async def connect(up: Upstream, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a connection to ``up``; raises :class:`UpstreamUnreachable`."""
    try:
        return await asyncio.wait_for(asyncio.open_connection(up.host, up.port, ssl=up.ssl, limit=READ_SIZE), timeout)
    except (OSError, TimeoutError, ssl.SSLError) as e:
        raise UpstreamUnreachable(f"cannot connect to {up}: {e or type(e).__name__}") from e


def _request_headers(ex: Exchange, body: bytes | None, host: str) -> list[tuple[bytes, bytes]]:
    headers = [(n, v) for n, v in ex.headers if n.lower() not in _HOP]
    if body is not None:
        headers = [(n, v) for n, v in headers if n.lower() not in (b"content-length", b"transfer-encoding")]
        if body or ex.method in ("POST", "PUT", "PATCH"):
            headers.append((b"content-length", str(len(body)).encode()))
    if not any(n.lower() == b"host" for n, _ in headers):
        headers.append((b"host", host.encode()))
    if ex.upgrade:
        headers += [(b"connection", b"Upgrade"), (b"upgrade", ex.header("upgrade", "tcp").encode("latin-1"))]
    return headers


async def forward(
    ex: Exchange,
    up: Upstream,
    *,
    body: bytes | None = None,
    target: str | None = None,
    connect_timeout: float = 3.0,
    on_head: Callable[[int, list[tuple[bytes, bytes]]], None] | None = None,
) -> None:
    """Send ``ex``'s request to ``up`` and relay the answer (see the module docstring for the guarantees).

    ``body`` replaces the request body (already read by the caller); ``target`` replaces the request target.
    ``on_head`` sees the upstream's status and headers before they are relayed.
    """
    reader, writer = await connect(up, connect_timeout)
    try:
        await _relay(ex, up, reader, writer, body, target, on_head)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)


async def _relay(
    ex: Exchange,
    up: Upstream,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    body: bytes | None,
    target: str | None,
    on_head: Callable[[int, list[tuple[bytes, bytes]]], None] | None,
) -> None:
    conn = h11.Connection(h11.CLIENT)
    retryable = ex.method in IDEMPOTENT and body in (None, b"") and not ex.has_body
    try:
        request = h11.Request(method=ex.method, target=target or ex.target, headers=_request_headers(ex, body, str(up)))
        writer.write(conn.send(request))
        if body is not None:
            if body:
                writer.write(conn.send(h11.Data(data=body)))
        else:
            async for chunk in ex.body_chunks():
                writer.write(conn.send(h11.Data(data=chunk)))
                await writer.drain()
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(READ_SIZE))
                continue
            if isinstance(event, h11.InformationalResponse) and event.status_code != 101:
                continue
            break
    except ClientGone:
        raise
    except (OSError, ssl.SSLError, h11.ProtocolError) as e:
        raise UpstreamBroken(f"{up} failed before answering: {e or type(e).__name__}", retryable) from e
    if not isinstance(event, (h11.Response, h11.InformationalResponse)):
        raise UpstreamBroken(f"{up} answered with {event!r}", retryable)
    headers = [(n, v) for n, v in event.headers.raw_items() if n.lower() not in _HOP]
    if on_head is not None:
        on_head(event.status_code, headers)
    if isinstance(event, h11.InformationalResponse):  # 101: the upstream switched protocols
        upstream_early, _ = conn.trailing_data
        headers += [(b"connection", b"Upgrade"), (b"upgrade", ex.header("upgrade", "tcp").encode("latin-1"))]
        c_reader, c_writer, client_early = await ex.switch(headers, event.reason or b"UPGRADED")
        await splice(c_reader, c_writer, client_early, reader, writer, bytes(upstream_early))
        return
    await ex.start(event.status_code, headers, event.reason)
    length = next((int(v) for n, v in headers if n.lower() == b"content-length"), None)
    if length is not None and length <= SMALL:
        await _pump(ex, conn, reader, up)
        return
    pump = asyncio.ensure_future(_pump(ex, conn, reader, up))
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


async def _pump(ex: Exchange, conn: h11.Connection, reader: asyncio.StreamReader, up: Upstream) -> None:
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(READ_SIZE))
                continue
            if isinstance(event, h11.Data):
                await ex.send(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                await ex.end()
                return
            else:
                raise ClientGone(f"{up} ended the response early: {event!r}")
    except (OSError, ssl.SSLError, h11.ProtocolError) as e:
        raise ClientGone(f"{up} broke during the response: {e}") from e


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
