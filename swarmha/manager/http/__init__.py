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

Layout: :mod:`._exchange` (one request and its answer), :mod:`._conn` (one connection), :mod:`.parsers` (h11
alone, or llhttp first: one class each), :mod:`.server` (accept, serve, drain). Nothing here knows Docker: the
application reads its own meaning into :attr:`Exchange.path` (the path as sent).
"""

from __future__ import annotations

from swarmha.manager.http._exchange import (
    BODY_BUDGET,
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
    Exchange,
    header_value,
    plain_error,
)
from swarmha.manager.http.parsers import DEFAULT, H11Parser, LlhttpFirstParser
from swarmha.manager.http.server import Handler, Server

__all__ = [
    "BODY_BUDGET",
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
    "H11Parser",
    "Handler",
    "LlhttpFirstParser",
    "Server",
    "header_value",
    "plain_error",
]
