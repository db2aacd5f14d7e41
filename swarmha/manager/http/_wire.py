"""The HTTP server's limits, its request-side errors, the request head as parsed, and the body budget.

Shared by :mod:`._conn`, :mod:`.parsers`, :mod:`._exchange` and :mod:`.server`; imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = [
    "BODY_BUDGET",
    "BODY_TIMEOUT",
    "HEAD_TIMEOUT",
    "IDLE_TIMEOUT",
    "LINGER_LIMIT",
    "MAX_BODY",
    "MAX_CONTENT_LENGTH",
    "MAX_EARLY",
    "MAX_HEAD",
    "READ_SIZE",
    "BadRequest",
    "BodyBudget",
    "BodyRefused",
    "ClientGone",
    "ErrorBody",
    "Head",
    "QuickGate",
    "header_value",
    "plain_error",
]

#: Largest request head (request line + headers) accepted, in bytes.
MAX_HEAD = 64 * 1024
#: Seconds a client has to send a complete request head once it started one.
HEAD_TIMEOUT = 30.0
#: Seconds an idle keep-alive connection may wait for its next request.
IDLE_TIMEOUT = 120.0
#: Seconds a request body may make no progress (no byte received) before the exchange is given up.
BODY_TIMEOUT = 60.0
READ_SIZE = 64 * 1024

#: Largest request body :meth:`Exchange.body` reads into memory; a larger one is refused (413) before it is read.
MAX_BODY = 16 * 1024 * 1024
#: Bytes of request bodies that all exchanges of one server may hold in memory at once (:class:`BodyBudget`).
BODY_BUDGET = 64 * 1024 * 1024
#: The largest Content-Length accepted (a signed 64-bit integer, as Go's net/http reads it); more is a 400.
MAX_CONTENT_LENGTH = (1 << 63) - 1
#: After an answer that left a request body unread, at most this many bytes of it are read and dropped (so the
#: client reads the answer instead of a reset); a larger rest is cut.
LINGER_LIMIT = 32 * 1024 * 1024
#: What the server keeps of bytes a client sends while its response streams (a pipelined next request); past
#: it the bytes are dropped and the connection closes after the exchange.
MAX_EARLY = MAX_HEAD + READ_SIZE

#: h11's token grammar (h11._abnf), for the request line and header names.
TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"

#: How the application shapes an error answer: (status, message) -> (body, content type).
ErrorBody = Callable[[int, str], tuple[bytes, str]]


def plain_error(status: int, message: str) -> tuple[bytes, str]:
    """The default error body: the message as text."""
    return message.encode() + b"\n", "text/plain; charset=utf-8"


class ClientGone(Exception):
    """The client closed its connection (or it broke) before the exchange finished."""


class BadRequest(Exception):
    """The client sent something that is not an acceptable HTTP/1.1 request: answered with ``status`` (400; 505
    for an HTTP version other than 1.0 and 1.1; 408 for a body that stopped arriving), then the connection closes."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class BodyRefused(Exception):
    """A request body that :meth:`Exchange.body` will not buffer: ``status`` 413 (over the limit) or 503 (the
    server's :class:`BodyBudget` is spent). The answer closes the connection; the body is never read."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BodyBudget:
    """The bytes of request bodies one server holds in memory at once, shared by all its exchanges."""

    def __init__(self, total: int = BODY_BUDGET) -> None:
        self.total = total
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.total:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


class QuickGate:
    """Between a connection and the protocol under it: whether the next bytes may be answered at once (the
    connection waits for a request with nothing buffered), and when the last such answer went out."""

    __slots__ = ("armed", "last")

    def __init__(self) -> None:
        #: Set by the connection while it waits for the next request with nothing received and not parsed.
        self.armed = False
        #: The loop time of the last answer given at once (0.0: none): activity for the idle timeout.
        self.last = 0.0


class Head:
    """A request head as parsed: method, target, version, headers (names as sent, values without OWS)."""

    __slots__ = ("headers", "http_version", "method", "target")

    def __init__(self, method: bytes, target: bytes, http_version: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        self.headers = headers


def header_value(headers: list[tuple[bytes, bytes]], name: str, default: str = "") -> str:
    """The first value of header ``name`` in ``headers`` (case-insensitive), as text; ``default`` when absent."""
    key = name.lower().encode("ascii")
    for n, v in headers:
        if n.lower() == key:
            return v.decode("latin-1")
    return default
