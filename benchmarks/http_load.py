"""A small blocking HTTP/1.1 load client for the manager benchmarks: the same cost in front of every target.

:func:`latency` times sequential requests on one keep-alive connection; :func:`throughput` counts completed
requests of a closed loop with one thread per connection. Raises :class:`HTTPError` on anything but a 200.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

__all__ = ["Conn", "HTTPError", "latency", "throughput"]


class HTTPError(Exception):
    """The target answered something unusable or the connection broke."""


class Conn:
    """One keep-alive HTTP/1.1 connection (blocking socket, TCP_NODELAY)."""

    def __init__(self, addr: str, timeout: float = 10.0) -> None:
        host, _, port = addr.rpartition(":")
        self.addr = addr
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise HTTPError("connection closed")
        self.buf += data

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self) -> bytes:
        while (i := self.buf.find(b"\r\n")) < 0:
            self._fill()
        out, self.buf = self.buf[:i], self.buf[i + 2 :]
        return out

    def head(self, method: str, path: str) -> tuple[int, dict[str, str]]:
        """Send a body-less request; read the status line and headers."""
        self.sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {self.addr}\r\nUser-Agent: bench\r\n\r\n".encode())
        while (i := self.buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        raw, self.buf = self.buf[:i], self.buf[i + 4 :]
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def chunks(self, headers: dict[str, str]) -> Iterator[bytes]:
        """The response body as it arrives (chunked or Content-Length)."""
        if "chunked" in headers.get("transfer-encoding", ""):
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    self._line()
                    return
                yield self._take(size)
                self._line()
        length = int(headers.get("content-length", "0"))
        if length:
            yield self._take(length)

    def get(self, path: str) -> tuple[int, bytes]:
        status, headers = self.head("GET", path)
        body = b"".join(self.chunks(headers))
        if headers.get("connection", "").lower() == "close":
            raise HTTPError("the server closed the connection")
        return status, body


def latency(addr: str, path: str, n: int) -> list[float]:
    """``n`` sequential requests on one keep-alive connection; seconds each."""
    conn = Conn(addr)
    out = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            status, _ = conn.get(path)
            out.append(time.perf_counter() - t0)
            if status != 200:
                raise HTTPError(f"{addr}{path}: status {status}")
    finally:
        conn.close()
    return out


def throughput(addr: str, path: str, concurrency: int, seconds: float) -> float:
    """Completed requests per second with ``concurrency`` keep-alive connections in a closed loop."""
    counts = [0] * concurrency
    errors: list[BaseException] = []
    start = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def worker(i: int) -> None:
        conn = Conn(addr)
        try:
            start.wait(10)
            while time.perf_counter() < stop_at[0]:
                status, _ = conn.get(path)
                if status != 200:
                    raise HTTPError(f"status {status}")
                counts[i] += 1
        except BaseException as e:  # reported by the caller
            errors.append(e)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    start.wait(10)
    for t in threads:
        t.join(seconds + 30)
    took = time.perf_counter() - t0
    if errors:
        raise HTTPError(f"{addr}{path}: {errors[0]!r}")
    return sum(counts) / took
