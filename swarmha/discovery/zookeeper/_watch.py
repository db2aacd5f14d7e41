"""Watches: one kazoo watcher per (connection, znode) fanned out to every subscriber, and :class:`ZkWatch`.

ZooKeeper watches are one-shot and kazoo keeps a watcher function until its znode changes. :class:`Hub` hands
kazoo the *same* function object for a znode until it fires (kazoo's tables are sets, so a thousand waiting
candidates of one key cost one server-side watch), and delivers the event to every subscriber then; a closed
watch just unsubscribes from the hub, so kazoo's private watcher tables are never edited. An event of any kind
on a znode wakes all its subscribers, which re-arm and compare with what they saw: a spurious wake-up costs a
read, never a missed change. When the connection's ZooKeeper session is replaced, kazoo fires every watcher with
a ``NONE`` event, so every watch re-arms on the new session.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kazoo.protocol.states import EventType

from swarmha.discovery._base import Record, Watch

if TYPE_CHECKING:
    from swarmha.discovery.zookeeper._connection import Connection
    from swarmha.discovery.zookeeper._discovery import ZooKeeperDiscovery
    from swarmha.discovery.zookeeper._session import ZkSession

__all__ = ["Hub", "ZkWatch"]

Subscriber = Callable[[Any], None]


class Hub:
    """See the module docstring. Thread-safe; subscribers run on kazoo's event thread and must not block."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[tuple[int, str], set[Subscriber]] = {}
        self._watchers: dict[tuple[int, str], Callable[[Any], None]] = {}

    def subscribe(self, conn: Connection, path: str, subscriber: Subscriber) -> Callable[[Any], None]:
        """Deliver the next event of ``path`` on ``conn`` to ``subscriber``; returns the watcher to give kazoo."""
        key = (id(conn), path)
        with self._lock:
            self._subs.setdefault(key, set()).add(subscriber)
            watcher = self._watchers.get(key)
            if watcher is None:

                def watcher(event: Any, key: tuple[int, str] = key) -> None:
                    self._dispatch(key, event)

                self._watchers[key] = watcher
        return watcher

    def unsubscribe(self, conn: Connection, path: str, subscriber: Subscriber) -> None:
        key = (id(conn), path)
        with self._lock:
            subs = self._subs.get(key)
            if subs is not None:
                subs.discard(subscriber)
                if not subs:
                    del self._subs[key]

    def _dispatch(self, key: tuple[int, str], event: Any) -> None:
        with self._lock:
            self._watchers.pop(key, None)
            subs = self._subs.pop(key, set())
        for subscriber in subs:
            subscriber(event)

    def wake_all(self) -> None:
        """Wake every subscriber (they re-arm): after a client was started again, or at close."""
        with self._lock:
            subs = [s for group in self._subs.values() for s in group]
            self._subs.clear()
            self._watchers.clear()
        for subscriber in subs:
            subscriber(None)


class ZkWatch(Watch):
    """A watch on one key, re-armed (and compared with the last state seen) by :meth:`wait`.

    What is watched depends on the key (see ``ZooKeeperDiscovery.arm``): the holder's entry of a queue
    (exists-watch: fires when it goes), an empty queue's children (fires when an entry arrives), or a plain
    znode (data watch: fires on change and deletion).
    """

    def __init__(self, discovery: ZooKeeperDiscovery, path: str, seen: Record | None) -> None:
        self._d = discovery
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
                current = self._d.arm(self.path, self)
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
        self._d.unwatch(self)
        if self._notify is not None:
            self._notify()
