"""One interface over swarmha and the peers it is compared with: a *contender* campaigns for one lock/leadership.

Each contender owns its own client connection (as a separate process would). ``campaign()`` starts trying in
the background and returns at once; ``elected`` is set, and ``elected_at`` holds ``time.monotonic()``, the
moment the contender knows it leads; ``release()`` gives leadership up gracefully; ``close()`` frees
everything (threads joined, connections closed). A contender campaigns once: build a new one for the next term.

Systems (``SYSTEMS``), with the settings a fair comparison needs (the same ttl everywhere):

* ``swarmha``: ``swarmha.Candidate(...).run_for_election()``; release = ``stop()``.
* ``kazoo-lock``: ``KazooClient(timeout=ttl).Lock(path).acquire()``; release = ``lock.release()``.
* ``kazoo-election``: ``KazooClient(timeout=ttl).Election(path).run(func)``; release = ``func`` returns.
* ``etcd-lock``: ``pyetcd.client(host, port).lock(name, ttl)`` (the python-etcd3 API lock from
  ``etcd-sdk-python``): ``acquire(timeout=None)``; release = ``lock.release()``. The lock does not keep its
  lease alive by itself; the holder calls ``lock.refresh()`` every ttl/3 (what a user has to do).
* ``tooz``: tooz's ZooKeeper coordinator, ``watch_elected_as_leader`` and a ``heartbeat(); run_watchers()``
  loop every ``TOOZ_INTERVAL`` (0.1 s, the loop in tooz's leader-election example); release =
  ``stand_down_group_leader`` after leaving the loop. tooz elects inside ``run_watchers`` with a
  non-blocking kazoo Lock attempt, so a waiting member polls.
* ``pg-advisory-lock``: the PostgreSQL recipe: ``SELECT pg_advisory_lock(hashtext(key))`` on a psycopg connection
  of its own (the server wakes the waiter as the holder unlocks); release = ``pg_advisory_unlock``. A session-level
  lock: it needs a direct connection (not through a transaction pooler) and no one notices its loss.
* ``tooz-redis``: the same tooz loop on tooz's Redis driver (``redis://HOST:PORT?timeout=ttl``); release = the
  coordinator's ``stop()`` (the driver has no ``stand_down_group_leader``; stopping releases its leader lock).
* ``redis-lock``: redis-py's ``Lock(client, name, timeout=ttl)`` (``thread_local=False``: it is released from
  another thread than the one that took it): ``acquire()`` (blocking, retried every 0.1 s,
  its default ``sleep``); the holder extends it every ttl/3; release = ``lock.release()``.
* ``python-redis-lock``: ``redis_lock.Lock(client, name, expire=ttl, auto_renewal=True)``: ``acquire()`` waits
  on ``BLPOP`` of the lock's signal list, which ``release()`` pushes to.

Run as ``python -m benchmarks.contenders --system S --url U --key K --node N --ttl T`` it is one contender
process for the crash-failover runs: it prints ``{"event": "ready"}``, campaigns, prints
``{"event": "elected", "t": <CLOCK_MONOTONIC>}`` once it leads, and runs until SIGTERM (or SIGKILL).

Targets are swarmha discovery URLs (``zk://127.0.0.1:PORT/prefix``, ``etcd://127.0.0.1:PORT/prefix``); peers
use the host and port of the URL and put their keys under the same prefix.
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import swarmha

__all__ = ["SYSTEMS", "TOOZ_INTERVAL", "Contender", "backend_of"]

#: Period of the tooz member's ``heartbeat(); run_watchers()`` loop (tooz's leader-election example sleeps 0.1 s).
TOOZ_INTERVAL = 0.1
JOIN_TIMEOUT = 10.0
REDIS_PEERS = {"tooz-redis": "redis", "redis-lock": "redis", "python-redis-lock": "redis"}

logging.getLogger("kazoo").setLevel(logging.CRITICAL)
logging.getLogger("swarmha").setLevel(logging.CRITICAL)


def _split(url: str) -> tuple[str, str, str]:
    """``(scheme, "host:port,...", prefix)`` of a discovery URL."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.netloc, parts.path.strip("/")


def backend_of(system: str) -> str:
    """The backend a peer system runs on (swarmha runs on every backend: returns "")."""
    peers = {"kazoo-lock": "zk", "kazoo-election": "zk", "tooz": "zk", "etcd-lock": "etcd", **REDIS_PEERS}
    return {**peers, "pg-advisory-lock": "postgres"}.get(system, "")


class Contender(abc.ABC):
    """One campaigning participant (see the module docstring)."""

    def __init__(self, url: str, key: str, node: str, ttl: float) -> None:
        self.url, self.key, self.node, self.ttl = url, key, node, ttl
        self.elected = threading.Event()
        self.elected_at = 0.0
        self._thread: threading.Thread | None = None

    def _won(self) -> None:
        self.elected_at = time.monotonic()
        self.elected.set()

    def _spawn(self, target: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=target, name=f"contender-{self.node}", daemon=True)
        self._thread.start()

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT)
            self._thread = None

    @abc.abstractmethod
    def campaign(self) -> None:
        """Start trying to lead, in the background."""

    @abc.abstractmethod
    def release(self) -> None:
        """Give leadership up gracefully (or stop waiting)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Free connections and threads; idempotent."""


class SwarmhaContender(Contender):
    def __init__(self, url: str, key: str, node: str, ttl: float, discovery: Any = None) -> None:
        super().__init__(url, key, node, ttl)
        self._own = discovery is None
        self.discovery = swarmha.connect(url) if discovery is None else discovery
        self.discovery.get(key)  # connect now, not inside the measurement
        self.candidate: swarmha.Candidate | None = None

    def campaign(self) -> None:
        candidate = swarmha.Candidate(self.discovery, self.key, node=self.node, ttl=self.ttl)
        self.candidate = candidate

        def run() -> None:
            for elected in candidate.run_for_election():
                if elected and not self.elected.is_set():
                    self._won()

        self._spawn(run)

    def release(self) -> None:
        if self.candidate is not None:
            self.candidate.stop()
        self._join()

    def close(self) -> None:
        self.release()
        if self._own:
            self.discovery.close()


class _KazooContender(Contender):
    def __init__(self, url: str, key: str, node: str, ttl: float) -> None:
        from kazoo.client import KazooClient

        super().__init__(url, key, node, ttl)
        _, hosts, prefix = _split(url)
        self.path = f"/{prefix}/{key}" if prefix else f"/{key}"
        self.client = KazooClient(hosts=hosts, timeout=ttl)
        self.client.start(timeout=10)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.release()
        with contextlib.suppress(Exception):
            self.client.stop()
            self.client.close()


class KazooLockContender(_KazooContender):
    def campaign(self) -> None:
        self.lock = self.client.Lock(self.path, self.node)

        def run() -> None:
            if self.lock.acquire():
                self._won()

        self._spawn(run)

    def release(self) -> None:
        lock = getattr(self, "lock", None)
        if lock is not None:
            if self.elected.is_set():
                lock.release()
            else:
                lock.cancel()
        self._join()


class KazooElectionContender(_KazooContender):
    def campaign(self) -> None:
        self.election = self.client.Election(self.path, self.node)
        self._done = threading.Event()

        def lead() -> None:
            self._won()
            self._done.wait()

        self._spawn(lambda: self.election.run(lead))

    def release(self) -> None:
        election = getattr(self, "election", None)
        if election is not None:
            self._done.set()
            if not self.elected.is_set():
                election.cancel()
        self._join()


class EtcdLockContender(Contender):
    def __init__(self, url: str, key: str, node: str, ttl: float) -> None:
        import pyetcd

        super().__init__(url, key, node, ttl)
        _, hosts, prefix = _split(url)
        host, port = hosts.split(",")[0].rsplit(":", 1)
        self.client = pyetcd.client(host=host, port=int(port))
        self.client.get("warm-up")
        self.name = f"{prefix}/{key}"
        self._stop = threading.Event()

    def campaign(self) -> None:
        self.lock = self.client.lock(self.name, ttl=max(1, round(self.ttl)))

        def run() -> None:
            if not self.lock.acquire(timeout=None):
                return
            self._won()
            while not self._stop.wait(self.ttl / 3.0):  # the holder keeps the lease alive itself
                with contextlib.suppress(Exception):
                    self.lock.refresh()

        self._spawn(run)

    def release(self) -> None:
        self._stop.set()
        lock = getattr(self, "lock", None)
        if lock is not None and self.elected.is_set():
            lock.release()
        self._join()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.release()
        with contextlib.suppress(Exception):
            self.client.close()


class ToozContender(Contender):
    def __init__(self, url: str, key: str, node: str, ttl: float) -> None:
        from tooz import coordination

        super().__init__(url, key, node, ttl)
        _, hosts, prefix = _split(url)
        self.group = key.replace("/", "-").encode()
        self.coordinator = coordination.get_coordinator(self._backend_url(hosts, prefix, ttl), node.encode())
        self.coordinator.start()
        with contextlib.suppress(coordination.GroupAlreadyExist):
            self.coordinator.create_group(self.group).get()
        self.coordinator.join_group(self.group).get()
        self._stop = threading.Event()

    @staticmethod
    def _backend_url(hosts: str, prefix: str, ttl: float) -> str:
        return f"zookeeper://{hosts}?timeout={max(1, round(ttl))}&namespace={prefix or 'tooz'}"

    def _on_elected(self, event: Any) -> None:
        self._won()

    def campaign(self) -> None:
        self.coordinator.watch_elected_as_leader(self.group, self._on_elected)

        def run() -> None:
            while not self._stop.is_set():
                self.coordinator.heartbeat()
                self.coordinator.run_watchers()
                self._stop.wait(TOOZ_INTERVAL)

        self._spawn(run)

    def release(self) -> None:
        self._stop.set()
        self._join()
        with contextlib.suppress(Exception):
            self.coordinator.unwatch_elected_as_leader(self.group, self._on_elected)
        if self.elected.is_set():
            self.coordinator.stand_down_group_leader(self.group)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.release()
        with contextlib.suppress(Exception):
            self.coordinator.stop()


class PgAdvisoryLockContender(Contender):
    def __init__(self, url: str, key: str, node: str, ttl: float) -> None:
        import psycopg

        super().__init__(url, key, node, ttl)
        parts = urllib.parse.urlsplit(url)
        prefix = urllib.parse.parse_qs(parts.query).get("prefix", [""])[0]
        self.name = f"{prefix}/{key}"
        conninfo = urllib.parse.urlunsplit(("postgresql", parts.netloc, parts.path, "", ""))
        self.conn = psycopg.connect(conninfo, autocommit=True)

    def campaign(self) -> None:
        def run() -> None:
            with contextlib.suppress(Exception):  # a cancelled wait
                self.conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (self.name,))
                self._won()

        self._spawn(run)

    def release(self) -> None:
        if self.elected.is_set():
            self._join()
            self.conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (self.name,))
        else:
            with contextlib.suppress(Exception):
                self.conn.cancel_safe()
            self._join()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.release()
        with contextlib.suppress(Exception):
            self.conn.close()


class ToozRedisContender(ToozContender):
    @staticmethod
    def _backend_url(hosts: str, prefix: str, ttl: float) -> str:
        return f"redis://{hosts}?timeout={max(1, round(ttl))}&namespace={prefix or 'tooz'}"

    def release(self) -> None:
        """tooz's Redis driver has no ``stand_down_group_leader``: stopping the coordinator releases its locks."""
        self._stop.set()
        self._join()
        if self.elected.is_set():
            self.coordinator.stop()


class _RedisContender(Contender):
    def __init__(self, url: str, key: str, node: str, ttl: float) -> None:
        import redis

        super().__init__(url, key, node, ttl)
        _, hosts, prefix = _split(url)
        host, port = hosts.split(",")[0].rsplit(":", 1)
        self.client = redis.Redis(host=host, port=int(port))
        self.client.ping()
        self.name = f"{prefix}/{key}"
        self._stop = threading.Event()
        self.lock: Any = None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.release()
        with contextlib.suppress(Exception):
            self.client.close()


class RedisLockContender(_RedisContender):
    def campaign(self) -> None:
        self.lock = self.client.lock(self.name, timeout=self.ttl, thread_local=False)  # released from another thread

        def run() -> None:
            if not self.lock.acquire(blocking=True):
                return
            self._won()
            while not self._stop.wait(self.ttl / 3.0):  # the holder keeps the lock alive itself
                with contextlib.suppress(Exception):
                    self.lock.extend(self.ttl, replace_ttl=True)

        self._spawn(run)

    def release(self) -> None:
        self._stop.set()
        if self.lock is not None and self.elected.is_set():
            with contextlib.suppress(Exception):
                self.lock.release()
        self._join()


class PythonRedisLockContender(_RedisContender):
    def campaign(self) -> None:
        import redis_lock

        self.lock = redis_lock.Lock(self.client, self.name, expire=max(1, round(self.ttl)), auto_renewal=True)

        def run() -> None:
            if self.lock.acquire(blocking=True):
                self._won()

        self._spawn(run)

    def release(self) -> None:
        if self.lock is not None and self.elected.is_set():
            with contextlib.suppress(Exception):
                self.lock.release()
        self._join()


SYSTEMS: dict[str, type[Contender]] = {
    "swarmha": SwarmhaContender,
    "kazoo-lock": KazooLockContender,
    "kazoo-election": KazooElectionContender,
    "etcd-lock": EtcdLockContender,
    "tooz": ToozContender,
    "pg-advisory-lock": PgAdvisoryLockContender,
    "tooz-redis": ToozRedisContender,
    "redis-lock": RedisLockContender,
    "python-redis-lock": PythonRedisLockContender,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="one contender process (crash failover; graceful handover between processes: 'release' on stdin)"
    )
    parser.add_argument("--system", choices=sorted(SYSTEMS), required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--ttl", type=float, required=True)
    args = parser.parse_args(argv)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    contender = SYSTEMS[args.system](args.url, args.key, args.node, args.ttl)

    said = threading.Lock()

    def say(**line: object) -> None:
        with said:
            sys.stdout.write(json.dumps({"node": args.node, **line}) + "\n")
            sys.stdout.flush()

    def commands() -> None:  # "release" on stdin: give leadership up now (graceful handover runs)
        for command in sys.stdin:
            if command.strip() == "release":
                released = time.monotonic()
                contender.release()
                say(event="released", t=released)

    threading.Thread(target=commands, name="commands", daemon=True).start()
    say(event="ready")
    contender.campaign()
    while not stopping.is_set():
        if contender.elected.wait(0.05):
            say(event="elected", t=contender.elected_at)
            break
    stopping.wait(3600)
    contender.close()


if __name__ == "__main__":
    main()
