"""One request and its answer (:class:`Exchange`).

See :mod:`swarmha.manager.http` for the guarantees. Nothing here knows what the application serves.
"""

from __future__ import annotations

import asyncio
import http
import json
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import h11

from swarmha.manager.http._wire import (
    LINGER_LIMIT,
    MAX_BODY,
    MAX_CONTENT_LENGTH,
    MAX_HEAD,
    TOKEN,
    BadRequest,
    BodyRefused,
    ClientGone,
    Head,
    header_value,
)

if TYPE_CHECKING:
    from swarmha.manager.http._conn import Conn

__all__ = ["Exchange"]

_NO_BODY_STATUS = frozenset({204, 304})
_VERSIONS = frozenset({b"1.0", b"1.1"})
# h11's own grammar for what it sends (h11._abnf: token, field-value, reason-phrase): a response that the fast
# path of Exchange.complete frames itself must be one that h11 would have accepted byte for byte.
_FIELD_VALUE = rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?"
_HEADER_LINES = re.compile(rb"(?:%b: %b\r\n)*" % (TOKEN, _FIELD_VALUE))  # "name: value" lines as sent
_REASON = re.compile(rb"[ \t\x21-\x7e\x80-\xff]*")
# response headers that make the fast path step aside for h11 (it decides framing and keep-alive for them)
_H11_DECIDES = frozenset({b"transfer-encoding", b"connection"})


def _check_framing(http_version: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[bool, int]:
    """The request body's framing, (chunked, length), after h11 validated it; BadRequest where h11 is lenient.

    h11 accepts Transfer-Encoding with Content-Length (it uses the chunked framing and ignores the length) and
    Transfer-Encoding on HTTP/1.0. RFC 9112 §6.1 allows rejecting the first and requires treating the second as
    faulty framing, and requires closing the connection after either (h11 would keep it open): both are how
    request smuggling desynchronises two parsers, so both get 400 here (a Content-Length holding a list, ``2, 2``,
    which h11 takes and Go's net/http refuses, gets its 400 in :mod:`.parsers`, which sees the raw head). The
    rest (one chunked coding only, numeric and non-conflicting Content-Length, Host) is h11's.
    """
    chunked = False
    length: int | None = None
    for name, value in headers:
        key = name.lower()
        if key == b"transfer-encoding":
            chunked = True
        elif key == b"content-length" and length is None:  # h11 checked: digits, all values equal
            length = int(value)
    if length is not None and length > MAX_CONTENT_LENGTH:
        raise BadRequest("Content-Length out of range")
    if chunked and length is not None:
        raise BadRequest("both Transfer-Encoding and Content-Length")
    if chunked and http_version < b"1.1":
        raise BadRequest("Transfer-Encoding on an HTTP/1.0 request")
    return chunked, length or 0


class Exchange:
    """One request and the means to answer it (or to switch protocols and get the raw stream)."""

    def __init__(self, conn: Conn, request: Head, fast_length: int | None = None) -> None:
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
        if request.http_version not in _VERSIONS:  # h11 takes any HTTP/x.y; Go's net/http answers 505
            raise BadRequest(f"unsupported protocol version HTTP/{request.http_version.decode('latin-1')}", 505)
        for n, v in self.headers:  # one pass for the head size and the headers decided on below
            size += len(n) + len(v) + 4
            if b"\x7f" in v:  # h11's field-value grammar admits DEL; Go's net/http does not
                raise BadRequest(f"invalid header value for {n.decode('latin-1')!r}: DEL (0x7f)")
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
        self._reserved = 0  # bytes of the body budget this exchange holds
        self._close_after = False  # the body was refused unread: the connection closes after the answer
        self._connection = connection
        target = self.target
        if target.startswith("/"):  # origin form: "//x" is the path "//x", never an authority (urlsplit's view)
            path, _, self._query = target.partition("?")
            path = path.partition("#")[0]
        else:
            try:  # absolute form ("http://host/path"): a bad authority ("http://[/") is the client's error
                parts = urlsplit(target)
            except ValueError as e:
                raise BadRequest(f"invalid request target: {e}") from None
            path, self._query = parts.path or "/", parts.query
        #: The request's path, as sent (the application reads its own words into it).
        self.path: str = path
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
        return header_value(self.headers, name, default)

    def arg(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[-1] if values else default

    @property
    def has_body(self) -> bool:
        return self.chunked or self.content_length > 0

    async def body_chunks(self) -> AsyncIterator[bytes]:
        """The request body as it arrives (empty for a body already read).

        Raises :class:`ClientGone` when the client closes inside the body, :class:`BadRequest` for bad chunk
        framing and (408) when nothing arrives for the server's body timeout."""
        conn = self._conn
        if self._fast:
            while self._left:
                if not conn.buf:
                    await conn.read_body()
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

    @property
    def body_left(self) -> int:
        """Body bytes not read yet, as far as known (a chunked body: :data:`LINGER_LIMIT`)."""
        if self._fast:
            return self._left
        return LINGER_LIMIT if self.chunked else self.content_length

    @property
    def body_abandoned(self) -> bool:
        """The body was left unread (:meth:`abandon_body`, a refusal): the connection ends after the answer."""
        return self._close_after

    def abandon_body(self) -> None:
        """The rest of the request body will not be read: the connection closes after the answer."""
        if not self._body_done:
            self._body_done = True
            self._close_after = True

    def _refuse(self, status: int, message: str) -> BodyRefused:
        """Leave the body unread and close the connection after the answer."""
        self._body_done = True
        self._close_after = True
        return BodyRefused(status, message)

    async def body(self, limit: int = MAX_BODY) -> bytes:
        """The whole request body (empty when it was read already).

        Raises :class:`BodyRefused` 413 when it is larger than ``limit`` bytes (a declared length at once,
        without reading it; a chunked body once it passes the limit), 503 when the server's bodies in memory
        would pass its :class:`BodyBudget`. The bytes count against the budget from their arrival (a declared
        length costs nothing until its bytes come) until the exchange ends; a body that fails (the client
        leaves, bad framing, the body timeout) gives them back at once.
        """
        if self._body_done:
            return b""
        try:
            return await self._read_whole(limit)
        except BaseException:
            self.release()
            raise

    async def _read_whole(self, limit: int) -> bytes:
        declared = self.content_length
        if declared > limit:
            raise self._refuse(413, f"request body of {declared} bytes is larger than the limit of {limit} bytes")
        budget = self._conn.budget
        chunks: list[bytes] = []
        size = 0
        async for chunk in self.body_chunks():  # the budget is taken as bytes arrive, not for a declared length
            size += len(chunk)
            if size > limit:
                raise self._refuse(413, f"request body larger than the limit of {limit} bytes")
            if not budget.take(len(chunk)):
                raise self._refuse(503, "too many request bodies are being received; retry later")
            self._reserved += len(chunk)
            chunks.append(chunk)
        return b"".join(chunks)

    def release(self) -> None:
        """Give the bytes :meth:`body` took back to the budget (the server does this when the exchange ends)."""
        self._conn.budget.give(self._reserved)
        self._reserved = 0

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
        if self._close_after:
            headers = [*headers, (b"connection", b"close")]
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
        if self._close_after:
            headers = [*headers, (b"connection", b"close")]
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
        """An error answer in the application's shape (the server's :data:`ErrorBody`; plain text by default)."""
        body, content_type = self._conn.error_body(status, message)
        await self.respond(status, body, content_type)

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
