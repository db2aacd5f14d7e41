"""The stores the election benchmarks run on, started by the harness, with honest request counters.

* etcd 3.4 and ZooKeeper 3.8: real servers from ``tests/support/servers.py`` (single members, loopback, free ports).
* consul: the Consul HTTP API double (``tests/support/consul_double.py``), in this process.
* sqlite: a file in a temp dir; memory: in process.
* postgres: PostgreSQL 15 from ``tests/support/stores/postgres.py`` with ``fsync=on`` (a commit waits for the disk,
  as in production).
* redis: Redis 7.0 from Debian's ``redis-server`` (``tests/support/stores/redis.py``) with its default persistence
  (no append-only file: what a default install runs).

Request counters (``Stores.requests(backend)`` → ``{name: count}``), read before and after a window:

* etcd: ``grpc_server_msg_received_total`` from the member's ``/metrics`` (every unary request, every message
  on a stream: a ``LeaseKeepAlive`` renewal, a ``WatchCreateRequest``). HTTP/2 keepalive pings are not gRPC
  messages and are not counted.
* zk: ``Received`` of the ``srvr`` four-letter word: every packet the server read, *heartbeat pings included*
  (ZooKeeper does not count pings apart). ``Connections`` comes from the same answer.
* consul: the double's count of served HTTP requests (a blocking query counts once, when it is sent).
* postgres: ``xact_commit + xact_rollback`` of the database in ``pg_stat_database`` (every request is one
  transaction); the server's statistics are flushed about once a second, so short windows read low.
* redis: calls of ``EVALSHA``/``EVAL`` in ``INFO commandstats`` (every request swarmha sends is one script, CONFIG
  and connecting aside; the commands a script runs inside are not requests, and are not counted).
* sqlite: statements seen by a trace callback on every connection the backend opens (a wrapper installed by
  the benchmark, not library code): write transactions (``BEGIN``), autocommit reads, and the change feed's
  reads of its key-change counter (``meta.kv_version``: on a notify event or its safety poll) apart as ``poll``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import socket
import sqlite3
import tempfile
import threading
import types
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.consul_double import ConsulDouble
from tests.support.servers import Cluster, etcd_cluster, zk_cluster

__all__ = ["BACKENDS", "Stores"]

BACKENDS = ["memory", "sqlite", "etcd", "zk", "consul", "postgres", "redis"]
_METRIC = re.compile(r'^grpc_server_msg_received_total\{grpc_method="(\w+)",grpc_service="([\w.]+)".*\}\s+(\S+)$')


class _SqliteCounter:
    """Counts the statements the sqlite backend runs, by kind (installed around ``sqlite3.connect``)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def install(self) -> None:
        from swarmha.discovery import sqlite as module

        real = sqlite3
        shim = types.SimpleNamespace(**{n: getattr(real, n) for n in dir(real) if not n.startswith("__")})

        def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            conn = real.connect(*args, **kwargs)
            conn.set_trace_callback(lambda sql, c=conn: self._trace(c, sql))
            return conn

        shim.connect = connect
        module.sqlite3 = shim  # type: ignore[assignment]

    def _trace(self, conn: sqlite3.Connection, sql: str) -> None:
        head = sql.lstrip()[:24].upper()
        if head.startswith("BEGIN"):
            kind = "write txn"
        elif "'kv_version'" in sql and head.startswith("SELECT"):
            kind = "poll"
        elif head.startswith("SELECT") and not conn.in_transaction:
            kind = "read"
        else:
            kind = "other"
        with self._lock:
            self.counts[kind] += 1

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {k: float(v) for k, v in self.counts.items()}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stores:
    """Starts the stores named in ``backends``; ``url(backend, prefix)`` gives a swarmha discovery URL."""

    def __init__(self, backends: list[str], zk_query: str = "", zk_extra: list[str] | None = None) -> None:
        self.backends = backends
        # ``zoo.cfg`` lines; by default hundreds of clients from one address are allowed (the idle and N=100 runs
        # of the election benchmark: ZooKeeper allows 60 by default); ``[]``: the server's defaults.
        self.zk_extra = ["maxClientCnxns=0"] if zk_extra is None else zk_extra
        self.zk_query = zk_query  # appended to swarmha's zk:// URLs, e.g. "prepare=0"
        self.tmp = Path(tempfile.mkdtemp(prefix="swarmha-bench-"))
        self.etcd: Cluster | None = None
        self.zk: Cluster | None = None
        self.consul: ConsulDouble | None = None
        self.postgres: Any = None
        self.redis: Any = None
        self.sqlite = _SqliteCounter()

    def __enter__(self) -> Stores:
        try:
            if "etcd" in self.backends:
                self.etcd = etcd_cluster(self.tmp / "etcd", 1)
            if "zk" in self.backends:
                self.zk = zk_cluster(self.tmp / "zk", 1, extra=self.zk_extra)
            if "consul" in self.backends:
                self.consul = ConsulDouble(session_ttl_min=0.001).start()
            if "sqlite" in self.backends:
                self.sqlite.install()
            if "postgres" in self.backends:
                from tests.support.stores.postgres import PostgresServer

                self.postgres = PostgresServer(fsync="on")
            if "redis" in self.backends:
                from tests.support.stores.redis import RedisServer

                self.redis = RedisServer(self.tmp / "redis", extra=["appendonly no"]).start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for cluster in (self.etcd, self.zk):
            if cluster is not None:
                cluster.close()
        if self.consul is not None:
            self.consul.close()
        if self.postgres is not None:
            self.postgres.close()
        if self.redis is not None:
            self.redis.close()
        self.etcd = self.zk = self.consul = self.postgres = self.redis = None
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)

    def url(self, backend: str, prefix: str) -> str:
        if backend == "memory":
            return f"memory://bench/{prefix}"
        if backend == "sqlite":
            return f"sqlite://{self.tmp / 'election.db'}?prefix={prefix}"
        if backend == "etcd":
            assert self.etcd is not None
            return f"etcd://{self.etcd.hosts}/{prefix}"
        if backend == "zk":
            assert self.zk is not None
            return f"zk://{self.zk.hosts}/{prefix}" + (f"?{self.zk_query}" if self.zk_query else "")
        if backend == "consul":
            assert self.consul is not None
            return self.consul.url(prefix, session_ttl_min="1ms")
        if backend == "postgres":
            assert self.postgres is not None
            return str(self.postgres.url(prefix=prefix))

        if backend == "redis":
            assert self.redis is not None
            return f"redis://{self.redis.address}/{prefix}"
        raise ValueError(backend)

    def server_pid(self, backend: str) -> int | None:
        if backend == "postgres":
            pids = self.postgres.pids() if self.postgres is not None else []
            return pids[0] if pids else None
        if backend == "redis":
            return None if self.redis is None or self.redis.proc is None else int(self.redis.proc.pid)
        cluster = {"etcd": self.etcd, "zk": self.zk}.get(backend)
        if cluster is None or cluster.members[0].proc is None:
            return None
        return cluster.members[0].proc.pid

    def server_cpu(self, backend: str) -> float | None:
        pid = self.server_pid(backend)
        return None if pid is None else _cpu_seconds(pid)

    def requests(self, backend: str) -> dict[str, float]:
        """Request counters of ``backend`` now (see the module docstring for what each counts)."""
        if backend == "etcd":
            assert self.etcd is not None
            with urllib.request.urlopen(f"http://{self.etcd.members[0].address}/metrics", timeout=5) as r:
                text = r.read().decode()
            counts: dict[str, float] = collections.defaultdict(float)
            for line in text.splitlines():
                m = _METRIC.match(line)
                if m:
                    counts[m.group(1)] += float(m.group(3))
            return dict(counts)
        if backend == "zk":
            assert self.zk is not None
            answer = b""
            with socket.create_connection(("127.0.0.1", self.zk.members[0].client_port), timeout=5) as s:
                s.sendall(b"srvr")
                while chunk := s.recv(4096):
                    answer += chunk
            text = answer.decode()
            received = re.search(r"Received: (\d+)", text)
            conns = re.search(r"Connections: (\d+)", text)
            return {
                "packets": float(received.group(1)) if received else 0.0,
                "connections": float(conns.group(1)) if conns else 0.0,
            }
        if backend == "consul":
            assert self.consul is not None
            return {"http": float(self.consul.requests)}
        if backend == "sqlite":
            return self.sqlite.snapshot()
        if backend == "postgres":
            assert self.postgres is not None
            query = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'swarmha'"
            return {"transactions": float(self.postgres.psql(query).strip() or 0)}
        if backend == "redis":
            assert self.redis is not None
            import redis

            with redis.Redis(port=self.redis.port, protocol=2) as client:
                stats = client.info("commandstats")
            return {"scripts": float(sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval")))}
        return {}


def process_cpu() -> float:
    """CPU seconds of this process so far (all threads)."""
    with contextlib.suppress(OSError):
        return _cpu_seconds(os.getpid())
    return 0.0
