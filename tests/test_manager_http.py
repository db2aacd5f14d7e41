"""The manager's HTTP/1.1 front (llhttp for the common request head, h11 for the rest; or h11 alone): 400 for
malformed and smuggling-style framing, the rest served.

In-process: :class:`swarmha.manager.http.Server` on loopback, raw sockets as clients; every test with each
connection class (``http.H11Conn``, ``http.LlhttpConn``, and llhttp with the server's quick answers: a ``quick``
that answers every plain GET as the handler does, so each verdict and answer must stay the ordinary path's) on
each event loop.
``tests/test_manager_parse.py`` checks that every head the llhttp path accepts is one that h11 accepts with
the same meaning.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from swarmha.manager import http as front
from swarmha.manager.http import Exchange, Head, Server, header_value
from swarmha.manager.manager import loop_factory

pytestmark = pytest.mark.timeout(60)

_LOOP: list[str] = ["asyncio"]
#: The quick answers given so far by the server of the test (None: the server has no ``quick``).
_QUICK: list[int | None] = [None]


@pytest.fixture(autouse=True, params=["asyncio", *(["uvloop"] if loop_factory() is not None else [])])
def event_loop_kind(request: pytest.FixtureRequest) -> None:
    """Every test on asyncio's loop and on uvloop's (what ``swarmha manage`` runs on when it is installed)."""
    _LOOP[0] = request.param


@pytest.fixture(autouse=True, params=[*(["llhttp", "quick"] if front.parsers.httptools is not None else []), "h11"])
def parser_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test with llhttp reading request heads first (httptools installed: what the manager does), the same
    with quick answers (the manager's too), and with h11 alone (without httptools)."""
    parser = front.H11Conn if request.param == "h11" else front.LlhttpConn
    monkeypatch.setattr(front.parsers, "DEFAULT", parser)
    _QUICK[0] = 0 if request.param == "quick" else None
    return str(request.param)


def _json_error(status: int, message: str) -> tuple[bytes, str]:
    """The application's error shape (the manager passes Docker's; here a JSON one the tests read)."""
    return json.dumps({"message": message}).encode() + b"\n", "application/json"


async def _handle(ex: Exchange) -> None:
    if ex.path == "/switch":
        _reader, writer, early = await ex.switch([(b"connection", b"Upgrade"), (b"upgrade", b"tcp")])
        writer.write(b"early:" + early)
        await writer.drain()
        writer.close()
        return
    body = await ex.body()
    if ex.path == "/stream":
        await ex.start(200, [(b"content-type", b"text/plain")])
        for part in (b"a", b"bc"):
            await ex.send(part)
        await ex.end()
        return
    await ex.json(200, {"method": ex.method, "path": ex.path, "body": body.decode(), "x": ex.header("x-a")})


def _quick(head: Head) -> tuple[bytes, bytes, bytes] | None:
    """What :func:`_handle` answers to a plain GET or HEAD (no query, not /stream or /switch), given at once."""
    method = head.method.decode()
    if method not in ("GET", "HEAD") or head.target in (b"/stream", b"/switch") or b"?" in head.target:
        return None
    if b"#" in head.target:
        return None
    count = _QUICK[0]
    assert count is not None
    _QUICK[0] = count + 1
    obj = {"method": method, "path": head.target.decode("latin-1"), "body": "", "x": header_value(head.headers, "x-a")}
    return b"application/json", json.dumps(obj).encode() + b"\n", b""


def serve(client: Callable[[int], Any]) -> Any:
    """Run the front with the echo handler and ``client(port)`` in a thread; return what the client returns."""

    async def main() -> Any:
        server = Server(_handle, error_body=_json_error, quick=_quick if _QUICK[0] is not None else None)
        port = (await server.listen("127.0.0.1", 0))[0][1]
        try:
            return await asyncio.wait_for(asyncio.to_thread(client, port), 30)
        finally:
            server.close()
            await server.drain(1)

    with asyncio.Runner(loop_factory=loop_factory() if _LOOP[0] == "uvloop" else None) as runner:
        return runner.run(main())


def exchange(payload: bytes) -> Callable[[int], bytes]:
    """Send ``payload``, half-close, read everything the server sends until it closes.

    A server that closes with request bytes unread resets the connection: what arrived before counts.
    """

    def client(port: int) -> bytes:
        out = b""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            try:
                s.sendall(payload)
                with contextlib.suppress(OSError):  # ENOTCONN: the answer and the reset came first; read them
                    s.shutdown(socket.SHUT_WR)
                while data := s.recv(65536):
                    out += data
            except ConnectionResetError:
                pass
        return out

    return client


H = b"Host: x\r\n"


@pytest.mark.parametrize(
    "payload",
    [
        # framing: what request smuggling is made of
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +1\r\n\r\na",
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: nope\r\n\r\n",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nz\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n1\r\nzX0\r\n\r\n",
        # heads
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n",
        b"GET /a b HTTP/1.1\r\n" + H + b"\r\n",
        b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n",  # complete, but over MAX_HEAD
        b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 200_000,  # never complete
        b"GET / HTTP/1.1\r\n" + H,  # cut inside the head
    ],
    ids=lambda p: repr(p[:48])[2:-1],
)
def test_malformed_or_ambiguous_requests_get_400_and_a_close(payload: bytes) -> None:
    out = serve(exchange(payload))
    assert out.startswith(b"HTTP/1.1 400 "), (payload[:60], out[:200])
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    assert json.loads(body)["message"].startswith("bad request: ")


def _responses(out: bytes) -> list[dict[str, Any]]:
    bodies = []
    while out:
        head, _, rest = out.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-l")))
        bodies.append(json.loads(rest[:length]))
        out = rest[length:]
    return bodies


def test_pipelined_keep_alive_requests_are_answered_one_by_one_in_order() -> None:
    payload = (
        b"\r\nGET /v1.41/one HTTP/1.1\r\n" + H + b"\r\n"  # an empty line before a request line is ignored
        b"POST /two HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nT: x\r\n\r\n"
        b"POST /three HTTP/1.1\r\n" + H + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nde"
        b"GET /four HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n"  # obsolete folding: h11 unfolds it (RFC 9112 5.2)
    )
    got = _responses(serve(exchange(payload)))
    assert [(r["path"], r["body"]) for r in got] == [
        ("/v1.41/one", ""),
        ("/two", "abc"),
        ("/three", "de"),
        ("/four", ""),
    ]
    assert got[3]["x"] == "a b"


def test_streamed_responses_are_chunked_for_http11_and_close_delimited_for_http10() -> None:
    out = serve(exchange(b"GET /stream HTTP/1.1\r\n" + H + b"\r\n"))
    assert out.lower().endswith(b"transfer-encoding: chunked\r\n\r\n1\r\na\r\n2\r\nbc\r\n0\r\n\r\n")
    out = serve(exchange(b"GET /stream HTTP/1.0\r\n\r\n"))
    head, _, body = out.partition(b"\r\n\r\n")
    assert (b"connection: close" in head.lower(), b"transfer-encoding" in head.lower(), body) == (True, False, b"abc")


def test_head_gets_the_headers_without_a_body() -> None:
    out = serve(exchange(b"HEAD /x HTTP/1.1\r\n" + H + b"\r\nGET /y HTTP/1.1\r\n" + H + b"\r\n"))
    first, _, rest = out.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 OK") and b"content-length" in first.lower()
    assert rest.startswith(b"HTTP/1.1 200 OK")  # no body bytes in between
    assert _responses(rest)[0]["path"] == "/y"


def test_switch_answers_101_and_hands_over_the_bytes_sent_early() -> None:
    upgrade = b"Connection: Upgrade\r\nUpgrade: tcp\r\n"
    payload = b"POST /switch HTTP/1.1\r\n" + H + upgrade + b"Content-Length: 2\r\n\r\n{}raw"
    out = serve(exchange(payload))
    head, _, rest = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 UPGRADED")
    assert rest == b"early:raw"


def test_a_head_not_complete_in_time_gets_400(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(front.parsers, "HEAD_TIMEOUT", 0.3)  # where heads are read

    def client(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\n")
            return s.recv(4096)

    assert serve(client).startswith(b"HTTP/1.1 400 ")


def test_a_pipelined_request_after_a_chunked_one_and_a_body_split_across_reads() -> None:
    """Each request on its own parser: chunked (h11) then Content-Length (llhttp), the body sent in pieces."""

    def client(port: int) -> list[dict[str, Any]]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /a HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n")
            s.sendall(b"POST /b HTTP/1.1\r\n" + H + b"Content-Length: 6\r\n\r\nabc")
            out = b""
            while out.count(b"HTTP/1.1 200") < 1 or not out.endswith(b"\n"):
                out += s.recv(65536)
            s.sendall(b"def")
            s.sendall(b"GET /c HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
            while data := s.recv(65536):
                out += data
        return _responses(out)

    got = serve(client)
    assert [(r["path"], r["body"]) for r in got] == [("/a", "xy"), ("/b", "abcdef"), ("/c", "")]


@pytest.mark.parametrize("size", [300, 12_000])
def test_a_head_sent_in_small_pieces_is_served(size: int) -> None:
    """A head that arrives a few bytes at a time (past FAST_HEAD_MAX: read on by h11 from what was buffered)."""
    head = b"GET /piece HTTP/1.1\r\n" + H + b"X-A: " + b"a" * size + b"\r\nConnection: close\r\n\r\n"

    def client(port: int) -> bytes:
        out = b""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            step = max(1, len(head) // 40)
            pieces = [head[i : i + step] for i in range(0, len(head) - 8, step)]
            pieces += [bytes([c]) for c in head[len(b"".join(pieces)) :]]  # the end one byte at a time
            for piece in pieces:
                s.sendall(piece)
                time.sleep(0.002)
            while data := s.recv(65536):
                out += data
        return out

    got = _responses(serve(client))
    assert (got[0]["path"], got[0]["x"]) == ("/piece", "a" * size)


def _one_by_one(requests: list[bytes]) -> Callable[[int], bytes]:
    """Send each request once the answer to the one before arrived (a complete JSON answer); all the bytes read."""

    def client(port: int) -> bytes:
        out = b""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i, request in enumerate(requests):
                s.sendall(request)
                while len(_responses_so_far(out)) <= i:
                    data = s.recv(65536)
                    if not data:
                        return out
                    out += data
        return out

    return client


def _responses_so_far(out: bytes) -> list[bytes]:
    """The whole answers (with a Content-Length) at the start of ``out``."""
    whole = []
    while b"\r\n\r\n" in out:
        head, _, rest = out.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-l")))
        if len(rest) < length:
            break
        whole.append(head + b"\r\n\r\n" + rest[:length])
        out = rest[length:]
    return whole


def test_keep_alive_requests_one_by_one_get_the_ordinary_paths_bytes(parser_kind: str) -> None:
    """Quick answers (while the connection waits with nothing buffered) are byte for byte the exchange's, and the
    connection goes on the ordinary way in between (a POST with a body, a query, Connection: close)."""
    get = b"GET /a HTTP/1.1\r\n" + H + b"X-A: v\r\n\r\n"
    requests = [
        get,
        get.replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: keep-alive\r\n"),
        b"POST /b HTTP/1.1\r\n" + H + b"Content-Length: 2\r\n\r\nxy",
        b"GET /c?q=1 HTTP/1.1\r\n" + H + b"\r\n",
        get,
        b"GET /d HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n",
    ]
    out = serve(_one_by_one(requests))
    quick = _QUICK[0]
    answers = _responses_so_far(out)
    assert [r["path"] for r in _responses(out)] == ["/a", "/a", "/b", "/c", "/a", "/d"]
    assert answers[0] == answers[1] == answers[4]
    assert answers[0].startswith(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ")
    assert b"connection: close" in answers[5].lower()
    # the plain GETs sent once the connection waits (the first may come before it does: read the ordinary way)
    assert quick in ((2, 3) if parser_kind == "quick" else (None,))


def test_a_head_request_gets_the_ordinary_paths_head(parser_kind: str) -> None:
    """A HEAD answered at once: the head h11 frames for it (its Content-Length, no body), then the next answer."""
    head = b"HEAD /a HTTP/1.1\r\n" + H + b"\r\n"
    get = b"GET /b HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"

    def client(port: int) -> bytes:
        out = b""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /x HTTP/1.1\r\n" + H + b"\r\n")  # the connection waits once this is answered
            while not _responses_so_far(out):
                out += s.recv(65536)
            out = b""
            s.sendall(head)
            while not out.endswith(b"\r\n\r\n"):
                out += s.recv(65536)
            s.sendall(get)
            while data := s.recv(65536):
                out += data
        return out

    out = serve(client)
    first, _, rest = out.partition(b"\r\n\r\n")
    length = len(json.dumps({"method": "HEAD", "path": "/a", "body": "", "x": ""}).encode() + b"\n")
    assert first == b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d" % length
    assert rest.startswith(b"HTTP/1.1 200 OK") and _responses(rest)[0]["path"] == "/b"
    assert _QUICK[0] in ((1, 2) if parser_kind == "quick" else (None,))  # the HEAD (and the GET /x, or not yet)


def test_requests_pipelined_in_one_send_are_read_the_ordinary_way_in_order() -> None:
    payload = b"".join(b"GET /%d HTTP/1.1\r\n" % i + H + b"\r\n" for i in range(5))
    out = serve(exchange(payload))
    assert [r["path"] for r in _responses(out)] == [f"/{i}" for i in range(5)]
    assert _QUICK[0] in (None, 0)


@pytest.mark.slow
def test_quick_answers_keep_a_connection_from_the_idle_timeout_and_it_applies_after_them(
    parser_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if parser_kind != "quick":
        pytest.skip("the quick answers' own bookkeeping")
    monkeypatch.setattr(front._conn, "IDLE_TIMEOUT", 0.6)
    get = b"GET /a HTTP/1.1\r\n" + H + b"\r\n"

    def client(port: int) -> tuple[int, float]:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            answered = 0
            began = time.monotonic()
            while time.monotonic() - began < 2.0:  # busy for over three idle timeouts, answered at once each time
                s.sendall(get)
                if not s.recv(65536):
                    return answered, 0.0
                answered += 1
                time.sleep(0.05)
            idle = time.monotonic()
            assert s.recv(65536) == b""  # then closed for idling (bounded by the socket's timeout)
            return answered, time.monotonic() - idle

    answered, closed_after = serve(client)
    assert answered >= 10 and _QUICK[0] is not None and _QUICK[0] >= answered - 1
    assert 0.3 < closed_after < 5.0
