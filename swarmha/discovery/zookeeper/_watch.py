"""A watch on one key: :class:`ZkWatch` arms a kazoo watcher (through the core's :class:`~._hub.Hub`) and compares.

ZooKeeper watches are one-shot. An event of any kind on a znode wakes all its subscribers, which re-arm and
compare with what they saw: a spurious wake-up costs a read, never a missed change. When the connection drops
(the server forgets its watches; kazoo does not set them again) or its ZooKeeper session is replaced, kazoo fires
every watcher with a ``NONE`` event, so every watch re-arms once connected.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import EventType

from swarmha.discovery._base import Record, Watch
from swarmha.discovery.zookeeper._async import Operation, Request, block
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
        self._lock = threading.Lock()
        # Made by the first wait() that blocks: a watch the election's engine follows is polled and notified,
        # never waited on, and at 10,000 watches a process a condition's 7 objects each slowed every full garbage
        # collection.
        self._waiters: threading.Condition | None = None
        self._fired = False
        self._deleted = False  # the last event that fired was a deletion
        self._armed = False
        self._closed = False
        self.subscription: tuple[Connection, str] | None = None
        self.via: ZkSession | None = None  # the Session with an entry in the queue the watch went through
        self._notify: Callable[[], None] | None = None
        self._fires = 0  # events seen so far: an arm that saw one while in flight leaves the watch unarmed
        self._arming = False  # a pipelined arm is in flight (see wait)
        self._changed = False  # a pipelined arm found the key changed: the next wait returns True
        self._error: BaseException | None = None  # a pipelined arm failed: the next wait raises it

    def notify(self, callback: Callable[[], None]) -> bool:
        self._notify = callback
        return True

    def fire(self, event: Any) -> None:
        via = self.via
        if via is not None and event is not None:
            via.predecessor_gone(event)  # before the waiter wakes: a create may then claim without a read
        deleted = getattr(event, "type", None) == EventType.DELETED
        with self._lock:
            self._deleted = deleted or (self._fired and self._deleted)  # a later wake-up does not hide a deletion
            self._fired = True
            self._fires += 1
            if self._waiters is not None:
                self._waiters.notify_all()
        if self._notify is not None:
            self._notify()

    def wait(self, timeout: float | None = None) -> bool:
        """As :meth:`Watch.wait`. With a notifier and ``timeout=0`` (the election engine polling), arming does not
        block: the arm's requests are pipelined (:mod:`._async`) and the notifier is called when they answered;
        the next ``wait(0)`` then says whether the key changed (or raises the arm's error)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self._closed:
                    return False
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                if self._changed:
                    self._changed = False
                    return True
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
                pipelined = not armed and timeout == 0 and self._notify is not None
                start = pipelined and not self._arming
                if start:
                    self._arming = True
                fires = self._fires
            if pipelined:
                if start:
                    self._arm_pipelined(fires)
                return False
            if not armed:
                current = block(self._arm_steps())
                with self._lock:
                    self._armed = True
                    if current != self._seen:
                        self._seen = current
                        self.known_absent = current is None
                        return True
            with self._lock:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:  # a poll: no condition for it (see __init__)
                    return False
                if self._waiters is None:
                    self._waiters = threading.Condition(self._lock)
                if not self._waiters.wait_for(lambda: self._closed or self._fired, remaining):
                    return False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._waiters is not None:
                self._waiters.notify_all()
        sub, self.subscription = self.subscription, None
        if sub is not None:
            self._core.hub.unsubscribe(sub[0], sub[1], self.fire)
        if self._notify is not None:
            self._notify()

    def _arm_pipelined(self, fires: int) -> None:
        """Arm without blocking; the answer is looked at by the next wait (the notifier is called for it)."""

        def armed(future: Future[Record | None]) -> None:
            with self._lock:
                self._arming = False
                closed = self._closed
            if closed:  # closed while the arm was in flight: drop what it subscribed
                sub, self.subscription = self.subscription, None
                if sub is not None:
                    self._core.hub.unsubscribe(sub[0], sub[1], self.fire)
                return
            with self._lock:
                error = future.exception()
                if error is not None:
                    self._error = error
                else:
                    current = future.result()
                    self._armed = self._fires == fires  # an event since the arm began: arm again
                    if current != self._seen:
                        self._seen = current
                        self.known_absent = current is None
                        self._changed = True
            if self._notify is not None:
                self._notify()

        self._core.pipeline.run(self._arm_steps()).add_done_callback(armed)

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

    def _arm_steps(self) -> Operation[Record | None]:
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
            kind = yield from self._queues.kind_steps(path)
            if kind is None:
                callback = subscribe(path)
                if (yield Request(conn, "watch", functools.partial(_exists, path=path, watch=callback), via)) is None:
                    return None
                continue  # created meanwhile
            if kind == "plain":
                callback = subscribe(path)
                try:
                    data, stat = yield Request(conn, "watch", functools.partial(_get, path=path, watch=callback), via)
                except NoNodeError:
                    continue
                if data == QUEUE_MARK:
                    continue
                found = self._owners.owned_record(
                    path, self._core.cached(path, int(stat.czxid), int(stat.mzxid)) or record(data, stat, path)
                )
                self._core.remember(path, found, int(stat.mzxid))
                return found
            head = self._queues.head(path)
            if head is not None and not _waits_in(via, path):
                # No listing: the head seen last still heads the queue if it exists (a waiting ticket of ours
                # lists instead, to learn its own place).
                callback = subscribe(head)
                stat = yield Request(conn, "watch", functools.partial(_exists, path=head, watch=callback), via)
                if stat is not None:
                    held = self._core.cached_entry(head)
                    if held is None:
                        held = yield from self._core.read_steps(head, conn, via)
                    elif held.token != int(stat.czxid):
                        held = None  # another znode of that name: list the queue
                    if held is not None:
                        return held
                self._queues.forget_head(path, head)
                continue
            names = yield from self._queues.entries_steps(path, conn, via)
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
                    read = functools.partial(_children, path=path, watch=callback)
                    children = yield Request(conn, "watch", read, via)
                except NoNodeError:
                    continue
                if not queue_order(children):
                    return None
                continue  # an entry arrived meanwhile
            head = f"{path}/{names[0]}"
            callback = subscribe(head)
            stat = yield Request(conn, "watch", functools.partial(_exists, path=head, watch=callback), via)
            if stat is None:
                continue  # the holder left meanwhile
            held = self._core.cached(head, int(stat.czxid), int(stat.mzxid))
            if held is None:
                held = yield from self._core.read_steps(head, conn, via)
            if held is not None:
                return held
        raise DiscoveryUnavailable(f"ZooKeeper key {path} changed under {RACE_LIMIT} watch attempts in a row")


def _waits_in(via: ZkSession | None, path: str) -> bool:
    """``via`` has an unclaimed entry (a waiting ticket) in the queue ``path``."""
    if via is None:
        return False
    with via.lock:
        entry = via.entries.get(path)
    return entry is not None and not entry.claimed


def _exists(client: Any, path: str, watch: Any = None) -> Any:
    return client.exists_async(path, watch=watch)


def _children(client: Any, path: str, watch: Any = None) -> Any:
    return client.get_children_async(path, watch=watch)


def _get(client: Any, path: str, watch: Any = None) -> Any:
    return client.get_async(path, watch=watch)
