"""The manager's quick answers (``swarmha.manager.quick``) give the ordinary path's very bytes.

In-process: a :class:`~swarmha.manager.manager.Manager` without a store or engines, its HTTP server alone on a
loopback port (no election, no refresh). Requests pipelined in one send are read the ordinary way; the same
requests sent one by one (each once the answer before arrived) are answered by the quick path.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from swarmha.manager.http import Head
from swarmha.manager.manager import Manager, ManagerConfig, loop_factory

pytestmark = pytest.mark.timeout(60)

H = b"Host: x\r\nUser-Agent: Docker-Client/28.2.2 (linux)\r\n\r\n"
REQUESTS = [b"GET /_ping HTTP/1.1\r\n" + H, b"HEAD /_ping HTTP/1.1\r\n" + H, b"GET /v1.41/_ping HTTP/1.1\r\n" + H]


def _answers(data: bytes) -> list[bytes]:
    """The answers to :data:`REQUESTS` in ``data`` (a HEAD's has a Content-Length and no body)."""
    out = []
    for request in REQUESTS:
        head, _, data = data.partition(b"\r\n\r\n")
        length = 0 if request.startswith(b"HEAD") else 2  # "OK"
        out.append(head + b"\r\n\r\n" + data[:length])
        data = data[length:]
    return out


def _read_until(s: socket.socket, got: bytes, answers: int) -> bytes:
    """Read until ``answers`` answers arrived (the last one a GET's: its body "OK" ends them)."""
    while got.count(b"HTTP/1.1 200 OK") < answers or not got.endswith((b"OK", b"\r\n\r\n")):
        data = s.recv(65536)
        assert data, "the manager closed the connection"
        got += data
    return got


@pytest.mark.parametrize("loop", ["asyncio", *(["uvloop"] if loop_factory() is not None else [])])
def test_ping_answered_at_once_is_the_ordinary_answer_byte_for_byte(loop: str) -> None:
    async def main() -> tuple[bytes, bytes, int]:
        m = Manager(ManagerConfig(listen=("127.0.0.1", 0), discovery_url="nodes://"), None)
        quick = m.server._quick
        assert quick is not None
        taken: list[bytes] = []

        def counted(head: Head) -> tuple[bytes, bytes, bytes] | None:
            got = quick(head)
            if got is not None:
                taken.append(head.target)
            return got

        m.server._quick = counted
        port = (await m.server.listen("127.0.0.1", 0))[0][1]

        def client() -> tuple[bytes, bytes]:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"".join(REQUESTS))  # pipelined in one send: read the ordinary way
                ordinary = _read_until(s, b"", len(REQUESTS))
                quick_out = b""
                for i, request in enumerate(REQUESTS):  # one by one: each once the connection waits
                    s.sendall(request)
                    quick_out = _read_until(s, quick_out, i + 1)
            return ordinary, quick_out

        try:
            ordinary, quick_out = await asyncio.wait_for(asyncio.to_thread(client), 30)
        finally:
            m.server.close()
            await m.server.drain(1)
            await m.cluster.close()
        return ordinary, quick_out, len(taken)

    with asyncio.Runner(loop_factory=loop_factory() if loop == "uvloop" else None) as runner:
        ordinary, quick_out, taken = runner.run(main())
    assert _answers(ordinary) == _answers(quick_out)
    assert _answers(ordinary)[0].startswith(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\n")
    assert b"api-version: " in _answers(ordinary)[1].lower() and _answers(ordinary)[1].endswith(b"\r\n\r\n")
    assert taken == len(REQUESTS)  # each request sent alone was answered at once
