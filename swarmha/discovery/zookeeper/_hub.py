"""One kazoo watcher per (connection, znode), fanned out to every subscriber.

ZooKeeper watches are one-shot and kazoo keeps a watcher function until its znode changes. :class:`Hub` hands
kazoo the *same* function object for a znode until it fires (kazoo's tables are sets, so a thousand waiting
candidates of one key cost one server-side watch), and delivers the event to every subscriber then; a closed
watch just unsubscribes from the hub, so kazoo's private watcher tables are never edited. When the connection
drops (the server forgets a connection's watches, and kazoo does not set them again on the next one) or its
ZooKeeper session is replaced, kazoo fires every watcher with a ``NONE`` event, so every subscriber re-arms.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from swarmha.discovery.zookeeper._connection import Connection

__all__ = ["Hub", "Subscriber"]

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
