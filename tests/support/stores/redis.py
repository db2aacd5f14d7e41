"""redis:// test store: a real ``redis-server`` (Debian's, ``/usr/bin/redis-server``; ``$SWARMHA_REDIS`` overrides)
on a free loopback port with its data in a temp dir.

``stop()`` SIGKILLs it (a crash) and ``start()`` brings it back on the same port with its data: the append-only
file is fsynced on every write (``appendfsync always``), so nothing acknowledged is lost. ``pause()``/``resume()``
SIGSTOP/SIGCONT it (the fault harness's ``store_pause``). :class:`RedisServer` is also what tests/test_redis.py
and the benchmarks start, with extra configuration lines (a password, a renamed command, Sentinel).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.support.net import free_ports
from tests.support.stores import fresh_prefix

REDIS_SERVER = os.environ.get("SWARMHA_REDIS", "/usr/bin/redis-server")
READY_TIMEOUT = 30.0


class RedisServer:
    """One ``redis-server`` (or ``redis-server --sentinel`` with ``sentinel=True``) on 127.0.0.1:``port``."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        extra: Sequence[str] = (),
        *,
        sentinel: bool = False,
        tls: bool = False,
    ) -> None:
        self.workdir = workdir
        self.port = port if port is not None else free_ports(1)[0]
        self.sentinel = sentinel
        self.tls = tls  # the port speaks TLS (``extra`` sets tls-port and the certificates)
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {workdir}",
            "daemonize no",
            "protected-mode no",
        ]
        if not sentinel:
            lines += ["appendonly yes", "appendfsync always", 'save ""']
        self.config = workdir / ("sentinel.conf" if sentinel else "redis.conf")
        self.config.write_text("\n".join([*lines, *extra]) + "\n")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        if self.proc is None or self.proc.poll() is not None:
            log = open(self.workdir / "server.log", "ab")  # noqa: SIM115 - handed to the child process
            try:
                argv = [REDIS_SERVER, str(self.config)] + (["--sentinel"] if self.sentinel else [])
                self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            finally:
                log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log_tail()}")
            if self.ping():
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server not ready within {READY_TIMEOUT}s: {self.log_tail()}")

    def ping(self) -> bool:
        """True when the server answers PING with PONG (or -NOAUTH: it serves, behind a password)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                s = raw
                if self.tls:
                    context = ssl.create_default_context()
                    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
                    s = context.wrap_socket(raw)
                s.sendall(b"PING\r\n")
                answer = s.recv(64)
        except OSError:
            return False
        return answer.startswith((b"+PONG", b"-NOAUTH")) and not answer.startswith(b"-LOADING")

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    def signal(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join((self.workdir / "server.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


class RedisStoreFixture:
    name = "redis"
    can_stop = True

    def __init__(self, workdir: Path) -> None:
        self.server = RedisServer(workdir).start()

    def url(self, **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"timeout": "2", **params}.items())
        return f"redis://{self.server.address}/{fresh_prefix(self.name)}?{query}"

    def stop(self) -> None:
        self.server.kill()

    def start(self) -> None:
        self.server.start()

    def pause(self) -> None:
        self.server.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.server.signal(signal.SIGCONT)

    def close(self) -> None:
        self.server.close()


def open_store(tmp_path_factory: pytest.TempPathFactory) -> RedisStoreFixture:
    return RedisStoreFixture(tmp_path_factory.mktemp("redis"))
