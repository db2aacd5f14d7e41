"""A small asyncio HTTP/1.1 server with the one extra a Docker API front needs: hijacking.

Guarantees:

* Every request is handed to the handler on its own (keep-alive connections are parsed request by request,
  so a replica decides per request whether to answer or forward).
* Malformed HTTP (bad request line, header without a colon, obsolete line folding, a bad or doubled
  Content-Length, Content-Length with Transfer-Encoding, a transfer coding other than chunked, no Host on
  HTTP/1.1), a request head larger than :data:`MAX_HEAD` bytes, or a head not complete within
  :data:`HEAD_TIMEOUT` seconds of its first byte gets ``400 {"message": ...}`` and the connection is closed;
  the server keeps serving others. A handler that raises gets a 500 JSON error if no response was started,
  else the connection is closed.
* A request that asks for ``Connection: Upgrade`` can be switched with :meth:`Exchange.switch`, which sends the
  101 and returns the raw byte stream (including bytes the client sent early) for splicing.
* Responses are framed by their headers: ``Content-Length`` as given, otherwise chunked (HTTP/1.1 clients) or
  delimited by closing (HTTP/1.0). A whole response (:meth:`Exchange.complete`) is one write; each streamed
  chunk is written at once (asyncio sets TCP_NODELAY on its TCP sockets, so nothing waits for an ACK).
* :meth:`Server.close` stops accepting at once; :meth:`Server.drain` waits (bounded) for in-flight exchanges,
  then cancels what is left. Idle keep-alive connections are closed at once on close.

The parser is written for this server (it replaced h11, whose per-request cost was most of a hop's budget);
it accepts what h11 accepted for the Docker API's requests and is strict where request smuggling lives
(framing headers).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["HEAD_TIMEOUT", "MAX_HEAD", "BadRequest", "ClientGone", "Exchange", "Handler", "Server", "strip_version"]

log = logging.getLogger("swarmha.manager.http")

#: Largest request head (request line + headers) accepted, in bytes.
MAX_HEAD = 64 * 1024
#: Seconds a client has to send a complete request head once it started one.
HEAD_TIMEOUT = 30.0
#: Seconds an idle keep-alive connection may wait for its next request.
IDLE_TIMEOUT = 120.0
READ_SIZE = 64 * 1024

Handler = Callable[["Exchange"], Awaitable[None]]

_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET = re.compile(rb"[\x21-\x7e\x80-\xff]+")
_VALUE_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_NO_BODY_STATUS = frozenset({204, 304})


def strip_version(path: str) -> str:
    """``/v1.41/containers/json`` -> ``/containers/json`` (the Docker API version prefix is optional)."""
    if path.startswith("/v"):
        head, _, rest = path[2:].partition("/")
        if head.replace(".", "", 1).isdigit():
            return "/" + rest
    return path


class ClientGone(Exception):
    """The client closed its connection (or it broke) before the exchange finished."""


class BadRequest(Exception):
    """The client sent something that is not an acceptable HTTP/1.1 request (answered with 400)."""


class _Request:
    __slots__ = ("headers", "method", "target", "version")

    def __init__(self, method: bytes, target: bytes, version: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers


def _parse_head(raw: bytes) -> _Request:
    """Parse a request head (without the final blank line)."""
    lines = raw.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadRequest("malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(target):
        raise BadRequest("malformed request line")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise BadRequest(f"unsupported HTTP version {version[:20]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise BadRequest("malformed header line" if line[:1] not in (b" ", b"\t") else "obsolete line folding")
        value = value.strip(b" \t")
        if _VALUE_BAD.search(value):
            raise BadRequest("illegal character in a header value")
        headers.append((name, value))
    return _Request(method, target, version[5:], headers)


class Exchange:
    """One request and the means to answer it (or to switch protocols and get the raw stream)."""

    def __init__(self, conn: _Conn, request: _Request) -> None:
        self._conn = conn
        self.method: str = request.method.decode("ascii", "replace").upper()
        self.target: str = request.target.decode("latin-1")
        self.http_version: bytes = request.version
        self.headers: list[tuple[bytes, bytes]] = request.headers
        parts = urlsplit(self.target)
        #: Path without the ``/vX.Y`` API version prefix.
        self.path: str = strip_version(parts.path)
        self._query = parts.query
        self._parsed_query: dict[str, list[str]] | None = None
        self.upgrade: bool = self._wants_upgrade()
        self.started = False
        self.finished = False
        self._framing = ""  # the response's: "length", "chunked", "close" or "none"
        self._body_kind, self._body_left = self._request_framing()
        self._body_done = self._body_kind == "none"

    def _wants_upgrade(self) -> bool:
        return any(n.lower() == b"upgrade" for n, _ in self.headers) and "upgrade" in self.header("connection").lower()

    def _request_framing(self) -> tuple[str, int]:
        te = [v for n, v in self.headers if n.lower() == b"transfer-encoding"]
        cl = {v for n, v in self.headers if n.lower() == b"content-length"}
        if te:
            if cl:
                raise BadRequest("both Transfer-Encoding and Content-Length")
            if len(te) != 1 or te[0].lower() != b"chunked":
                raise BadRequest("unsupported transfer coding (only chunked)")
            return "chunked", 0
        if cl:
            if len(cl) != 1 or not next(iter(cl)).isdigit():
                raise BadRequest("invalid Content-Length")
            length = int(next(iter(cl)))
            return ("length", length) if length else ("none", 0)
        return "none", 0

    @property
    def query(self) -> dict[str, list[str]]:
        if self._parsed_query is None:
            self._parsed_query = parse_qs(self._query, keep_blank_values=True)
        return self._parsed_query

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
        return self._body_kind != "none"

    async def body_chunks(self) -> AsyncIterator[bytes]:
        """The request body as it arrives (empty for a body already read)."""
        conn = self._conn
        try:
            while not self._body_done:
                if self._body_kind == "length":
                    data = await conn.take_some(self._body_left)
                    self._body_left -= len(data)
                    self._body_done = not self._body_left
                    yield data
                else:
                    line = await conn.take_line()
                    try:
                        size = int(line.split(b";", 1)[0].strip(), 16)
                    except ValueError:
                        raise BadRequest("malformed chunk size") from None
                    if size == 0:
                        while await conn.take_line():  # trailers, dropped
                            pass
                        self._body_done = True
                        return
                    while size:
                        data = await conn.take_some(size)
                        size -= len(data)
                        yield data
                    if await conn.take_line():
                        raise BadRequest("chunk not followed by CRLF")
        except BadRequest:
            conn.keep_alive = False
            raise

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

    async def _drain_body(self) -> None:
        if not self._body_done:  # the request must be read whole before the next one: drain what is left
            async for _ in self.body_chunks():
                pass

    def _head(self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes, length: int | None) -> bytes:
        """The response head; decides the framing. ``length``: add a Content-Length if the headers lack one."""
        conn = self._conn
        names = {n.lower() for n, _ in headers}
        out = list(headers)
        if b"connection" in names and any(n.lower() == b"connection" and b"close" in v.lower() for n, v in headers):
            conn.keep_alive = False
        if self.method == "HEAD" or status in _NO_BODY_STATUS or status < 200:
            self._framing = "none"
        elif b"content-length" in names:
            self._framing = "length"
        elif length is not None:
            self._framing = "length"
            out.append((b"content-length", str(length).encode()))
        elif self.http_version == b"1.1":
            self._framing = "chunked"
            if b"transfer-encoding" not in names:
                out.append((b"transfer-encoding", b"chunked"))
        else:
            self._framing = "close"
            conn.keep_alive = False
            out = [(n, v) for n, v in out if n.lower() != b"transfer-encoding"]
        if not conn.keep_alive and b"connection" not in names and status >= 200:
            out.append((b"connection", b"close"))
        if self.http_version == b"1.0" and conn.keep_alive and b"connection" not in names:
            out.append((b"connection", b"keep-alive"))
        phrase = reason or _reason(status)
        lines = [b"HTTP/1.1 %d %s" % (status, phrase)]
        lines += [n + b": " + v for n, v in out]
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def start(self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b"") -> None:
        """Send the response head; the body follows with :meth:`send` and :meth:`end`."""
        await self._drain_body()
        self.started = True
        await self._conn.write(self._head(status, headers, reason, None))

    async def send(self, data: bytes) -> None:
        if data and self._framing != "none":
            await self._conn.write(b"%x\r\n%b\r\n" % (len(data), data) if self._framing == "chunked" else data)

    async def end(self) -> None:
        if self._framing == "chunked":
            await self._conn.write(b"0\r\n\r\n")
        self.finished = True

    async def complete(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"", reason: bytes = b""
    ) -> None:
        """A whole response (head, body, end) written at once: one write, one packet for small answers."""
        await self._drain_body()
        self.started = True
        head = self._head(status, headers, reason, len(body))
        if self._framing == "none":
            body = b""
        elif self._framing == "chunked":
            body = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
        await self._conn.write(head + body)
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
        await self._drain_body()
        self.started = True
        lines = [b"HTTP/1.1 101 " + (reason or b"Switching Protocols")] + [n + b": " + v for n, v in headers]
        await self._conn.write(b"\r\n".join(lines) + b"\r\n\r\n")
        self.finished = True
        conn = self._conn
        conn.switched = True
        early, conn.buf = bytes(conn.buf), bytearray()
        return conn.reader, conn.writer, early

    async def client_closed(self) -> None:
        """Return when the client closes its side (used to stop streaming to a client that left).

        Bytes the client sends meanwhile (a pipelined request) are kept for the next cycle.
        """
        await self._conn.wait_closed_by_peer()


_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"")


class _Conn:
    """One client connection: the socket and the bytes received but not consumed yet."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()
        self.switched = False
        self.eof = False
        self.keep_alive = True
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._reading: asyncio.Lock = asyncio.Lock()

    async def _read(self, timeout: float | None = None) -> None:
        """Append what arrives to ``buf``; sets ``eof`` at the end of the stream (TimeoutError after ``timeout``)."""
        async with self._reading:
            if self.eof:
                return
            try:
                async with asyncio.timeout(timeout):  # no extra task per read, unlike wait_for on 3.11
                    data = await self.reader.read(READ_SIZE)
            except (ConnectionError, ssl.SSLError, OSError):
                data = b""
            if data:
                self.buf += data
            else:
                self.eof = True

    async def read_request(self) -> _Request | None:
        """The next request head; None when the client closed cleanly between requests."""
        while self.buf[:2] == b"\r\n":  # stray CRLFs between requests are allowed
            del self.buf[:2]
        if not self.buf:
            await self._read(IDLE_TIMEOUT)
            if not self.buf:
                return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HEAD_TIMEOUT
        searched = 0
        while True:
            end = self.buf.find(b"\r\n\r\n", max(0, searched - 3))
            if end >= 0:
                break
            searched = len(self.buf)
            if searched > MAX_HEAD:
                raise BadRequest(f"request head larger than {MAX_HEAD} bytes")
            if self.eof:
                raise BadRequest("connection closed inside a request head")
            await self._read(max(0.0, deadline - loop.time()))
        if end > MAX_HEAD:
            raise BadRequest(f"request head larger than {MAX_HEAD} bytes")
        raw = bytes(self.buf[:end]).lstrip(b"\r\n")
        del self.buf[: end + 4]
        request = _parse_head(raw)
        if request.version == b"1.1" and not any(n.lower() == b"host" for n, _ in request.headers):
            raise BadRequest("missing Host header")
        conn = b",".join(v for n, v in request.headers if n.lower() == b"connection").lower()
        self.keep_alive = b"close" not in conn if request.version == b"1.1" else b"keep-alive" in conn
        return request

    async def take_some(self, most: int) -> bytes:
        """Up to ``most`` bytes (at least one); ClientGone at the end of the stream."""
        while not self.buf:
            if self.eof:
                raise ClientGone("client closed the connection inside a request body")
            await self._read()
        data = bytes(self.buf[:most])
        del self.buf[:most]
        return data

    async def take_line(self) -> bytes:
        """One CRLF-terminated line, without the CRLF (BadRequest when it grows past MAX_HEAD)."""
        while (i := self.buf.find(b"\r\n")) < 0:
            if len(self.buf) > MAX_HEAD:
                raise BadRequest("chunk header line too long")
            if self.eof:
                raise ClientGone("client closed the connection inside a request body")
            await self._read()
        line = bytes(self.buf[:i])
        del self.buf[: i + 2]
        return line

    async def wait_closed_by_peer(self) -> None:
        while not self.eof:
            await self._read(None)

    async def write(self, data: bytes) -> None:
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, ssl.SSLError, OSError, RuntimeError) as e:
            raise ClientGone(str(e) or type(e).__name__) from e


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
                request = await conn.read_request()
                exchange = Exchange(conn, request) if request is not None else None
            except BadRequest as e:
                await self._bad_request(conn, str(e))
                return
            except TimeoutError:
                if conn.buf:
                    await self._bad_request(conn, "request head not received in time")
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
            except BadRequest as e:
                if not exchange.started:
                    await self._bad_request(conn, str(e))
                return
            except Exception as e:
                log.exception("%s %s failed", exchange.method, exchange.target)
                if not exchange.started:
                    with contextlib.suppress(Exception):
                        await exchange.error(500, f"swarmha: internal error: {e}")
                return
            finally:
                self._busy.discard(task)
            if conn.switched or not conn.keep_alive or not exchange.finished or not exchange._body_done:
                return

    async def _bad_request(self, conn: _Conn, message: str) -> None:
        body = json.dumps({"message": f"bad request: {message}"}).encode() + b"\n"
        head = (
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        )
        with contextlib.suppress(Exception):
            await conn.write(head + body)
