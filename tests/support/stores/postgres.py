"""postgresql:// test store: a real PostgreSQL 15 (Debian's) in a temp dir, run as the ``postgres`` user on a free
loopback port; stop() stops it at once (``pg_ctl stop -m immediate``, as a crash), start() brings it back with its
data. :class:`PostgresServer` is also what the PgBouncer store, the fault soak and the benchmarks start.

The server admits the role ``swarmha`` (password :data:`PASSWORD`, owner of database ``swarmha``) by password
over TCP; ``postgres`` (superuser) connects by trust over the unix socket in the server's directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.stores import fresh_prefix

BIN = Path("/usr/lib/postgresql/15/bin")
USER = "swarmha"
PASSWORD = "swarmha-pw"
DATABASE = "swarmha"


def _as_postgres(*argv: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    command = list(argv) if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(command, check=check, capture_output=True, text=True, timeout=timeout)


class PostgresServer:
    """One PostgreSQL 15 server; see the module docstring."""

    def __init__(self, workdir: Path | None = None, port: int | None = None, **settings: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="swarmha-pg-", dir=workdir))
        shutil.chown(self.dir, "postgres", "postgres")
        self.dir.chmod(0o700)
        self.data = self.dir / "data"
        self.port = port or free_port()
        self.settings = {"fsync": "off", "max_connections": "300", **settings}
        _as_postgres(
            str(BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
        )
        self.start()
        self.psql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
        self.psql(f"CREATE DATABASE {DATABASE} OWNER {USER}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, database: str = DATABASE, user: str = USER, password: str = PASSWORD, **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{user}:{password}@{self.address}/{database}" + (f"?{query}" if query else "")

    def _options(self) -> str:
        opts = [f"-p {self.port}", "-c listen_addresses=127.0.0.1", f"-k {self.dir}"]
        opts += [f"-c {k}={v}" for k, v in self.settings.items()]
        return " ".join(opts)

    def start(self) -> None:
        if self.running():
            return
        _as_postgres(
            str(BIN / "pg_ctl"), "-D", str(self.data), "-o", self._options(), "-l", str(self.dir / "log"), "-w", "start"
        )

    def running(self) -> bool:
        return _as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "status", check=False).returncode == 0

    def stop(self) -> None:
        """Stop at once, as a crash (data written so far survives)."""
        self.resume()
        _as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop", check=False)

    def pids(self) -> list[int]:
        """The postmaster and every backend."""
        pid_file = self.data / "postmaster.pid"
        try:
            master = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
        return [master, *(int(p) for p in out)]

    def pause(self) -> None:
        """SIGSTOP every process of the server: it takes connections (the kernel does) but answers nothing."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):  # a backend that just exited
                os.kill(pid, sig)

    def psql(self, command: str, database: str = "postgres") -> str:
        return _as_postgres(
            str(BIN / "psql"), "-h", str(self.dir), "-p", str(self.port), "-d", database, "-v", "ON_ERROR_STOP=1",
            "-Atc", command,
        ).stdout  # fmt: skip

    def backends(self, user: str = USER) -> int:
        """Connections of ``user`` open now."""
        return int(self.psql(f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{user}'").strip())

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresStoreFixture:
    name = "postgres"
    can_stop = True

    def __init__(self, server: PostgresServer) -> None:
        self.server = server

    def url(self) -> str:
        return self.server.url(prefix=fresh_prefix(self.name), timeout="2")

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()

    def pause(self) -> None:
        self.server.pause()

    def resume(self) -> None:
        self.server.resume()

    def close(self) -> None:
        self.server.close()


def open_store(tmp_path_factory: pytest.TempPathFactory) -> PostgresStoreFixture:
    # Not under tmp_path_factory: its directories are root's, closed to the postgres user.
    return PostgresStoreFixture(PostgresServer())
