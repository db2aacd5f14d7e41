"""The two ways a request head is read: one whole connection class each, chosen once per server (as uvicorn
chooses between its ``h11_impl`` and ``httptools_impl`` protocol classes).

* :class:`H11Conn`: h11 parses every request (head, body, framing).
* :class:`LlhttpConn`: a complete head in the buffer is first given to llhttp (httptools, the extra
  ``swarmha[fast]``) and taken from there only when it is of the common kind (:func:`_parse_fast`); every
  other request is left to :class:`H11Conn`'s way, so the verdicts are h11's (``tests/test_manager_parse.py``).

:data:`DEFAULT` is what a :class:`~swarmha.manager.http.Server` uses unless given one: llhttp first when
httptools is installed, else h11 alone.
"""

from __future__ import annotations

import asyncio
import re

import h11

try:  # llhttp (Node.js's parser) through httptools: the fast path for the common request head, see _parse_fast
    import httptools
except ImportError:  # pragma: no cover - the extra swarmha[fast] is not installed: h11 parses every request
    httptools = None  # type: ignore[assignment]

from swarmha.manager.http._conn import Conn
from swarmha.manager.http._wire import HEAD_TIMEOUT, MAX_HEAD, TOKEN, BadRequest, Head

__all__ = ["DEFAULT", "H11Conn", "LlhttpConn", "quick_head"]

#: A request head still incomplete once this many bytes arrived is read by h11 (incrementally) instead.
FAST_HEAD_MAX = 8 * 1024
# h11's request-line grammar (h11._abnf: method = token, request-target = vchar+, HTTP-version), restricted to
# HTTP/1.0 and 1.1: llhttp is laxer here (it accepts "GET  / HTTP/1.1" and versions 0.9 and 2.0)
_REQUEST_LINE = re.compile(rb"(%b) ([\x21-\x7e]+) HTTP/(1\.[01])\r\n" % TOKEN)
# request headers for which h11 parses the request (its body framing, hijacking and Host rules are h11's)
_H11_PARSES = frozenset({b"transfer-encoding", b"upgrade"})


class _Collect(list[tuple[bytes, bytes]]):
    """httptools' callback object: collects the header lines and notes the end of the head."""

    complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.append((name, value.rstrip(b" \t")))  # llhttp strips the leading OWS only; h11 strips both

    def on_headers_complete(self) -> None:
        self.complete = True


def _parse_fast(head: bytes) -> tuple[Head, int] | None:
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
    return Head(line.group(1), line.group(2), version, headers), length


#: Verdicts of :func:`quick_head` on heads of at most :data:`_SEEN_SIZE` bytes, by their bytes (clients send the same
#: few heads again and again); at most :data:`_SEEN_MAX` of them (then it starts anew): under ~1 MB.
_SEEN: dict[bytes, Head | None] = {}
_SEEN_SIZE = 1024
_SEEN_MAX = 1024


def quick_head(data: bytes) -> Head | None:
    """``data`` as one whole request that a quick answer may take (see :mod:`swarmha.manager.http.server`), or None.

    Only exactly one complete head of at most :data:`FAST_HEAD_MAX` bytes that :func:`_parse_fast` takes (so h11
    would take it the same), HTTP/1.1 without a body and without ``Connection: close`` (the connection stays
    open after the answer, as :class:`~swarmha.manager.http.Exchange` decides), no DEL in a header value (which
    the exchange refuses), and an origin-form target (``/...``). Anything else is read the ordinary way.

    The verdict depends on the bytes alone, so the same bytes get the same :class:`Head` object (remembered,
    bounded): the caller must not change it.
    """
    head = _SEEN.get(data, _SEEN)
    if head is not _SEEN:
        return head  # type: ignore[return-value]
    head = _quick_head(data)
    if len(data) <= _SEEN_SIZE:
        if len(_SEEN) >= _SEEN_MAX:
            _SEEN.clear()
        _SEEN[data] = head
    return head


def _quick_head(data: bytes) -> Head | None:
    end = len(data) - 4
    if end > FAST_HEAD_MAX or data.find(b"\r\n\r\n") != end:
        return None
    parsed = _parse_fast(data)
    if parsed is None:
        return None
    head, length = parsed
    if length or head.http_version != b"1.1" or head.target[:1] != b"/":
        return None
    for name, value in head.headers:
        if b"\x7f" in value or (name.lower() == b"connection" and b"close" in value.lower()):
            return None
    return head


_LISTED_LENGTH = re.compile(rb"\ncontent-length:[^\n]*,", re.IGNORECASE)


def _listed_length(fed: list[bytes]) -> bool:
    """Whether the head in ``fed`` (the bytes given to h11, the head first) has a Content-Length holding a list
    (``2, 2``): h11 takes it as one value and shows only that; Go's net/http answers 400."""
    raw = b"".join(fed)
    end = raw.find(b"\n\r\n")
    end2 = raw.find(b"\n\n")
    ends = [e for e in (end, end2) if e >= 0]
    return _LISTED_LENGTH.search(raw, 0, min(ends) + 1 if ends else len(raw)) is not None


class H11Conn(Conn):
    """A connection whose requests h11 parses."""

    name = "h11"

    async def read_request(self) -> tuple[Head, int | None] | None:
        """The next request, parsed by a fresh h11 state that then owns the connection's bytes until the
        exchange ends; None when the client closed (or stayed idle too long) between requests."""
        h = self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.h11_parses = True
        buf, self.buf = self.buf.lstrip(b"\r\n"), b""
        self.fed = [buf]  # what h11 gets while it reads the head (see _content_length_list)
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
        finally:
            fed, self.fed = self.fed, None
        if type(event) is h11.Request:
            headers = event.headers.raw_items()
            if fed is not None and any(n.lower() == b"content-length" for n, _ in headers) and _listed_length(fed):
                raise BadRequest("bad Content-Length: a list of values")
            return Head(event.method, event.target, event.http_version, headers), None
        return None  # ConnectionClosed


class LlhttpConn(H11Conn):
    """A connection whose common request heads llhttp reads from the buffer; h11 (:class:`H11Conn`) the rest."""

    name = "llhttp"

    async def read_request(self) -> tuple[Head, int | None] | None:
        """The next request: (head, its Content-Length) when llhttp took it from the buffer, else h11's parse."""
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
        return await super().read_request()

    def _fast_head(self) -> tuple[Head, int] | bool | None:
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


#: The connection class (the parser) a server uses unless given one.
DEFAULT: type[H11Conn] = LlhttpConn if httptools is not None else H11Conn
