"""A small HTTP/1.1 client for the manager benchmarks: blocking sockets, keep-alive, TCP_NODELAY, the same cost in
front of every target (dockerd, nginx, a primary, a replica)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

__all__ = ["FORWARDED", "Conn", "HTTPError"]

#: A list every manager forwards to the primary (a filter: not answered from a replica's own view).
FORWARDED = "/v1.41/containers/json?filters=%7B%22status%22%3A%5B%22running%22%5D%7D"


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
