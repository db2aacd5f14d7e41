"""Watches of the PostgreSQL backend: every watch of one Discovery fed by one thread on one connection.

The ``swarmha-postgres-watch`` thread runs while any watch is open (it ends :data:`IDLE` seconds after the last one
closed; a new watch starts it again) and owns the Discovery's second connection. On it the thread:

* ``LISTEN``\\ s on the schema's channel, where every claim, put, delete and session close announces the key it
  changed (``NOTIFY`` is sent at commit, so a read after it sees the change). A notification for a watched key
  makes the thread read that key again (the keys that became due together are read in one query);
* reads every watched key again every ``poll`` seconds, the fallback where notifications cannot arrive: behind a
  transaction pooler (PgBouncer in transaction mode) ``LISTEN`` is not used at all, and the poll is all there is;
* reads a key again just after its holder's session expires by the *server's* clock (the remaining seconds come
  with every read), since an expiry is no write and announces nothing. So a crashed holder is noticed at its
  expiry, not a poll later;
* reads every watched key after it (re)connected (a notification may have been lost while it was away).

A watch is armed at the caller's ``seen`` state and the thread reads its key once right after it was opened, so a
change between the caller's read and the watch is not missed. If the thread cannot get a connection back within the
Discovery's ``timeout``, every watch open then fails (:meth:`Watch.wait` raises
:class:`~swarmha.errors.DiscoveryUnavailable`); the caller opens a new one.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg import sql

from swarmha.discovery._base import Record
from swarmha.discovery._fed import FedWatch, Outage
from swarmha.errors import DiscoveryError, DiscoveryUnavailable

__all__ = ["IDLE", "Feed", "PgWatch"]

log = logging.getLogger("swarmha.discovery.postgres")

#: Seconds the thread lingers after the last watch closed.
IDLE = 2.0
#: Keys read in one query at most.
BATCH = 1000
#: A key is read again this long after its holder's session expires by the server's clock (as measured here).
EXPIRY_MARGIN = 0.002

Row = tuple[Record | None, float | None]  # the key's live record, seconds left of its session (None: no expiry)


class PgWatch(FedWatch):
    """A watch on one key, fed by the Discovery's :class:`Feed`.

    :meth:`notify` calls back when the feed saw the key change, including when the holder's session expired by
    the server's clock: the feed reads the key again at that moment itself, so :meth:`recheck_at` stays None (a
    caller has nothing to look at on its own).
    """

    def __init__(self, feed: Feed, key: str, seen: Record | None) -> None:
        super().__init__(seen)
        self._feed = feed
        self.key = key

    def _unregister(self) -> None:
        self._feed.remove(self)


class Feed:
    """See the module docstring. ``connect()`` opens the thread's connection and tells whether to LISTEN;
    ``read(conn, keys)`` reads keys' live rows on it."""

    def __init__(
        self,
        connect: Callable[[], tuple[psycopg.Connection[Any], bool]],
        read: Callable[[psycopg.Connection[Any], list[str]], dict[str, Row]],
        channel: str,
        poll: float,
        pooled_poll: float,
        timeout: float,
    ) -> None:
        self._connect = connect
        self._read = read
        self._channel = channel
        self._poll = poll
        self._pooled_poll = pooled_poll
        self._timeout = timeout
        self._cond = threading.Condition()
        self._watches: dict[str, set[PgWatch]] = {}
        self._due: set[str] = set()
        self._expiries: list[tuple[float, str]] = []  # heap of (monotonic time, key); stale entries skipped
        self._expiry_of: dict[str, float] = {}  # key -> the time of its live entry in the heap
        self._thread: threading.Thread | None = None
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        #: Whether notifications arrive on the thread's connection (None: not connected yet).
        self.listening: bool | None = None

    def add(self, watch: PgWatch) -> None:
        with self._cond:
            if self._closed:
                watch.fail(DiscoveryError("postgresql discovery is closed"))
                return
            self._watches.setdefault(watch.key, set()).add(watch)
            self._due.add(watch.key)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="swarmha-postgres-watch", daemon=True)
                self._thread.start()
        self._wake()

    def remove(self, watch: PgWatch) -> None:
        with self._cond:
            group = self._watches.get(watch.key)
            if group is not None:
                group.discard(watch)
                if not group:
                    del self._watches[watch.key]
        self._wake()

    def _wake(self) -> None:
        with self._cond:  # never a write to a closed (and maybe reused) descriptor
            if self._wake_w >= 0:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Close every watch and end the thread (joined). Idempotent."""
        with self._cond:
            self._closed = True
            watches = [w for group in self._watches.values() for w in group]
            thread = self._thread
        for watch in watches:
            watch.close()
        self._wake()
        if thread is not None and thread is not threading.current_thread():
            thread.join(10.0)
            if thread.is_alive():
                return  # the thread still reads the pipe: leave it open
        with self._cond:
            fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    # -- the thread --------------------------------------------------------------------------------------------

    def _run(self) -> None:
        outage = Outage(self._timeout)
        conn: psycopg.Connection[Any] | None = None
        idle_since: float | None = None
        next_poll = 0.0
        try:
            while True:
                with self._cond:
                    if self._closed:
                        return
                    if not self._watches:
                        idle_since = idle_since or time.monotonic()
                        if time.monotonic() - idle_since >= IDLE:
                            return
                    else:
                        idle_since = None
                try:
                    if conn is None:
                        conn, self.listening = self._connect()
                        if self.listening:
                            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                        next_poll = 0.0  # read everything: changes while away were not announced
                        outage.ok()
                    self._drain(conn)
                    now = time.monotonic()
                    if now >= next_poll:
                        next_poll = now + (self._poll if self.listening else self._pooled_poll)
                        with self._cond:
                            self._due.update(self._watches)
                    self._refresh(conn)
                except (psycopg.Error, DiscoveryError, OSError) as e:
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.close()
                        conn = None
                    self._give_up_or_pause(outage, e)
                    continue
                self._sleep(conn, next_poll)
        except Exception:  # never let the thread die silently
            log.exception("postgresql watch thread: unexpected error")
            self._fail_all(DiscoveryUnavailable("postgresql watch thread failed"))
        finally:
            with self._cond:
                if self._thread is threading.current_thread():
                    self._thread = None
                restart = bool(self._watches) and not self._closed
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            if restart:  # a watch was added while the thread was ending
                with self._cond:
                    if self._thread is None:
                        self._thread = threading.Thread(target=self._run, name="swarmha-postgres-watch", daemon=True)
                        self._thread.start()

    def _give_up_or_pause(self, outage: Outage, error: BaseException) -> None:
        log.debug("postgresql watch connection failed: %s", error)
        if outage.failed(time.monotonic()):
            self._fail_all(DiscoveryUnavailable(f"postgresql watches could not be resumed: {error}"))
        else:
            outage.pause(self._cond, lambda: self._closed)

    def _fail_all(self, error: DiscoveryError) -> None:
        with self._cond:
            failed = [w for group in self._watches.values() for w in group]
            self._watches.clear()
            self._due.clear()
            self._expiries.clear()
            self._expiry_of.clear()
        for watch in failed:
            watch.fail(error)

    def _drain(self, conn: psycopg.Connection[Any]) -> None:
        """Take the notifications that arrived, in commit order: a claimed key (``C``) becomes due for a read; a
        deleted one (``D``) is absent from that commit on, so its watches are told at once, with no read (a later
        claim of it comes after, in a notification of its own); an empty payload makes every key due."""
        changed: dict[str, bool] = {}  # key -> deleted by the last notification about it
        everything = False
        for note in conn.notifies(timeout=0.0):
            kind, key = note.payload[:1], note.payload[1:]
            if not kind:
                everything = True
            else:
                changed.pop(key, None)
                changed[key] = kind == "D"
        if not (changed or everything):
            return
        with self._cond:
            if everything:
                self._due.update(self._watches)
            self._due.update(k for k, deleted in changed.items() if not deleted and k in self._watches)
            gone = [k for k, deleted in changed.items() if deleted and k in self._watches and k not in self._due]
        if gone:
            self._deliver(gone, {}, time.monotonic())

    def _refresh(self, conn: psycopg.Connection[Any]) -> None:
        """Read the due keys (and those whose holder's session has expired by now) and tell their watches."""
        now = time.monotonic()
        with self._cond:
            while self._expiries and self._expiries[0][0] <= now:
                at, key = heapq.heappop(self._expiries)
                if self._expiry_of.get(key) == at:
                    del self._expiry_of[key]
                    if key in self._watches:
                        self._due.add(key)
            due = sorted(self._due)
            self._due.clear()
        for start in range(0, len(due), BATCH):
            chunk = due[start : start + BATCH]
            try:
                rows = self._read(conn, chunk)
            except BaseException:
                with self._cond:
                    self._due.update(due[start:])
                raise
            self._deliver(chunk, rows, time.monotonic())

    def _deliver(self, keys: Iterable[str], rows: dict[str, Row], received: float) -> None:
        with self._cond:
            targets = [(key, list(self._watches.get(key, ()))) for key in keys]
            for key, _ in targets:
                record, left = rows.get(key, (None, None))
                if record is not None and left is not None:
                    at = received + max(0.0, left) + EXPIRY_MARGIN
                    self._expiry_of[key] = at
                    heapq.heappush(self._expiries, (at, key))
                else:
                    self._expiry_of.pop(key, None)
        for key, watches in targets:
            record = rows.get(key, (None, None))[0]
            for watch in watches:
                watch.observe(record)

    def _sleep(self, conn: psycopg.Connection[Any] | None, next_poll: float) -> None:
        """Wait for a notification, a wake-up (new watch, close), the next poll or the next expiry."""
        with self._cond:
            if self._due or self._closed:
                return
            wake = next_poll
            if self._expiries:
                wake = min(wake, self._expiries[0][0])
            if not self._watches:
                wake = min(wake, time.monotonic() + IDLE)
        waitables = [self._wake_r] if self._wake_r >= 0 else []
        if conn is not None and self.listening:
            waitables.append(conn.fileno())
        with contextlib.suppress(OSError, ValueError):
            select.select(waitables, [], [], max(0.0, wake - time.monotonic()))
        with contextlib.suppress(BlockingIOError, OSError, ValueError):
            os.read(self._wake_r, 4096)
