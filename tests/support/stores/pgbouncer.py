"""postgresql:// through PgBouncer in transaction pool mode (Debian's ``pgbouncer``), in front of a PostgreSQL 15 of
its own (:class:`~tests.support.stores.postgres.PostgresServer`), both on free loopback ports.

stop() stops the server behind the pooler (PgBouncer keeps answering connections, but no query gets through);
start() brings it back with its data.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.stores import fresh_prefix
from tests.support.stores.postgres import DATABASE, PASSWORD, USER, PostgresServer, PostgresStoreFixture, _as_postgres


class PgBouncer:
    """One PgBouncer (transaction pooling) in front of ``server``."""

    def __init__(self, server: PostgresServer, port: int | None = None) -> None:
        self.server = server
        self.port = port or free_port()
        self.dir: Path = server.dir / "pgbouncer"
        self.dir.mkdir()
        (self.dir / "users.txt").write_text(f'"{USER}" "{PASSWORD}"\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"{DATABASE} = host=127.0.0.1 port={server.port} dbname={DATABASE}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = scram-sha-256\nauth_file = {self.dir / 'users.txt'}\n"
            "pool_mode = transaction\nmax_client_conn = 2000\ndefault_pool_size = 20\n"
            "server_connect_timeout = 2\nserver_login_retry = 0.2\nquery_wait_timeout = 10\n"
            f"logfile = {self.dir / 'log'}\npidfile = {self.dir / 'pid'}\n"
        )
        shutil.chown(self.dir, "postgres", "postgres")
        for f in self.dir.iterdir():
            shutil.chown(f, "postgres", "postgres")
        self.start()

    def start(self) -> None:
        if self.running():
            return
        _as_postgres("pgbouncer", "-d", str(self.dir / "pgbouncer.ini"))
        deadline = time.monotonic() + 10
        while not self.running() and time.monotonic() < deadline:
            time.sleep(0.05)

    def running(self) -> bool:
        try:
            pid = int((self.dir / "pid").read_text().strip())
        except (OSError, ValueError):
            return False
        return subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode == 0

    def stop(self) -> None:
        try:
            pid = int((self.dir / "pid").read_text().strip())
        except (OSError, ValueError):
            return
        subprocess.run(["kill", "-KILL", str(pid)], capture_output=True)
        deadline = time.monotonic() + 5
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        (self.dir / "pid").unlink(missing_ok=True)

    def url(self, **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}" + (f"?{query}" if query else "")


class PgBouncerStoreFixture(PostgresStoreFixture):
    """The PostgreSQL store reached through PgBouncer: stop, start, pause and resume act on the server behind it."""

    name = "pgbouncer"

    def __init__(self) -> None:
        super().__init__(PostgresServer())
        self.bouncer = PgBouncer(self.server)

    def url(self) -> str:
        return self.bouncer.url(prefix=fresh_prefix(self.name), timeout="2")

    def close(self) -> None:
        self.bouncer.stop()
        super().close()


def open_store(tmp_path_factory: pytest.TempPathFactory) -> PgBouncerStoreFixture:
    return PgBouncerStoreFixture()
