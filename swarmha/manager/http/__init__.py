"""A small asyncio HTTP/1.1 server on h11 (and llhttp), with the one extra an API front needs: hijacking.

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
  framing and keep the connection open). Also refused where h11 is lenient and Go's net/http is not:
  a Content-Length holding a list (``2, 2``), DEL (0x7f) in a header value, an absolute-form target that is
  no URL (``http://[/``): 400; an HTTP version other than 1.0 and 1.1: 505. A handler that raises gets a 500
  JSON error if no response was started, else the connection is closed.
* A request body that fails part-way (the client leaves, bad chunk framing) ends the exchange at once: the
  handler's read raises (:class:`ClientGone`, :class:`BadRequest`), the bytes it held of the
  :class:`BodyBudget` are given back, the client gets 400 when no answer was started, and the connection
  closes. A body from which nothing arrives for ``body_timeout`` seconds (:data:`BODY_TIMEOUT` by default)
  ends the same way with 408.
* A body refused unread (413, 503) is answered, then up to its declared length (at most
  :data:`~._wire.LINGER_LIMIT` bytes, 5 s) is read and dropped before the close, so the client reads its
  answer instead of a reset.
* Memory per connection is bounded whatever the client sends: a head by :data:`MAX_HEAD`, bodies by the
  budget, and bytes sent during a streamed response (:meth:`Exchange.client_closed`) by
  :data:`~._wire.MAX_EARLY` (past it they are dropped and the connection closes after the exchange).
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
* A server given ``quick`` may answer a request of the common kind straight from the protocol, with the same
  bytes as the ordinary path, while its connection waits with nothing buffered (see :mod:`.server`).
* :meth:`Server.close` stops accepting at once; :meth:`Server.drain` waits (bounded) for in-flight exchanges,
  then cancels what is left. Idle keep-alive connections are closed at once on close.

Layout (imports go down this list only): :mod:`._wire` (limits, errors, the parsed head, the body budget),
:mod:`.tls` (TLS with half-close), :mod:`._conn` (one connection), :mod:`.parsers` (the connection class per
parser: h11 alone, or llhttp first; a server picks one once), :mod:`._exchange` (one request and its answer),
:mod:`.server` (accept, serve, drain; the quick answers). Nothing here knows the application's API: it reads its
own meaning into :attr:`Exchange.path` (the path as sent) and passes its certificates as an :class:`ssl.SSLContext`.
"""

from __future__ import annotations

from swarmha.manager.http._exchange import Exchange
from swarmha.manager.http._wire import (
    BODY_BUDGET,
    BODY_TIMEOUT,
    HEAD_TIMEOUT,
    MAX_BODY,
    MAX_CONTENT_LENGTH,
    MAX_HEAD,
    READ_SIZE,
    BadRequest,
    BodyBudget,
    BodyRefused,
    ClientGone,
    ErrorBody,
    Head,
    header_value,
    plain_error,
)
from swarmha.manager.http.parsers import DEFAULT, H11Conn, LlhttpConn
from swarmha.manager.http.server import Handler, Quick, Server

__all__ = [
    "BODY_BUDGET",
    "BODY_TIMEOUT",
    "DEFAULT",
    "HEAD_TIMEOUT",
    "MAX_BODY",
    "MAX_CONTENT_LENGTH",
    "MAX_HEAD",
    "READ_SIZE",
    "BadRequest",
    "BodyBudget",
    "BodyRefused",
    "ClientGone",
    "ErrorBody",
    "Exchange",
    "H11Conn",
    "Handler",
    "Head",
    "LlhttpConn",
    "Quick",
    "Server",
    "header_value",
    "plain_error",
]
