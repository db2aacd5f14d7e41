"""The listening side: accept connections, serve their exchanges one by one, close and drain.

Quick answers. A server given ``quick`` (and reading heads with llhttp: :class:`~.parsers.LlhttpConn`, plain
TCP) lets the application answer some requests straight from the protocol's ``data_received``, without an
exchange, a task switch or a coroutine: when bytes arrive on a connection that is waiting for its next request
with nothing received and not parsed (:class:`~._wire.QuickGate`), nothing is waiting to be sent on it, and
the bytes are exactly one whole request head of the common kind (:func:`~.parsers.quick_head`: what the
ordinary path would read the same way and answer on a connection that stays open), ``quick(head)`` is asked;
(content type, body, extra header lines) is written at once as the ``200`` answer with the very bytes
:meth:`~._exchange.Exchange.respond` would send (to a ``HEAD``: its head alone). None (or anything else about
the request) and the bytes go to the connection as before, so every other request, and every verdict on a bad
one, is the ordinary path's.
Answers stay in request order (only a connection idle with nothing buffered is answered this way), and a client
that does not read its answers is not answered this way once the kernel holds back an answer (the ordinary path
waits for it to drain).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import cast

import swarmha.manager.http.parsers as parsers
from swarmha.manager.http._conn import Conn
from swarmha.manager.http._exchange import Exchange
from swarmha.manager.http._wire import (
    BODY_TIMEOUT,
    LINGER_LIMIT,
    READ_SIZE,
    BadRequest,
    BodyBudget,
    BodyRefused,
    ClientGone,
    ErrorBody,
    Head,
    QuickGate,
    plain_error,
)
from swarmha.manager.http.tls import HalfCloseTLS

__all__ = ["Handler", "Quick", "Server"]

log = logging.getLogger("swarmha.manager.http")

Handler = Callable[[Exchange], Awaitable[None]]
#: The application's answer to a request head without waiting (see the module docstring): (content type, body,
#: extra header lines: ``name: value\r\n`` each, in h11's grammar, b"" for none) of a ``200`` answer, or None
#: for "serve it the ordinary way".
Quick = Callable[[Head], "tuple[bytes, bytes, bytes] | None"]


class _QuickProtocol(asyncio.StreamReaderProtocol):
    """A plain TCP connection's protocol that lets the server's ``quick`` answer while its connection waits."""

    def __init__(self, server: Server, quick: Quick) -> None:
        super().__init__(asyncio.StreamReader(limit=READ_SIZE), server._accept)
        self.gate = QuickGate()
        self._server = server
        self._quick = quick
        self._loop = asyncio.get_running_loop()
        self._tcp: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tcp = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._tcp = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        gate = self.gate
        if gate.armed:
            if self._answer(data):
                return
            gate.armed = False  # the connection reads from here on, until it waits with nothing buffered again
        super().data_received(data)

    def _answer(self, data: bytes) -> bool:
        t = self._tcp
        if t is None or t.is_closing() or t.get_write_buffer_size() or self._server._closing:
            return False
        head = parsers.quick_head(data)
        if head is None:
            return False
        try:
            got = self._quick(head)
        except Exception:  # the ordinary path serves it (and answers 500 if it fails there too)
            log.exception("the quick answer to %s failed", head.target[:200])
            return False
        if got is None:
            return False
        content_type, body, extra = got
        head_only = head.method == b"HEAD"
        t.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: %b\r\ncontent-length: %d\r\n%b\r\n%b"
            % (content_type, len(body), extra, b"" if head_only else body)
        )
        self.gate.last = self._loop.time()
        return True


class Server:
    """Serve ``handler`` on one listening socket (plain or TLS)."""

    def __init__(
        self,
        handler: Handler,
        budget: BodyBudget | None = None,
        parser: type[parsers.H11Conn] | None = None,
        error_body: ErrorBody = plain_error,
        body_timeout: float = BODY_TIMEOUT,
        quick: Quick | None = None,
    ) -> None:
        """``error_body`` shapes every error answer (the server's own 400/500 and :meth:`Exchange.error`);
        ``body_timeout``: seconds a request body may make no progress before its exchange ends with 408;
        ``quick``: answers given without an exchange (see the module docstring; plain TCP with llhttp only)."""
        self._handler = handler
        self._quick = quick
        self._error_body = error_body
        self._body_timeout = body_timeout
        #: The connection class, which reads request heads (:data:`parsers.DEFAULT` unless given).
        self.parser = parser or parsers.DEFAULT
        #: The bytes of request bodies this server's exchanges may hold in memory at once.
        self.budget = budget or BodyBudget()
        self._servers: list[asyncio.Server] = []
        self._busy: set[asyncio.Task[None]] = set()  # connections inside an exchange
        self._idle: set[asyncio.Task[None]] = set()  # connections waiting for the next request
        self._closing = False

    async def listen(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> list[tuple[str, int]]:
        """Bind and start accepting; returns the bound (host, port) pairs. Raises OSError if it cannot bind.

        TLS is :class:`~swarmha.manager.http.tls.HalfCloseTLS`, not asyncio's SSL transport: a client's close_notify
        must end only its own direction of a hijacked connection (a client sends one when its input ends).
        """
        quick = self._quick
        if ssl_context is None and quick is not None and issubclass(self.parser, parsers.LlhttpConn):
            server = await asyncio.get_running_loop().create_server(
                lambda: _QuickProtocol(self, quick), host or None, port, reuse_address=True
            )
        elif ssl_context is None:
            server = await asyncio.start_server(self._accept, host or None, port, reuse_address=True, limit=READ_SIZE)
        else:

            def app() -> asyncio.StreamReaderProtocol:
                return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=READ_SIZE), self._accept)

            server = await asyncio.get_running_loop().create_server(
                lambda: HalfCloseTLS(ssl_context, app), host or None, port, reuse_address=True
            )
        self._servers.append(server)
        return [s.getsockname()[:2] for s in server.sockets]

    def close(self) -> None:
        """Stop accepting connections now and close idle keep-alive connections."""
        self._closing = True
        for server in self._servers:
            server.close()
        for task in list(self._idle):
            task.cancel()

    @property
    def in_flight(self) -> int:
        return len(self._busy)

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for in-flight exchanges, then cancel the rest."""
        busy = list(self._busy | self._idle)
        if busy:
            _done, pending = await asyncio.wait(busy, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = self.parser(reader, writer, self.budget, self._error_body, self._body_timeout)
        protocol = writer.transport.get_protocol()
        if isinstance(protocol, _QuickProtocol):
            conn.gate = protocol.gate
        try:
            await self._serve(conn, task)
        except (asyncio.CancelledError, ClientGone):
            pass
        except Exception:
            log.exception("connection from %s failed", conn.peer)
        finally:
            self._busy.discard(task)
            self._idle.discard(task)
            with contextlib.suppress(Exception):
                conn.close()

    async def _serve(self, conn: Conn, task: asyncio.Task[None]) -> None:
        while not self._closing:
            self._idle.add(task)
            try:
                request = await conn.read_request()
                exchange = Exchange(conn, *request) if request is not None else None
            except BadRequest as e:
                await self._bad_request(conn, e)
                return
            finally:
                self._idle.discard(task)
            if exchange is None:
                return
            self._busy.add(task)
            try:
                await self._handler(exchange)
                if not exchange.started:
                    await exchange.error(500, "swarmha: the handler sent no response")
            except ClientGone:
                return
            except BodyRefused as e:
                if not exchange.started:
                    with contextlib.suppress(Exception):
                        await exchange.error(e.status, str(e))
                await conn.linger(min(LINGER_LIMIT, exchange.body_left + READ_SIZE))
                return
            except BadRequest as e:
                if not exchange.started:
                    await self._bad_request(conn, e)
                return
            except Exception as e:
                log.exception("%s %s failed", exchange.method, exchange.target)
                if not exchange.started:
                    with contextlib.suppress(Exception):
                        await exchange.error(500, f"swarmha: internal error: {e}")
                return
            finally:
                self._busy.discard(task)
                exchange.release()
            if exchange.body_abandoned:
                await conn.linger(min(LINGER_LIMIT, exchange.body_left + READ_SIZE))
                return
            if not conn.next_cycle():
                return  # switched, closing (MUST_CLOSE), or the exchange did not finish

    async def _bad_request(self, conn: Conn, error: BadRequest) -> None:
        """Its status (400, 408, 505) and close (raw bytes: h11 may be in its ERROR state by now)."""
        status = error.status
        body, content_type = self._error_body(status, f"bad request: {error}" if status == 400 else str(error))
        reason = http.HTTPStatus(status).phrase.encode()
        head = b"HTTP/1.1 %d %b\r\ncontent-type: %b\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % (
            status,
            reason,
            content_type.encode(),
            len(body),
        )
        with contextlib.suppress(Exception):
            await conn.write(head + body)
