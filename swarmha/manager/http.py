"""A small asyncio HTTP/1.1 server on h11 (and llhttp), with the one extra a Docker API front needs: hijacking.

h11 does the HTTP/1.1 framing both ways (request heads and bodies in, response framing out): this server
reads requests from untrusted clients, and malformed input and request smuggling are what h11 is for. By
measurement, the common request head is read by llhttp first when httptools is installed (the extra
``swarmha[fast]``): only a head that llhttp accepts and that is of the common kind (see :func:`_parse_fast`)
is taken that way, and every other request is parsed by h11 as before, so the verdicts do not change.

Guarantees:

* Every request is handed to the handler on its own (keep-alive connections are parsed request by request,
  so a replica decides per request whether to answer or forward).
* Whatever h11 rejects (a bad request line or header line, a bad or conflicting Content-Length, a transfer
  coding other than chunked, a missing or doubled Host on HTTP/1.1, bad chunk framing, ...), a request head
  larger than :data:`MAX_HEAD` bytes, or a head not complete within :data:`HEAD_TIMEOUT` seconds of its first
  byte gets ``400 {"message": ...}`` and the connection is closed; the server keeps serving others. On top of
  h11 one check (:func:`_check_framing`) refuses Transfer-Encoding together with Content-Length, and
  Transfer-Encoding on HTTP/1.0 (RFC 9112 §6.1: both are smuggling vectors; h11 would use the chunked
  framing and keep the connection open). A handler that raises gets a 500 JSON error if no response was
  started, else the connection is closed.
* A request that asks for ``Connection: Upgrade`` can be switched with :meth:`Exchange.switch`, which sends the
  101 and returns the raw byte stream (including bytes the client sent early: h11's ``trailing_data``) for
  splicing.
* Responses are framed by h11 from their headers: ``Content-Length`` as given, otherwise chunked (HTTP/1.1
  clients) or delimited by closing (HTTP/1.0). A whole response (:meth:`Exchange.complete`) is one write (h11's
  head, body and end bytes concatenated); each streamed chunk is written at once (asyncio and uvloop set
  TCP_NODELAY on their TCP sockets, so nothing waits for an ACK). The one exception, by measurement: the
  common whole response (keep-alive HTTP/1.1, not HEAD, a status with a body, no Transfer-Encoding or
  Connection header, headers and reason within h11's grammar) is framed directly as the bytes h11 would
  send (h11 costs ~50 µs per response on the development machine); the next request on that connection is
  read from the bytes received after the last one. A response to a request that llhttp parsed and that the
  fast path does not frame is framed by a fresh h11 state given an equivalent body-less request.
* :meth:`Server.close` stops accepting at once; :meth:`Server.drain` waits (bounded) for in-flight exchanges,
  then cancels what is left. Idle keep-alive connections are closed at once on close.
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

import h11

try:  # llhttp (Node.js's parser) through httptools: the fast path for the common request head, see _parse_fast
    import httptools
except ImportError:  # pragma: no cover - the extra swarmha[fast] is not installed: h11 parses every request
    httptools = None  # type: ignore[assignment]

from swarmha.manager.tls import HalfCloseTLS

__all__ = ["HEAD_TIMEOUT", "MAX_HEAD", "BadRequest", "ClientGone", "Exchange", "Handler", "Server", "strip_version"]

log = logging.getLogger("swarmha.manager.http")

#: Largest request head (request line + headers) accepted, in bytes.
MAX_HEAD = 64 * 1024
#: Seconds a client has to send a complete request head once it started one.
HEAD_TIMEOUT = 30.0
#: Seconds an idle keep-alive connection may wait for its next request.
IDLE_TIMEOUT = 120.0
READ_SIZE = 64 * 1024
#: A request head still incomplete once this many bytes arrived is read by h11 (incrementally) instead.
FAST_HEAD_MAX = 8 * 1024

Handler = Callable[["Exchange"], Awaitable[None]]

_NO_BODY_STATUS = frozenset({204, 304})
# h11's own grammar for what it sends (h11._abnf: token, field-value, reason-phrase): a response that the fast
# path of Exchange.complete frames itself must be one that h11 would have accepted byte for byte.
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_FIELD_VALUE = rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?"
_HEADER_LINES = re.compile(rb"(?:%b: %b\r\n)*" % (_TOKEN, _FIELD_VALUE))  # "name: value" lines as sent
_REASON = re.compile(rb"[ \t\x21-\x7e\x80-\xff]*")
# response headers that make the fast path step aside for h11 (it decides framing and keep-alive for them)
_H11_DECIDES = frozenset({b"transfer-encoding", b"connection"})

#: Which parser reads request heads first: "llhttp" (httptools, when installed; h11 takes what it does not
#: accept or what is not of the common kind) or "h11" (h11 alone). Tests set it to run both.
PARSER = "llhttp" if httptools is not None else "h11"
# h11's request-line grammar (h11._abnf: method = token, request-target = vchar+, HTTP-version), restricted to
# HTTP/1.0 and 1.1: llhttp is laxer here (it accepts "GET  / HTTP/1.1" and versions 0.9 and 2.0)
_REQUEST_LINE = re.compile(rb"(%b) ([\x21-\x7e]+) HTTP/(1\.[01])\r\n" % _TOKEN)
# request headers for which h11 parses the request (its body framing, hijacking and Host rules are h11's)
_H11_PARSES = frozenset({b"transfer-encoding", b"upgrade"})


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


class _Head:
    """A request head as parsed: method, target, version, headers (names as sent, values without OWS)."""

    __slots__ = ("headers", "http_version", "method", "target")

    def __init__(self, method: bytes, target: bytes, http_version: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        self.headers = headers


class _Collect(list[tuple[bytes, bytes]]):
    """httptools' callback object: collects the header lines and notes the end of the head."""

    complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.append((name, value.rstrip(b" \t")))  # llhttp strips the leading OWS only; h11 strips both

    def on_headers_complete(self) -> None:
        self.complete = True


def _parse_fast(head: bytes) -> tuple[_Head, int] | None:
    """``head`` (bytes up to and including its empty line) parsed by llhttp: (head, Content-Length), or None.

    None means "let h11 parse this request" (it then answers 400 or serves it exactly as before): whatever llhttp
    rejects (h11 is the judge: it accepts some of it, like a repeated identical Content-Length or obsolete line
    folding), a request line outside h11's grammar or other than HTTP/1.0 and 1.1, a Transfer-Encoding or Upgrade
    header (chunked bodies and hijacking are h11's), and a Host header missing on HTTP/1.1 or repeated (h11's
    400). So every head accepted here is one that h11 accepts with the same method, target, version, headers and
    body length (``tests/test_manager_http.py`` checks this on generated heads). llhttp rejects a non-numeric,
    overflowing or repeated Content-Length, bad header names, CR, LF or other control characters in values.
    """
    line = _REQUEST_LINE.match(head)
    if line is None:
        return None
    headers = _Collect()
    try:
        httptools.HttpRequestParser(headers).feed_data(head)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None
    if not headers.complete:
        return None
    hosts = 0
    length = 0
    for name, value in headers:
        key = name.lower()
        if key == b"host":
            hosts += 1
        elif key == b"content-length":  # llhttp checked: digits only, no overflow, not repeated
            length = int(value)
        elif key in _H11_PARSES:
            return None
    version = line.group(3)
    if hosts > 1 or (hosts == 0 and version == b"1.1"):
        return None
    return _Head(line.group(1), line.group(2), version, headers), length


def _check_framing(http_version: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[bool, int]:
    """The request body's framing, (chunked, length), after h11 validated it; BadRequest where h11 is lenient.

    h11 accepts Transfer-Encoding with Content-Length (it uses the chunked framing and ignores the length) and
    Transfer-Encoding on HTTP/1.0. RFC 9112 §6.1 allows rejecting the first and requires treating the second as
    faulty framing, and requires closing the connection after either (h11 would keep it open): both are how
    request smuggling desynchronises two parsers, so both get 400 here. The rest (one chunked coding only,
    numeric and non-conflicting Content-Length, Host) is h11's.
    """
    chunked = False
    length: int | None = None
    for name, value in headers:
        key = name.lower()
        if key == b"transfer-encoding":
            chunked = True
        elif key == b"content-length" and length is None:  # h11 checked: digits, all values equal
            length = int(next(v for v in value.split(b",") if v.strip()))
    if chunked and length is not None:
        raise BadRequest("both Transfer-Encoding and Content-Length")
    if chunked and http_version < b"1.1":
        raise BadRequest("Transfer-Encoding on an HTTP/1.0 request")
    return chunked, length or 0


class Exchange:
    """One request and the means to answer it (or to switch protocols and get the raw stream)."""

    def __init__(self, conn: _Conn, request: _Head, fast_length: int | None = None) -> None:
        """``fast_length``: the body length of a head that llhttp parsed (:func:`_parse_fast`); None: h11 did."""
        self._conn = conn
        self.method: str = request.method.decode("ascii", "replace").upper()
        self.target: str = request.target.decode("latin-1")
        self.http_version: bytes = request.http_version
        self.headers: list[tuple[bytes, bytes]] = request.headers
        self._method_raw = request.method
        size = len(request.target)
        has_upgrade = False
        connection = b""  # every Connection header's value, lowercased
        for n, v in self.headers:  # one pass for the head size and the headers decided on below
            size += len(n) + len(v) + 4
            key = n.lower()
            if key == b"connection":
                connection += b"," + v.lower()
            elif key == b"upgrade":
                has_upgrade = True
        if size > MAX_HEAD:
            raise BadRequest(f"request head larger than {MAX_HEAD} bytes")
        #: llhttp parsed the head (the body is read from the connection's buffer, the response framed here or by
        #: an h11 state made for it); False: h11 parses this request (see :func:`_parse_fast`).
        self._fast = fast_length is not None
        if fast_length is not None:
            chunked, length = False, fast_length
        else:
            chunked, length = _check_framing(request.http_version, self.headers)
        #: True when the body is chunked (its length is not known in advance).
        self.chunked: bool = chunked
        #: The declared body length (0 for none or for a chunked body).
        self.content_length: int = length
        self._left = length  # body bytes not read yet (fast path)
        self._connection = connection
        target = self.target
        if target.startswith("/") and not target.startswith("//") and "#" not in target:
            path, _, self._query = target.partition("?")  # what urlsplit gives for an origin-form target
        else:
            parts = urlsplit(target)
            path, self._query = parts.path, parts.query
        #: Path without the ``/vX.Y`` API version prefix.
        self.path: str = strip_version(path)
        self._parsed_query: dict[str, list[str]] | None = None
        self.upgrade: bool = has_upgrade and b"upgrade" in connection
        #: HTTP/1.1 without ``Connection: close``: the connection stays open after this exchange (h11's rule).
        self._keep_alive = request.http_version == b"1.1" and b"close" not in connection
        self.started = False
        self.finished = False
        #: The status sent (0 until the response starts; 101 for a switch): for metrics and logs.
        self.status = 0
        self._no_body = False  # the response's: HEAD, 204, 304
        self._body_done = False
        if not chunked and not length:
            self._body_done = True
            h = conn.h11
            if h is not None and not self._fast and type(h.next_event()) is not h11.EndOfMessage:  # h11 has it ready
                raise BadRequest("request without a body not followed by its end")

    @property
    def query_string(self) -> str:
        """The query of the target (after ``?``), as sent."""
        return self._query

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
        return self.chunked or self.content_length > 0

    async def body_chunks(self) -> AsyncIterator[bytes]:
        """The request body as it arrives (empty for a body already read)."""
        conn = self._conn
        if self._fast:
            while self._left:
                if not conn.buf:
                    await conn._read()
                    if not conn.buf:
                        raise ClientGone("client closed the connection inside a request body")
                chunk = conn.buf[: self._left]
                conn.buf = conn.buf[len(chunk) :]
                self._left -= len(chunk)
                yield chunk
            self._body_done = True
            return
        while not self._body_done:
            event = await conn.next_event()
            if type(event) is h11.Data:
                if event.data:
                    yield bytes(event.data)
            elif type(event) is h11.EndOfMessage:
                self._body_done = True
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

    async def _drain_body(self) -> None:
        if not self._body_done:  # the request must be read whole before the next one: drain what is left
            async for _ in self.body_chunks():
                pass

    def _h11(self) -> h11.Connection:
        """The h11 state that frames this response.

        For a request that llhttp parsed, h11 has not seen it: a fresh state is given an equivalent body-less
        request (the method, the version and the Connection header: all that h11 decides response framing and
        keep-alive from; the body was read already), so h11 frames what the fast path does not exactly as before.
        """
        conn = self._conn
        if conn.h11 is None:
            h = h11.Connection(h11.SERVER)
            head = b"%b / HTTP/%b\r\nhost: x\r\n" % (self._method_raw, self.http_version)
            if self._connection:
                head += b"connection: " + self._connection[1:] + b"\r\n"
            h.receive_data(head + b"\r\n")
            if type(h.next_event()) is not h11.Request or type(h.next_event()) is not h11.EndOfMessage:
                raise ClientGone("cannot frame a response for this request")  # not reached: a parsed request
            conn.h11 = h
        return conn.h11

    def _send(self, event: Any) -> bytes:
        """h11's bytes for ``event``; ClientGone if h11 refuses it (the connection cannot go on)."""
        try:
            return self._h11().send(event) or b""
        except h11.LocalProtocolError as e:
            raise ClientGone(f"cannot send this response: {e}") from e

    def _response(self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes) -> h11.Response:
        self._no_body = self.method == "HEAD" or status in _NO_BODY_STATUS
        return h11.Response(status_code=status, headers=headers, reason=reason or _reason(status))

    async def start(self, status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b"") -> None:
        """Send the response head; the body follows with :meth:`send` and :meth:`end`."""
        await self._drain_body()
        self.started, self.status = True, status
        await self._conn.write(self._send(self._response(status, headers, reason)))

    async def send(self, data: bytes) -> None:
        if data and not self._no_body:
            await self._conn.write(self._send(h11.Data(data=data)))

    async def end(self) -> None:
        await self._conn.write(self._send(h11.EndOfMessage()))
        self.finished = True

    async def complete(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"", reason: bytes = b""
    ) -> None:
        """A whole response (head, body, end) written at once: one write, one packet for small answers.

        The common case (a keep-alive HTTP/1.1 request that is not HEAD, a status with a body, no
        Transfer-Encoding or Connection header in ``headers``, a Content-Length if any that equals
        ``len(body)``, and names, values and reason that h11's grammar accepts) is framed here directly:
        ``HTTP/1.1 status reason``, the headers as given, Content-Length, the body — the bytes h11 would
        send, without h11's per-response validation and state-machine cost (~50 µs here). Anything else
        goes through h11, which frames it and decides keep-alive. Either way the request was read whole
        first.
        """
        await self._drain_body()
        self.started, self.status = True, status
        conn = self._conn
        fast = self._frame_fast(status, headers, body, reason)
        if fast is not None:
            conn.fast_cycle = True  # h11 did not see this response: the next cycle starts on a new h11 state
            await conn.write(fast)
            self.finished = True
            return
        no_body = self.method == "HEAD" or status in _NO_BODY_STATUS
        if not no_body and not any(n.lower() in (b"content-length", b"transfer-encoding") for n, _ in headers):
            headers = [*headers, (b"content-length", b"%d" % len(body))]
        data = self._send(self._response(status, headers, reason))
        if body and not self._no_body:
            data += self._send(h11.Data(data=body))
        data += self._send(h11.EndOfMessage())
        await conn.write(data)
        self.finished = True

    def _frame_fast(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, reason: bytes) -> bytes | None:
        """The whole response's bytes for the common case of :meth:`complete`; None: let h11 frame it."""
        if not self._keep_alive or self.method == "HEAD" or status < 200 or status > 999 or status in _NO_BODY_STATUS:
            return None
        h = self._conn.h11
        if self._fast:
            if h is not None or not self._body_done:
                return None
        elif h is None or h.our_state is not h11.SEND_RESPONSE or h.their_state is not h11.DONE:
            return None
        reason = reason or _reason(status)
        if not _REASON.fullmatch(reason):
            return None
        length = b"%d" % len(body)
        has_length = False
        for name, value in headers:
            key = name.lower()
            if key in _H11_DECIDES:
                return None
            if key == b"content-length":
                if value != length or has_length:
                    return None
                has_length = True
        lines = b"".join([name + b": " + value + b"\r\n" for name, value in headers])
        if not _HEADER_LINES.fullmatch(lines):  # one pass for every name and value (CR and LF fit neither)
            return None
        if not has_length:
            lines += b"content-length: " + length + b"\r\n"
        return b"HTTP/1.1 %d %b\r\n%b\r\n%b" % (status, reason, lines, body)

    async def respond(
        self, status: int, body: bytes = b"", content_type: str = "text/plain; charset=utf-8", extra: Any = ()
    ) -> None:
        """A complete response with a fixed body."""
        headers = [(b"content-type", content_type.encode()), (b"content-length", b"%d" % len(body))]
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
        self.started, self.status = True, 101
        conn = self._conn
        await conn.write(self._send(h11.InformationalResponse(status_code=101, headers=headers, reason=reason)))
        self.finished = True
        conn.switched = True
        if self._fast:  # not reached: a request that asks for an upgrade is parsed by h11
            early, conn.buf = conn.buf, b""
        else:
            early = bytes(self._h11().trailing_data[0])
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
    """One client connection: the socket, the bytes received and not parsed yet, and h11 while it is in use.

    Between requests the received bytes wait in :attr:`buf`. A request head that llhttp accepts
    (:func:`_parse_fast`) is taken from there and its body (Content-Length) too. Any other request is parsed
    by an h11 state machine that gets the buffer and every byte received after it until that exchange ends;
    then what h11 holds past the request goes back to the buffer.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        #: Received bytes not parsed yet (while h11 does not parse: see :attr:`h11_parses`).
        self.buf = b""
        self._scanned = 0  # bytes of buf searched for the end of an incomplete head (less 3)
        #: The h11 state of the current exchange: the one parsing it, or the one framing its response; or None.
        self.h11: h11.Connection | None = None
        #: h11 parses the current request (received bytes go to it, not to :attr:`buf`).
        self.h11_parses = False
        self.switched = False
        #: The last response was framed without h11 (Exchange.complete's fast path): start a new h11 state.
        self.fast_cycle = False
        self.eof = False
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._reading: asyncio.Lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()
        self._idle_until = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._waiting = False  # waiting for the next request (the idle timer may close the connection)
        #: The connection was closed for staying idle too long between requests.
        self.idle_expired = False

    async def _read(self) -> None:
        """Read once: into :attr:`buf`, or fed to h11 while it parses (b"" at the end of the stream)."""
        async with self._reading:
            if self.eof:
                return
            try:
                data = await self.reader.read(READ_SIZE)
            except (ConnectionError, ssl.SSLError, OSError):
                data = b""
            if not data:
                self.eof = True
            h = self.h11
            if not self.h11_parses or h is None:
                if data:
                    self.buf = self.buf + data if self.buf else data
                return
            if data and data[0] in b"\r\n" and h.their_state is h11.IDLE and not h.trailing_data[0]:
                # empty lines before a request line are ignored (RFC 9112 §2.2); h11 would reject them
                data = data.lstrip(b"\r\n")
                if not data:
                    return
            h.receive_data(data)

    async def _read_idle(self) -> bool:
        """:meth:`_read` between requests; False when the client stayed idle for :data:`IDLE_TIMEOUT` seconds.

        One timer per connection, re-armed only when it fires before the newest deadline (no timer object
        per request): when it fires while the connection is still waiting for a request and the deadline
        has passed, the connection is closed, which ends the read.
        """
        loop = self._loop
        self._idle_until = loop.time() + IDLE_TIMEOUT
        if self._idle_timer is None:
            self._idle_timer = loop.call_at(self._idle_until, self._idle_check)
        self._waiting = True
        try:
            await self._read()
        finally:
            self._waiting = False
        return not self.idle_expired

    def _idle_check(self) -> None:
        self._idle_timer = None
        if not self._waiting:
            return  # inside an exchange: the next wait for a request arms a new timer
        loop = self._loop
        if loop.time() < self._idle_until:
            self._idle_timer = loop.call_at(self._idle_until, self._idle_check)
            return
        self.idle_expired = True
        self.writer.close()  # the pending read ends with EOF

    def close(self) -> None:
        """Close the connection and stop its idle timer."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self.writer.close()

    async def next_event(self) -> Any:
        """The next h11 event, reading as needed; BadRequest for what h11 rejects, ClientGone at a cut."""
        h = self.h11
        assert h is not None
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as e:
                if self.eof:
                    raise ClientGone(f"client closed the connection inside a request: {e}") from e
                raise BadRequest(str(e) or "malformed request") from e
            if event is not h11.NEED_DATA:
                return event
            await self._read()

    def _fast_head(self) -> tuple[_Head, int] | bool | None:
        """A request head from :attr:`buf` for :func:`_parse_fast`: (head, length) taken from the buffer; None:
        more bytes are needed; True: the client closed between requests; False: h11 is to parse this request."""
        buf = self.buf
        if buf and buf[0] in b"\r\n":  # empty lines before a request line are ignored (RFC 9112 §2.2)
            buf = self.buf = buf.lstrip(b"\r\n")
            self._scanned = 0
        if not buf:
            return True if self.eof else None
        start = self._scanned  # searched already, less what a pattern may straddle
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:
            # not complete yet, unless the client closed, it is large (h11 reads a head that comes in pieces
            # past FAST_HEAD_MAX incrementally), or its lines end in a bare LF (h11's)
            if self.eof or len(buf) > FAST_HEAD_MAX or buf.find(b"\n\n", start) >= 0 or buf.find(b"\n\r\n", start) >= 0:
                self._scanned = 0
                return False
            self._scanned = max(0, len(buf) - 3)
            return None
        self._scanned = 0
        end += 4
        parsed = _parse_fast(buf[:end]) if end <= MAX_HEAD else None
        if parsed is None:
            return False
        self.buf = buf[end:]
        return parsed

    async def read_request(self) -> tuple[_Head, int | None] | None:
        """The next request head and, when llhttp parsed it, its body length (None: h11 parses this request);
        None when the client closed (or stayed idle too long) between requests."""
        if PARSER == "llhttp":
            got = self._fast_head()
            while got is None and not self.buf:  # idle: nothing of a request yet
                if not await self._read_idle():
                    return None
                got = self._fast_head()
            if got is None:  # a head has begun: HEAD_TIMEOUT from here
                try:
                    async with asyncio.timeout(HEAD_TIMEOUT):
                        while got is None:
                            await self._read()
                            got = self._fast_head()
                except TimeoutError:
                    raise BadRequest("request head not received in time") from None
            if got is True:
                return None
            if got is not False:
                head, length = got
                return head, length
        h = self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.h11_parses = True
        buf, self.buf = self.buf.lstrip(b"\r\n"), b""
        if buf:
            h.receive_data(buf)
        if self.eof:
            h.receive_data(b"")
        try:
            event = h.next_event()
            if event is h11.NEED_DATA:
                while event is h11.NEED_DATA and not h.trailing_data[0]:  # idle: nothing of a request yet
                    if not await self._read_idle():
                        return None
                    event = h.next_event()
                if event is h11.NEED_DATA:  # a head has begun: HEAD_TIMEOUT from here
                    try:
                        async with asyncio.timeout(HEAD_TIMEOUT):
                            while event is h11.NEED_DATA:
                                await self._read()
                                event = h.next_event()
                    except TimeoutError:
                        raise BadRequest("request head not received in time") from None
        except h11.RemoteProtocolError as e:
            raise BadRequest(str(e) or "malformed request") from e
        if type(event) is h11.Request:
            return _Head(event.method, event.target, event.http_version, event.headers.raw_items()), None
        return None  # ConnectionClosed

    async def wait_closed_by_peer(self) -> None:
        while not self.eof:
            await self._read()
        # the EOF is left for the next request read to notice

    def next_cycle(self) -> bool:
        """Get ready for the next request on a keep-alive connection; False when the connection must close.

        A response that h11 framed: h11 decides (both sides DONE, not MUST_CLOSE). A fast-path response is
        only sent for a keep-alive HTTP/1.1 request read whole (see :meth:`Exchange.complete`). If h11 parsed
        the request, the bytes it holds past the request go back to :attr:`buf`, where the next request is
        read from (by llhttp, or by a fresh h11 state: as after ``start_next_cycle``).
        """
        h, self.h11 = self.h11, None
        fast_cycle, self.fast_cycle = self.fast_cycle, False
        h11_parsed, self.h11_parses = self.h11_parses, False
        if self.switched:
            return False
        if h is None:  # llhttp parsed the request, the fast path framed the response
            return True
        if h.their_state is not h11.DONE or (not fast_cycle and h.our_state is not h11.DONE):
            return False  # closing (MUST_CLOSE), or the exchange did not finish
        if h11_parsed:
            early, closed = h.trailing_data
            self.buf = bytes(early)
            if closed:
                self.eof = True
        return True

    async def write(self, data: bytes) -> None:
        if not data:
            return
        try:
            self.writer.write(data)
            if self.writer.transport.get_write_buffer_size() or self.writer.transport.is_closing():
                await self.writer.drain()  # the kernel did not take it all (or the connection is closing): wait
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
        """Bind and start accepting; returns the bound (host, port) pairs. Raises OSError if it cannot bind.

        TLS is :class:`~swarmha.manager.tls.HalfCloseTLS`, not asyncio's SSL transport: a client's close_notify
        must end only its own direction of a hijacked connection (the docker CLI sends one when stdin ends).
        """
        if ssl_context is None:
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
                conn.close()

    async def _serve(self, conn: _Conn, task: asyncio.Task[None]) -> None:
        while not self._closing:
            self._idle.add(task)
            try:
                request = await conn.read_request()
                exchange = Exchange(conn, *request) if request is not None else None
            except BadRequest as e:
                await self._bad_request(conn, str(e))
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
            if not conn.next_cycle():
                return  # switched, closing (MUST_CLOSE), or the exchange did not finish

    async def _bad_request(self, conn: _Conn, message: str) -> None:
        """400 and close (raw bytes: h11 may be in its ERROR state by now)."""
        body = json.dumps({"message": f"bad request: {message}"}).encode() + b"\n"
        head = (
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        )
        with contextlib.suppress(Exception):
            await conn.write(head + body)
