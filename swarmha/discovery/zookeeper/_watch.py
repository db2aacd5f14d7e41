"""A watch on one key: :class:`ZkWatch` arms a kazoo watcher (through the core's :class:`~._hub.Hub`) and compares.

ZooKeeper watches are one-shot. An event of any kind on a znode wakes all its subscribers, which re-arm and
compare with what they saw: a spurious wake-up costs a read, never a missed change. When the connection's
ZooKeeper session is replaced, kazoo fires every watcher with a ``NONE`` event, so every watch re-arms on the new
session.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import EventType

from swarmha.discovery._base import Record, Watch
from swarmha.discovery.zookeeper._connection import Connection
from swarmha.discovery.zookeeper._core import Core
from swarmha.discovery.zookeeper._entry import QUEUE_MARK, RACE_LIMIT, queue_order, record
from swarmha.discovery.zookeeper._queue import Queues
from swarmha.discovery.zookeeper._session import Owners, ZkSession
from swarmha.errors import DiscoveryUnavailable

__all__ = ["ZkWatch"]


class ZkWatch(Watch):
    """A watch on one key, re-armed (and compared with the last state seen) by :meth:`wait`.

    What is watched depends on the key (see :meth:`_arm`): the holder's entry of a queue (exists-watch: fires
    when it goes), an empty queue's children (fires when an entry arrives), or a plain znode (data watch: fires
    on change and deletion).
    """

    def __init__(self, core: Core, queues: Queues, owners: Owners, path: str, seen: Record | None) -> None:
        self._core = core
        self._queues = queues
        self._owners = owners
        self.path = path
        self._seen = seen
        self._cond = threading.Condition()
        self._fired = False
        self._deleted = False  # the last event that fired was a deletion
        self._armed = False
        self._closed = False
        self.subscription: tuple[Connection, str] | None = None
        self.via: ZkSession | None = None  # the Session with an entry in the queue the watch went through
        self._notify: Callable[[], None] | None = None

    def notify(self, callback: Callable[[], None]) -> bool:
        self._notify = callback
        return True

    def fire(self, event: Any) -> None:
        via = self.via
        if via is not None and event is not None:
            via.predecessor_gone(event)  # before the waiter wakes: a create may then claim without a read
        deleted = getattr(event, "type", None) == EventType.DELETED
        with self._cond:
            self._deleted = deleted or (self._fired and self._deleted)  # a later wake-up does not hide a deletion
            self._fired = True
            self._cond.notify_all()
        if self._notify is not None:
            self._notify()

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                if self._closed:
                    return False
                if self._fired:
                    self._fired = False
                    self._armed = False
                    if self._deleted and self._seen is not None:
                        # The record the caller saw is gone: that is a change, no need to read it back. The
                        # next wait() re-arms and compares, so nothing after this is missed.
                        self._seen = None
                        self.known_absent = True
                        return True
                armed = self._armed
            if not armed:
                current = self._arm()
                with self._cond:
                    self._armed = True
                    if current != self._seen:
                        self._seen = current
                        self.known_absent = current is None
                        return True
            with self._cond:
                remaining = None if deadline is None else deadline - time.monotonic()
                if not self._cond.wait_for(lambda: self._closed or self._fired, remaining):
                    return False

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        sub, self.subscription = self.subscription, None
        if sub is not None:
            self._core.hub.unsubscribe(sub[0], sub[1], self.fire)
        if self._notify is not None:
            self._notify()

    def _via(self) -> ZkSession | None:
        """A live, connected Session of this Discovery with an entry in the queue ``path``, if any.

        A watch on that queue goes through its connection rather than the read one: the reads that follow are
        ordered after the event on that connection, and a waiting ticket's create can then skip a read.
        """
        path = self.path
        members = self._owners.members(path)
        usable = []
        for s in members:
            entry = s.entries.get(path)
            if entry is not None and s.alive and s.conn.connected.is_set():
                usable.append((entry.claimed, s.id, s))  # a waiting ticket first
        return min(usable, key=lambda u: (u[0], u[1]))[2] if usable else None

    def _arm(self) -> Record | None:
        """Set a watcher for the next change of key ``path`` and return the key's state at that moment.

        A queue: an exists-watch on the holder's entry, or (empty) a child watch on the queue. A plain key: a
        data watch, or (absent) an exists-watch for its creation. Through :meth:`_via`'s session's connection if
        there is one (``self.via``), else the read connection.
        """
        path = self.path
        via = self._via()
        conn = via.conn if via is not None else self._core.shared
        self.via = via

        def subscribe(target: str) -> Any:
            old = self.subscription
            if old is not None and old != (conn, target):
                self._core.hub.unsubscribe(old[0], old[1], self.fire)
            self.subscription = (conn, target)
            return self._core.hub.subscribe(conn, target, self.fire)

        for _ in range(RACE_LIMIT):
            kind = self._queues.kind(path)
            if kind is None:
                callback = subscribe(path)
                if conn.op("watch", functools.partial(_exists, path=path, watch=callback), session=via) is None:
                    return None
                continue  # created meanwhile
            if kind == "plain":
                callback = subscribe(path)
                try:
                    data, stat = conn.op("watch", functools.partial(_get, path=path, watch=callback), session=via)
                except NoNodeError:
                    continue
                if data == QUEUE_MARK:
                    continue
                found = self._owners.owned_record(
                    path, self._core.cached(path, int(stat.czxid), int(stat.mzxid)) or record(data, stat, path)
                )
                self._core.remember(path, found, int(stat.mzxid))
                return found
            names = self._queues.entries(path, conn, via)
            if names is None:
                continue
            if via is not None:
                with via.lock:
                    entry = via.entries.get(path)
                    if entry is not None and not entry.claimed:
                        entry.saw(names)
            if not names:
                callback = subscribe(path)
                try:
                    children = conn.op("watch", functools.partial(_children, path=path, watch=callback), session=via)
                except NoNodeError:
                    continue
                if not queue_order(children):
                    return None
                continue  # an entry arrived meanwhile
            head = f"{path}/{names[0]}"
            callback = subscribe(head)
            stat = conn.op("watch", functools.partial(_exists, path=head, watch=callback), session=via)
            if stat is None:
                continue  # the holder left meanwhile
            held = self._core.cached(head, int(stat.czxid), int(stat.mzxid)) or self._core.read(head, conn, via)
            if held is not None:
                return held
        raise DiscoveryUnavailable(f"ZooKeeper key {path} changed under {RACE_LIMIT} watch attempts in a row")


def _exists(client: Any, path: str, watch: Any = None) -> Any:
    return client.exists_async(path, watch=watch)


def _children(client: Any, path: str, watch: Any = None) -> Any:
    return client.get_children_async(path, watch=watch)


def _get(client: Any, path: str, watch: Any = None) -> Any:
    return client.get_async(path, watch=watch)
