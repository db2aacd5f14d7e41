"""What the parts of one ZooKeeper Discovery share: its connections, one lock, one timer, the watch hub, a read cache.

:class:`Core` is built once per Discovery and handed to the parts (:mod:`._queue`, :mod:`._session`,
:mod:`._watch`) and the facade (:mod:`._discovery`); none of them calls back into another's object, so the facade
is only the Discovery contract. It holds:

* the read connection (``shared``: reads and watches, no ephemerals) and one connection per session ``ttl``
  (:meth:`Core.connection`), made on first use; :meth:`Core.stop` stops them all;
* ``lock``, the one lock of the Discovery's bookkeeping (held only around dict updates, never over a request);
* ``timer``, the one thread of timed callbacks (session deadlines, ticket turn checks, pipelined operations'
  timeouts); ``pipeline``, which runs the pipelined operations (:mod:`._async`);
* ``hub``, one kazoo watcher per (connection, znode) fanned out to every subscriber;
* the read cache: the last Record read of a path with its ``mzxid`` (an entry's data never changes, so a holder's
  Record is read once), bounded to :data:`CACHE_LIMIT` paths.

Failure modes: :meth:`Core.connection` raises ``DiscoveryError`` once the Discovery is closed; :meth:`Core.read`
raises what :meth:`~._connection.Connection.op` raises.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

from kazoo.exceptions import NoNodeError

from swarmha.discovery._base import Record
from swarmha.discovery._url import DiscoveryURL
from swarmha.discovery.zookeeper._async import Operation, Pipeline, Request, block
from swarmha.discovery.zookeeper._connection import Checkable, Connection
from swarmha.discovery.zookeeper._entry import record
from swarmha.discovery.zookeeper._hub import Hub
from swarmha.discovery.zookeeper._timer import Timer
from swarmha.errors import DiscoveryError

__all__ = ["CACHE_LIMIT", "SHARED_SESSION_TIMEOUT", "Core"]

log = logging.getLogger("swarmha.discovery.zookeeper")

#: Longest session timeout of the read connection (it holds no ephemerals; expiry only costs a re-arm of the
#: watches). It is also ``timeout`` when that is shorter, so that its session is not kept long for nothing; the
#: wait for a handshake the server never answers is bounded by ``timeout`` on every connection
#: (:func:`~._connection.handshake_hosts`).
SHARED_SESSION_TIMEOUT = 10.0
#: Paths the read cache (and the set of known queues) holds at most: above the keys one process campaigns for
#: (with 4,096 and 10,000 keys, every read of a key asked whether it is a queue again and re-read its holder).
CACHE_LIMIT = 65536


class Core:
    """See the module docstring. Thread-safe. Also what a :class:`~._connection.Connection` needs of its owner."""

    log = log

    def __init__(
        self,
        url: DiscoveryURL,
        timeout: float,
        hosts: str,
        auth_data: list[tuple[str, str]] | None,
        acl: list[Any] | None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.hosts = hosts
        self.auth_data = auth_data
        self.acl = acl
        self.lock = threading.Lock()
        self._closed = False
        self._reads: dict[str, tuple[Record, int]] = {}  # path -> (record, mzxid) of the last read
        self._conns: dict[float, Connection] = {}  # ttl -> the connection whose ZooKeeper session backs Sessions
        self.timer = Timer("swarmha-zk-timer")
        self.pipeline = Pipeline(self.timer, timeout)  # runs the pipelined forms (see _async)
        self.hub = Hub()
        self.shared = self._connect(min(SHARED_SESSION_TIMEOUT, timeout), "shared")

    @property
    def closed(self) -> bool:
        return self._closed

    def _connect(self, session_timeout: float, what: str) -> Connection:
        conn = Connection(self, session_timeout, what)
        conn.on_connected(lambda replaced: self.hub.wake_all() if replaced else None)
        conn.start()
        return conn

    def connection(self, ttl: float) -> Connection:
        """The connection whose ZooKeeper session (timeout ``ttl``) backs every Session of ``ttl``."""
        with self.lock:
            if self._closed:
                raise DiscoveryError(f"ZooKeeper discovery {self.url} is closed")
            conn = self._conns.get(ttl)
            if conn is None:
                conn = self._conns[ttl] = self._connect(ttl, f"sessions(ttl={ttl:g})")
            return conn

    def close(self) -> bool:
        """Mark the Discovery closed (no new connection is made); False if it was already."""
        with self.lock:
            if self._closed:
                return False
            self._closed = True
            return True

    def stop(self) -> None:
        """Stop the timer and every connection (their ZooKeeper sessions end: every key held through them goes)."""
        with self.lock:
            conns = list(self._conns.values())
        self.pipeline.close()
        self.timer.stop()
        for conn in conns:
            conn.stop()
        self.shared.stop()

    # -- the read cache ------------------------------------------------------------------------------------------

    def remember(self, path: str, found: Record | None, mzxid: int = 0) -> None:
        """Cache ``found`` as ``path``'s Record at ``mzxid``; None forgets the path."""
        with self.lock:
            if found is None:
                self._reads.pop(path, None)
                return
            if path not in self._reads and len(self._reads) >= CACHE_LIMIT:
                self._reads.pop(next(iter(self._reads)))
            self._reads[path] = (found, mzxid)

    def cached(self, path: str, czxid: int, mzxid: int) -> Record | None:
        """The cached Record of ``path`` if it is still that znode (``czxid``) at that version (``mzxid``)."""
        with self.lock:
            known = self._reads.get(path)
        if known is not None and known[0].token == czxid and known[1] == mzxid:
            return known[0]
        return None

    def cached_entry(self, path: str) -> Record | None:
        """The cached Record of a queue entry (its data never changes), if any."""
        with self.lock:
            known = self._reads.get(path)
        return None if known is None else known[0]

    def read(self, path: str, conn: Connection | None = None, session: Checkable | None = None) -> Record | None:
        """Read ``path`` (through ``conn``, else the read connection) and cache it; None if it does not exist."""
        return block(self.read_steps(path, conn, session))

    def read_steps(
        self, path: str, conn: Connection | None = None, session: Checkable | None = None
    ) -> Operation[Record | None]:
        """:meth:`read` as an operation (:mod:`._async`)."""
        try:
            data, stat = yield Request(conn or self.shared, "get", functools.partial(_get, path=path), session)
        except NoNodeError:
            self.remember(path, None)
            return None
        found = record(data, stat, path)
        self.remember(path, found, int(stat.mzxid))
        return found


def _get(client: Any, path: str) -> Any:
    return client.get_async(path)
