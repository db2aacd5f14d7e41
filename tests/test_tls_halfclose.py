"""swarmha.manager.http.tls.HalfCloseTLS: TLS with half-close, which asyncio's own SSL transport lacks.

The peer's close_notify must end only its direction: the server still answers after it (what the docker CLI
needs of a hijacked connection when stdin ends), and ``write_eof()`` sends close_notify while still reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from swarmha.manager.http.tls import HalfCloseTLS
from tests.support.manager import make_certs

LOOPS: list[Callable[[], asyncio.AbstractEventLoop]] = [asyncio.new_event_loop]
try:
    import uvloop

    LOOPS.append(uvloop.new_event_loop)
except ImportError:  # pragma: no cover - the fast extra is not installed
    pass


def contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    certs = make_certs(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(str(certs["node-cert"]), str(certs["node-key"]))
    server.load_verify_locations(str(certs["ca-cert"]))
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(cafile=str(certs["ca-cert"]))
    client.load_cert_chain(str(certs["node-cert"]), str(certs["node-key"]))
    return server, client


def serve(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], server_ctx: ssl.SSLContext
) -> tuple[int, Callable[[], None]]:
    """A TLS server on a thread: reads until the client's EOF, then answers ``got <n> bytes`` and write_eof()s,
    then reads again (anything after its own close_notify is counted in a second answer on the raw log)."""
    ready: list[int] = []
    started = threading.Event()
    loop = loop_factory()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # until the client's close_notify
        writer.write(f"got {len(data)} bytes".encode())
        await writer.drain()
        writer.write_eof()
        writer.close()

    async def main() -> None:  # runs until stop() cancels it
        def app() -> asyncio.StreamReaderProtocol:
            return asyncio.StreamReaderProtocol(asyncio.StreamReader(), handle)

        server = await asyncio.get_running_loop().create_server(lambda: HalfCloseTLS(server_ctx, app), "127.0.0.1", 0)
        ready.append(server.sockets[0].getsockname()[1])
        started.set()
        await asyncio.sleep(3600)

    def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(5)

    def stop() -> None:
        loop.call_soon_threadsafe(lambda: [task.cancel() for task in asyncio.all_tasks(loop)])
        thread.join(5)
        loop.close()

    return ready[0], stop


def half_closing_client(port: int, context: ssl.SSLContext, payload: bytes) -> bytes:
    """Send ``payload``, then close_notify with the socket left open (Go's CloseWrite); read until the server's."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:

        def send() -> None:
            data = outgoing.read()
            if data:
                sock.sendall(data)

        def receive() -> bool:
            data = sock.recv(65536)
            if data:
                incoming.write(data)
            else:
                incoming.write_eof()
            return bool(data)

        for _ in range(100):
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                send()
                receive()
        tls.write(payload)
        with contextlib.suppress(ssl.SSLWantReadError):  # ours is out; the server's close_notify comes later
            tls.unwrap()
        send()
        answer = b""
        for _ in range(10_000):
            try:
                chunk = tls.read(65536)
            except ssl.SSLWantReadError:
                send()
                if not receive():
                    break
                continue
            except ssl.SSLZeroReturnError:
                break  # the server's close_notify, after its answer
            if not chunk:
                break
            answer += chunk
        return answer


@pytest.mark.parametrize("loop_factory", LOOPS, ids=lambda f: f.__module__.split(".")[0])
def test_the_server_answers_after_the_clients_close_notify(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], tmp_path: Path
) -> None:
    server_ctx, client_ctx = contexts(tmp_path)
    port, stop = serve(loop_factory, server_ctx)
    try:
        assert half_closing_client(port, client_ctx, b"x" * 100_000) == b"got 100000 bytes"
    finally:
        stop()


@pytest.mark.parametrize("loop_factory", LOOPS, ids=lambda f: f.__module__.split(".")[0])
def test_a_client_without_a_certificate_is_refused(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], tmp_path: Path
) -> None:
    server_ctx, _ = contexts(tmp_path)
    anonymous = ssl.create_default_context()
    anonymous.check_hostname = False
    anonymous.verify_mode = ssl.CERT_NONE
    port, stop = serve(loop_factory, server_ctx)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            pytest.raises((ssl.SSLError, ConnectionError)),
            anonymous.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"hello")
            assert tls.recv(100) == b""  # TLS 1.3: the refusal arrives with the first read
            raise ConnectionError("closed without an answer")
    finally:
        stop()
