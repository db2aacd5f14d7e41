"""Kept-alive upstream connections: reuse, stale connections, TCP_NODELAY, and per-request routing after a failover.

The first tests run the manager's HTTP server and forwarder in this process against a scripted upstream; the
last one runs three real manager processes over sqlite.
"""

from __future__ import annotations

import asyncio
import http.client
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from swarmha.manager.forward import forward
from swarmha.manager.http import Exchange, Server
from swarmha.manager.manager import loop_factory
from swarmha.manager.upstream import Pool, Upstream, UpstreamBroken, fetch
from tests.support.helpers import wait_for
from tests.support.manager import ManagerProc

pytestmark = pytest.mark.timeout(90)

# the manager runs on uvloop when it is installed (loop_factory): the in-process tests run on both loops
LOOPS = ["asyncio", *(["uvloop"] if loop_factory() is not None else [])]

OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


class Scripted:
    """A loopback upstream that answers each request with ``OK`` unless ``drop`` says to close instead."""

    def __init__(self, drop: Callable[[int, int], bool] = lambda conn, req: False) -> None:
        self.drop = drop
        self.connections = 0
        self.requests = 0
        self.nodelay: list[int] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn, n = self.connections, 0
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                n += 1
                if self.drop(conn, n):
                    return  # close without answering: what an upstream closing an idle connection looks like
                self.requests += 1
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def run_front(upstream: Scripted, client: Callable[[int], None], pool: Pool, loop: str = "asyncio") -> None:
    """Serve a front (our Server + forward through ``pool``) and the upstream; run ``client(front_port)``.

    ``loop``: "asyncio" or "uvloop" (the event loop the manager runs on when it is installed).
    """

    async def main() -> None:
        up_server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
        up = Upstream("127.0.0.1", up_server.sockets[0].getsockname()[1])

        async def handle(ex: Exchange) -> None:
            sock = ex._conn.writer.get_extra_info("socket")
            upstream.nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            await forward(ex, up, pool=pool)
            for links in pool._idle.values():
                for link in links:
                    s = link.writer.get_extra_info("socket")
                    upstream.nodelay.append(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        front = Server(handle)
        port = (await front.listen("127.0.0.1", 0))[0][1]
        try:
            await asyncio.wait_for(asyncio.to_thread(client, port), 30)
        finally:
            front.close()
            await front.drain(1)
            pool.close()
            up_server.close()

    with asyncio.Runner(loop_factory=loop_factory() if loop == "uvloop" else None) as runner:
        runner.run(main())


def get_n(n: int, method: str = "GET") -> Callable[[int], None]:
    def client(port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for _ in range(n):
                conn.request(method, "/x")
                r = conn.getresponse()
                assert (r.status, r.read()) == (200, b"ok")
        finally:
            conn.close()

    return client


@pytest.mark.parametrize("loop", LOOPS)
def test_forwarded_requests_reuse_one_upstream_connection_and_every_socket_has_nodelay(loop: str) -> None:
    upstream = Scripted()
    run_front(upstream, get_n(20), Pool(), loop)
    assert upstream.requests == 20
    assert upstream.connections == 1
    assert upstream.nodelay and all(upstream.nodelay)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_pooled_connection_the_upstream_closed_is_replaced_and_the_request_sent_again(method: str, loop: str) -> None:
    # the upstream drops the 2nd request on its first connection without answering (an idle close racing it)
    upstream = Scripted(drop=lambda conn, req: conn == 1 and req == 2)
    run_front(upstream, get_n(3, method), Pool(), loop)
    assert upstream.requests == 3
    assert upstream.connections == 2


def test_fetch_reuses_and_recovers_from_a_stale_connection() -> None:
    upstream = Scripted(drop=lambda conn, req: conn == 1 and req == 3)

    async def main() -> list[int]:
        server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
        up = Upstream("127.0.0.1", server.sockets[0].getsockname()[1])
        pool = Pool()
        try:
            return [(await fetch(pool, up, "/x")).status for _ in range(5)]
        finally:
            pool.close()
            server.close()

    assert asyncio.run(main()) == [200] * 5
    assert upstream.connections == 2


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("via", ["fetch", "forward"])
def test_a_pooled_connection_closed_between_checkout_and_write_is_replaced(
    via: str, loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upstream's close of an idle connection can land after the pool handed the connection out and before
    the request is written (a primary SIGKILLed under a replica). uvloop then raises RuntimeError from write();
    that must read as a closed connection (sent again on a fresh one), not as an internal error."""
    upstream = Scripted(drop=lambda conn, req: conn == 1 and req == 2)  # closes conn 1 instead of answering twice
    pool = Pool()

    async def closed_while_idle(up: Upstream) -> None:
        (link,) = pool._idle[up]
        await asyncio.wait_for(link.reader.read(), 5)  # the upstream closed it: EOF ...
        link.writer.transport.abort()  # ... and the transport is gone, as after the RST of a killed peer
        await asyncio.sleep(0)
        assert link.writer.is_closing()
        monkeypatch.setattr(type(link), "usable", lambda self, now, idle: True)  # the race: handed out anyway

    async def main() -> None:
        server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
        up = Upstream("127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            assert (await fetch(pool, up, "/x")).status == 200
            upstream.drop = lambda conn, req: conn == 1  # the next request on conn 1 would find it closed
            writer_closed = asyncio.ensure_future(closed_while_idle(up))
            # the idle connection is closed by the upstream only when it reads a request; make it read one
            (link,) = pool._idle[up]
            link.writer.write(b"GET /probe HTTP/1.1\r\nhost: x\r\n\r\n")
            await writer_closed
            if via == "fetch":
                assert (await fetch(pool, up, "/x")).status == 200
            else:

                async def handle(ex: Exchange) -> None:
                    await forward(ex, up, pool=pool)

                front = Server(handle)
                port = (await front.listen("127.0.0.1", 0))[0][1]
                try:
                    await asyncio.wait_for(asyncio.to_thread(get_n(1), port), 10)
                finally:
                    front.close()
                    await front.drain(1)
        finally:
            pool.close()
            server.close()

    with asyncio.Runner(loop_factory=loop_factory() if loop == "uvloop" else None) as runner:
        runner.run(main())
    assert upstream.connections == 2


@pytest.mark.parametrize("loop", LOOPS)
def test_fetch_gives_up_on_an_upstream_that_does_not_answer_in_time_and_does_not_resend(loop: str) -> None:
    """The second request on a kept-alive connection gets no answer: UpstreamBroken after the timeout, the
    connection is closed, and the request is not sent again on a new one (that is for connections closed idle)."""
    connections: list[int] = []
    requests: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await reader.readuntil(b"\r\n\r\n")
            requests.append(1)
            writer.write(OK)
            await reader.readuntil(b"\r\n\r\n")
            requests.append(2)
            await reader.read()  # no answer; returns when the other side closes
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> tuple[int, str, float]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        up = Upstream("127.0.0.1", server.sockets[0].getsockname()[1])
        pool = Pool()
        try:
            first = (await fetch(pool, up, "/x", timeout=0.3)).status
            began = time.monotonic()
            with pytest.raises(UpstreamBroken) as failed:
                await fetch(pool, up, "/x", timeout=0.3)
            took = time.monotonic() - began
            assert not pool._idle.get(up)  # the connection that timed out is not kept
            return first, str(failed.value), took
        finally:
            pool.close()
            server.close()

    with asyncio.Runner(loop_factory=loop_factory() if loop == "uvloop" else None) as runner:
        first, error, took = runner.run(main())
    assert first == 200
    assert "no answer within 0.3 s" in error
    assert 0.25 <= took < 2.0
    assert (len(connections), len(requests)) == (1, 2)


def test_pool_drops_idle_connections_to_every_upstream_but_the_current_one() -> None:
    async def main() -> tuple[int, int]:
        a = Scripted()
        b = Scripted()
        sa = await asyncio.start_server(a.serve, "127.0.0.1", 0)
        sb = await asyncio.start_server(b.serve, "127.0.0.1", 0)
        ua = Upstream("127.0.0.1", sa.sockets[0].getsockname()[1])
        ub = Upstream("127.0.0.1", sb.sockets[0].getsockname()[1])
        pool = Pool()
        await fetch(pool, ua, "/x")
        await fetch(pool, ub, "/x")
        pool.keep_only(ub)
        await fetch(pool, ua, "/x")  # a new connection: the idle one to ua was closed
        await fetch(pool, ub, "/x")  # reused
        pool.close()
        sa.close()
        sb.close()
        return a.connections, b.connections

    assert asyncio.run(main()) == (2, 1)


# -- real managers ---------------------------------------------------------------------------------------------


def _on(
    conn: http.client.HTTPConnection, path: str
) -> tuple[int, bytes]:  # one request on an existing keep-alive connection
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, r.read()


def _sees(m: ManagerProc, primary: str) -> Callable[[], bool]:
    return lambda: m.status().get("Primary") == primary


def test_keep_alive_client_gets_the_new_primary_while_the_deposed_one_holds_pooled_connections(
    tmp_path: Path,
) -> None:
    url = f"sqlite://{tmp_path}/swarmha.db"
    extra = ("--replication-ttl", "1s", "--primary-wait", "5s")
    first = ManagerProc(url, tmp_path, *extra)
    managers = [first]
    try:
        wait_for(lambda: first.role() == "Primary", 15, "a primary")
        managers += [ManagerProc(url, tmp_path, *extra), ManagerProc(url, tmp_path, *extra)]
        other, replica = managers[1], managers[2]
        for m in (other, replica):
            wait_for(_sees(m, first.addr), 15, "the replicas to see the primary")
        conn = http.client.HTTPConnection("127.0.0.1", replica.port, timeout=10)
        for _ in range(3):  # the replica now holds a kept-alive connection to the first primary
            assert _on(conn, "/v1.41/containers/json") == (200, b"[]\n")
        first.signal(signal.SIGSTOP)  # deposed by its TTL, alive, its pooled connections open but silent
        try:
            wait_for(lambda: replica.status().get("Primary") in (other.addr, replica.addr), 15, "a new primary")
            began = time.monotonic()
            assert _on(conn, "/v1.41/containers/json") == (200, b"[]\n")  # same client connection
            assert time.monotonic() - began < 3  # not stuck on the frozen primary's connection
            assert _on(conn, "/info")[0] == 200
        finally:
            first.signal(signal.SIGCONT)
        conn.close()
    finally:
        for m in managers:
            m.stop()
