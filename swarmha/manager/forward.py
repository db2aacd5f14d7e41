"""Forward one client request to an upstream (the primary manager, or a Docker engine) and relay the answer.

Built on the manager's one HTTP client (:mod:`swarmha.manager.upstream`: connections, pool, wire format).

Guarantees:

* The caller picks the upstream per request, so a keep-alive client connection is still routed request by
  request. A hijacked request (``Upgrade``) or a request whose body is streamed gets a dedicated upstream
  connection; plain exchanges use the pool.
* Responses are streamed, never buffered: each chunk the upstream sends is written to the client at once
  (``logs -f``, ``events``, ``stats`` and ``wait`` work through any number of hops). Only a response with a
  ``Content-Length`` up to :data:`~swarmha.manager.upstream.SMALL` bytes is read whole and written in one piece.
* A hijacked request (``Connection: Upgrade``, ``Upgrade: tcp``: attach, exec start) that the upstream
  switches with 101 is spliced both ways (:func:`splice`); end-of-input is propagated with a half-close
  (``shutdown(SHUT_WR)``) on plain TCP. TLS has no half-close: there the stream ends when either side closes.
* A client that goes away while a response streams makes the upstream connection close (no orphan streams);
  so does a request body that fails while it is streamed upstream (the client leaves, bad chunk framing, the
  body timeout): the upstream connection closes at once and the client gets the front's 400/408 or the close.
* Hop-by-hop headers are not forwarded either way, those a ``Connection`` header names included.

Failure modes: those of :mod:`swarmha.manager.upstream` (:class:`UpstreamUnreachable`, :class:`UpstreamBroken`)
before the response head; once the head was sent to the client, an upstream failure closes the client connection
(:class:`~swarmha.manager.http.ClientGone`): the client sees a truncated response, never a made-up one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from swarmha.manager.http import READ_SIZE, BadRequest, ClientGone, Exchange
from swarmha.manager.upstream import (
    BROKEN,
    CLOSED,
    HIJACK_GRACE,
    HOP,
    IDEMPOTENT,
    NOT_COPIED,
    SMALL,
    Head,
    Link,
    Pool,
    Stale,
    Upstream,
    UpstreamBroken,
    connection_named,
    framing,
    keeps_alive,
    read_body,
    read_head,
    request_head,
)

__all__ = ["forward", "pump_while_connected", "splice"]


def _request_headers(ex: Exchange, body: bytes | None, host: bytes) -> list[tuple[bytes, bytes]]:
    """The client's headers without hop-by-hop ones, framed anew for what is sent."""
    headers = []
    has_host = False
    named = connection_named(ex.headers)
    for n, v in ex.headers:
        key = n.lower()
        if key not in NOT_COPIED and key not in named:
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
        headers.append((b"host", host))
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


async def _head_unless_body_fails(reader: asyncio.StreamReader, sending: asyncio.Task[None]) -> Head:
    """The upstream's response head, read while ``sending`` streams the client's body to it; the client's error
    (:class:`ClientGone`, :class:`BadRequest`: it left, bad chunk framing, the body timeout) as soon as the body
    fails, so the caller closes the upstream connection at once instead of waiting for a head that cannot come.
    A failure to write to the upstream is left for the head read to tell (it may have answered first: 413)."""
    reading = asyncio.ensure_future(read_head(reader))
    try:
        await asyncio.wait({reading, sending}, return_when=asyncio.FIRST_COMPLETED)
        if not reading.done() and not sending.cancelled():
            error = sending.exception()
            if isinstance(error, ClientGone | BadRequest):
                raise error
        return await reading
    finally:
        if not reading.done():
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading


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
        except Stale:
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
    link: Link,
    body: bytes | None,
    target: str | None,
    on_head: Callable[[int, list[tuple[bytes, bytes]]], None] | None,
) -> bool:
    """One exchange on ``link``; True when the connection may be reused."""
    reader, writer, up = link.reader, link.writer, link.up
    retryable = ex.method in IDEMPOTENT and body in (None, b"") and not ex.has_body
    headers = _request_headers(ex, body, up.host_header)
    try:
        head_bytes = request_head(ex.method, target or ex.target, headers)
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
            head = await read_head(reader) if sending is None else await _head_unless_body_fails(reader, sending)
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
    except BROKEN as e:
        nothing = isinstance(e, CLOSED) or (isinstance(e, asyncio.IncompleteReadError) and not e.partial)
        if link.reused and nothing:  # closed while idle in the pool: the upstream read nothing of this request
            raise Stale() from e
        raise UpstreamBroken(f"{up} failed before answering: {e or type(e).__name__}", retryable) from e
    named = connection_named(head.headers)
    headers = [(n, v) for n, v in head.headers if n.lower() not in HOP and n.lower() not in named]
    if on_head is not None:
        on_head(head.status, headers)
    if head.status == 101:  # the upstream switched protocols
        headers += [(b"connection", b"Upgrade"), (b"upgrade", ex.header("upgrade", "tcp").encode("latin-1"))]
        c_reader, c_writer, client_early = await ex.switch(headers, head.reason or b"UPGRADED")
        await splice(c_reader, c_writer, client_early, reader, writer, b"")
        return False
    try:
        kind, length = framing(head, ex.method)
    except ValueError as e:
        raise UpstreamBroken(f"{up} answered badly: {e}", retryable) from e
    keep = keeps_alive(head, kind)
    if kind in ("none", "length") and length <= SMALL:
        try:
            data = await reader.readexactly(length) if length else b""
        except BROKEN as e:
            raise UpstreamBroken(f"{up} broke during the response: {e or type(e).__name__}", retryable) from e
        await ex.complete(head.status, headers, data, head.reason)
        return keep
    await ex.start(head.status, headers, head.reason)
    await pump_while_connected(ex, _pump(ex, reader, kind, length, up))
    return keep


async def pump_while_connected(ex: Exchange, pump: Coroutine[Any, Any, None]) -> None:
    """Run ``pump`` (which sends a streamed response's body to ``ex``) until it ends or the client leaves.

    Raises what ``pump`` raised, or :class:`ClientGone` when the client closed its connection first (``pump`` is
    then cancelled and awaited, so nothing of it outlives the call)."""
    task = asyncio.ensure_future(pump)
    gone = asyncio.ensure_future(ex.client_closed())
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, gone):
            if not t.done():
                t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone
    if not task.done():
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise ClientGone("client closed the connection during a streamed response")
    task.result()


async def _pump(ex: Exchange, reader: asyncio.StreamReader, kind: str, length: int, up: Upstream) -> None:
    try:
        async for data in read_body(reader, kind, length):
            await ex.send(data)
    except BROKEN as e:
        raise ClientGone(f"{up} broke during the response: {e or type(e).__name__}") from e
    await ex.end()


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
