"""A loopback TCP proxy per candidate, to cut, blackhole or delay its traffic to the store.

Modes (switch at any time with :meth:`FaultProxy.set_mode`):

* ``pass`` — forward both ways.
* ``drop`` — close every open connection and refuse new ones (a crashed link: the client sees resets).
* ``blackhole`` — keep connections open but deliver nothing either way (a partition: the client sees
  silence and must time out on its own). Bytes already sent are held, not lost, and delivered in order once
  the link passes again, as TCP's retransmissions would after a partition heals.
* ``delay`` — forward each chunk after ``delay`` seconds.
* ``lossy`` — like ``blackhole``, but the bytes sent meanwhile are discarded and the streams resume after
  the gap: something TCP itself never does, only a broken middlebox. Clients see garbage (a response to
  a request they never got an answer for, a frame cut in half). The harness injects it only when asked.

Only 127.0.0.1 is ever listened on or connected to. A connection's two sockets are closed (and forgotten) as
soon as both directions ended, and readiness is polled with ``poll(2)``, which takes any descriptor number: a
soak whose clients reconnect thousands of times must not run out of descriptors or pass ``select``'s 1024 limit
(it did: every proxied connection opened after that failed, which read as a ZooKeeper ensemble refusing
sessions for a minute).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

__all__ = ["FaultProxy"]


class FaultProxy:
    def __init__(self, target: tuple[str, int]) -> None:
        assert target[0] in ("127.0.0.1", "localhost"), "the fault proxy only forwards to loopback"
        self.target = target
        self.mode = "pass"
        self.delay = 0.0
        self._lock = threading.Lock()
        self._conns: list[tuple[socket.socket, socket.socket]] = []
        self._pumping: dict[tuple[socket.socket, socket.socket], int] = {}  # directions still running
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept_loop)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name="fault-proxy")  # type: ignore[arg-type]
        t.start()
        self._threads.append(t)

    def set_mode(self, mode: str, delay: float = 0.0) -> None:
        assert mode in ("pass", "drop", "blackhole", "delay", "lossy"), mode
        with self._lock:
            self.mode, self.delay = mode, delay
            doomed = list(self._conns) if mode == "drop" else []
            if doomed:
                self._conns.clear()
        for a, b in doomed:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                mode = self.mode
            if mode == "drop":
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            # A proxy is a wire, not a TCP endpoint that adds Nagle delays: without TCP_NODELAY a request sent as
            # headers + body waited ~40 ms for a delayed ACK at each hop (measured: Consul txns 45 ms apart).
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = (client, upstream)
            with self._lock:
                self._conns.append(pair)
                self._threads = [t for t in self._threads if t.is_alive()]
                self._pumping[pair] = 2
            self._spawn(self._pump, client, upstream, pair)
            self._spawn(self._pump, upstream, client, pair)

    def _pump(self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, socket.socket]) -> None:
        try:
            poller = select.poll()
            poller.register(src, select.POLLIN)  # ValueError if drop closed the socket before this thread ran
            while not self._closed:
                with self._lock:
                    holding = self.mode == "blackhole"
                if holding:  # read nothing: the bytes wait in the kernel buffers (and the sender's)
                    time.sleep(0.02)
                    continue
                if not poller.poll(200):
                    continue
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    mode, delay = self.mode, self.delay
                if mode == "lossy":
                    continue
                if mode == "blackhole":  # switched while this chunk was read: hold it until the link passes
                    while not self._closed and self.mode == "blackhole":
                        time.sleep(0.02)
                if mode == "delay" and delay > 0:
                    time.sleep(delay)
                dst.sendall(data)
        except (OSError, ValueError):  # ValueError: a socket closed by drop while polled
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                left = self._pumping.get(pair, 1) - 1
                self._pumping[pair] = left
                if left <= 0:
                    self._pumping.pop(pair, None)
                    with contextlib.suppress(ValueError):
                        self._conns.remove(pair)
            if left <= 0:  # the other direction has ended too: nothing reads or writes these sockets any more
                for s in pair:
                    s.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.set_mode("drop")
        for t in self._threads:
            t.join(2)
