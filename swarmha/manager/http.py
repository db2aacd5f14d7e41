"""A small asyncio HTTP/1.1 server built on h11, with the one extra a Docker API front needs: hijacking.

Guarantees:

* Every request is handed to the handler on its own (keep-alive connections are parsed request by request,
  so a replica decides per request whether to answer or forward).
* Malformed HTTP, a request head larger than :data:`MAX_HEAD` bytes, or a head that does not arrive within
  :data:`HEAD_TIMEOUT` seconds gets ``400 {"message": ...}`` and the connection is closed; the server keeps
  serving others. A handler that raises gets a 500 JSON error if no response was started, else the connection
  is closed.
* A request that asks for ``Connection: Upgrade`` can be switched with :meth:`Exchange.switch`, which sends the
  101 and returns the raw byte stream (including bytes the client sent early) for splicing.
* :meth:`Server.close` stops accepting at once; :meth:`Server.drain` waits (bounded) for in-flight exchanges,
  then cancels what is left. Idle keep-alive connections are closed at once on close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11

__all__ = ["HEAD_TIMEOUT", "MAX_HEAD", "Exchange", "Handler", "Server", "strip_version"]

log = logging.getLogger("swarmha.manager.http")

#: Largest request head (request line + headers) accepted, in bytes.
MAX_HEAD = 64 * 1024
#: Seconds a client has to send a complete request head once it started one (or to start one while idle).
HEAD_TIMEOUT = 30.0
IDLE_TIMEOUT = 120.0
READ_SIZE = 64 * 1024

Handler = Callable[["Exchange"], Awaitable[None]]


def strip_version(path: str) -> str:
    """``/v1.41/containers/json`` -> ``/containers/json`` (the Docker API version prefix is optional)."""
    if path.startswith("/v"):
        head, _, rest = path[2:].partition("/")
        if head.replace(".", "", 1).isdigit():
            return "/" + rest
    return path


class ClientGone(Exception):
    """The client closed its connection (or it broke) before the exchange finished."""


class Exchange:
    """One request and the means to answer it (or to switch protocols and get the raw stream)."""

    def __init__(self, conn: _Conn, request: h11.Request) -> None:
        self._conn = conn
        self.method: str = request.method.decode("ascii", "replace").upper()
        self.target: str = request.target.decode("latin-1")
        self.http_version = request.http_version
        self.headers: list[tuple[bytes, bytes]] = list(request.headers.raw_items())
        parts = urlsplit(self.target)
        #: Path without the ``/vX.Y`` API version prefix.
        self.path: str = strip_version(parts.path)
        self.query: dict[str, list[str]] = parse_qs(parts.query, keep_blank_values=True)
        self.upgrade: bool = self._wants_upgrade()
        self.started = False
        self.finished = False
        self._body_done = False

    def _wants_upgrade(self) -> bool:
        return any(n.lower() == b"upgrade" for n, _ in self.headers) and "upgrade" in self.header("connection").lower()

    @property
    def peer(self) -> str:
        return self._conn.peer

    def header(self, name: str, default: str = "") -> str:
        """The first value of header ``name`` (case-insensitive), as text."""
        key = name.lower().encode("ascii")
        for n, v in self.headers:
            if n.lower() == key:
                return v.decode("latin-1")
        return default

    def arg(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[-1] if values else default

    @property
    def has_body(self) -> bool:
        te = self.header("transfer-encoding")
        return bool(te) or self.header("content-length", "0") not in ("", "0")

    async def body_chunks(self) -> AsyncIterator[bytes]:
        """The request body as it arrives (empty for a body already read)."""
        if self._body_done:
            return
        while True:
            event = await self._conn.next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                self._body_done = True
                return
            else:
                raise ClientGone(f"unexpected {event!r} while reading the request body")

    async def body(self, limit: int = 64 * 1024 * 1024) -> bytes:
        """The whole request body; raises ValueError when it is larger than ``limit`` bytes."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in self.body_chunks():
            size += len(chunk)
            if size > limit:
                raise ValueError(f"request body larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def start(self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b"") -> None:
        """Send the response head; the body follows with :meth:`send` and :meth:`end`."""
        if not self._body_done:  # h11 needs the request fully read before the next cycle: drain what is left
            async for _ in self.body_chunks():
                pass
        self.started = True
        await self._conn.send(h11.Response(status_code=status, headers=headers, reason=reason))

    async def send(self, data: bytes) -> None:
        if data:
            await self._conn.send(h11.Data(data=data))

    async def end(self) -> None:
        await self._conn.send(h11.EndOfMessage())
        self.finished = True

    async def complete(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"", reason: bytes = b""
    ) -> None:
        """A whole response (head, body, end) written at once: one write, one packet for small answers."""
        if not self._body_done:
            async for _ in self.body_chunks():
                pass
        self.started = True
        conn = self._conn.h11
        try:
            data = conn.send(h11.Response(status_code=status, headers=headers, reason=reason)) or b""
            if body and self.method != "HEAD":
                data += conn.send(h11.Data(data=body)) or b""
            data += conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as e:
            raise ClientGone(f"cannot send this response: {e}") from e
        await self._conn.write(data)
        self.finished = True

    async def respond(
        self, status: int, body: bytes = b"", content_type: str = "text/plain; charset=utf-8", extra: Any = ()
    ) -> None:
        """A complete response with a fixed body."""
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        headers += [
            (k.encode() if isinstance(k, str) else k, v.encode() if isinstance(v, str) else v) for k, v in extra
        ]
        await self.complete(status, headers, body)

    async def json(self, status: int, obj: Any, extra: Any = ()) -> None:
        await self.respond(status, json.dumps(obj).encode() + b"\n", "application/json", extra)

    async def error(self, status: int, message: str) -> None:
        """The Docker API error shape: ``{"message": "..."}``."""
        await self.json(status, {"message": message})

    async def switch(
        self, headers: list[tuple[bytes, bytes]], reason: bytes = b"UPGRADED"
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        """Answer 101 and hand over the raw connection: (reader, writer, bytes already received)."""
        if not self._body_done:
            async for _ in self.body_chunks():
                pass
        self.started = True
        await self._conn.send(h11.InformationalResponse(status_code=101, headers=headers, reason=reason))
        self.finished = True
        self._conn.switched = True
        early, _closed = self._conn.h11.trailing_data
        return self._conn.reader, self._conn.writer, bytes(early)

    async def client_closed(self) -> None:
        """Return when the client closes its side (used to stop streaming to a client that left).

        Bytes the client sends meanwhile (a pipelined request) are kept for the next cycle.
        """
        await self._conn.wait_closed_by_peer()


class _Conn:
    """One client connection: the h11 state machine plus the socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.switched = False
        self.eof = False
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._reading: asyncio.Lock = asyncio.Lock()

    async def _read(self, timeout: float | None) -> None:
        async with self._reading:
            if self.eof:
                self.h11.receive_data(b"")
                return
            try:
                async with asyncio.timeout(timeout):  # no extra task per read, unlike wait_for on 3.11
                    data = await self.reader.read(READ_SIZE)
            except (ConnectionError, ssl.SSLError, OSError):
                data = b""
            if not data:
                self.eof = True
            self.h11.receive_data(data)

    async def next_event(self, timeout: float | None = None) -> Any:
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                await self._read(timeout)
                continue
            return event

    async def wait_closed_by_peer(self) -> None:
        while not self.eof:
            await self._read(None)
        # leave the EOF to be noticed by the next next_event()

    async def send(self, event: Any) -> None:
        await self.write(self.h11.send(event) or b"")

    async def write(self, data: bytes) -> None:
        if data:
            try:
                self.writer.write(data)
                await self.writer.drain()
            except (ConnectionError, ssl.SSLError, OSError) as e:
                raise ClientGone(str(e)) from e


class Server:
    """Serve ``handler`` on one listening socket (plain or TLS)."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._servers: list[asyncio.Server] = []
        self._busy: set[asyncio.Task[None]] = set()  # connections inside an exchange
        self._idle: set[asyncio.Task[None]] = set()  # connections waiting for the next request
        self._closing = False

    async def listen(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> list[tuple[str, int]]:
        """Bind and start accepting; returns the bound (host, port) pairs. Raises OSError if it cannot bind."""
        server = await asyncio.start_server(
            self._accept, host or None, port, ssl=ssl_context, reuse_address=True, limit=READ_SIZE
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
        conn = _Conn(reader, writer)
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
                writer.close()

    async def _serve(self, conn: _Conn, task: asyncio.Task[None]) -> None:
        while not self._closing:
            self._idle.add(task)
            try:
                event = await conn.next_event(IDLE_TIMEOUT if conn.h11.their_state is h11.IDLE else HEAD_TIMEOUT)
            except h11.RemoteProtocolError as e:
                await self._bad_request(conn, str(e) or "malformed request")
                return
            except TimeoutError:
                if conn.h11.their_state is h11.IDLE and not conn.h11.trailing_data[0]:
                    return
                await self._bad_request(conn, "request head not received in time")
                return
            finally:
                self._idle.discard(task)
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            if not isinstance(event, h11.Request):
                return
            head = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers.raw_items())
            if head > MAX_HEAD:
                await self._bad_request(conn, f"request head larger than {MAX_HEAD} bytes")
                return
            self._busy.add(task)
            exchange = Exchange(conn, event)
            try:
                await self._handler(exchange)
                if not exchange.started:
                    await exchange.error(500, "swarmha: the handler sent no response")
            except ClientGone:
                return
            except h11.RemoteProtocolError as e:
                if not exchange.started:
                    await self._bad_request(conn, str(e) or "malformed request")
                return
            except Exception as e:
                log.exception("%s %s failed", exchange.method, exchange.target)
                if not exchange.started:
                    with contextlib.suppress(Exception):
                        await exchange.error(500, f"swarmha: internal error: {e}")
                return
            finally:
                self._busy.discard(task)
            if conn.switched:
                return
            if conn.h11.our_state is h11.MUST_CLOSE or conn.h11.their_state is h11.MUST_CLOSE:
                return
            if conn.h11.our_state is not h11.DONE or conn.h11.their_state is not h11.DONE:
                return
            try:
                conn.h11.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _bad_request(self, conn: _Conn, message: str) -> None:
        if conn.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = json.dumps({"message": f"bad request: {message}"}).encode() + b"\n"
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        with contextlib.suppress(Exception):
            await conn.send(h11.Response(status_code=400, headers=headers))
            await conn.send(h11.Data(data=body))
            await conn.send(h11.EndOfMessage())
