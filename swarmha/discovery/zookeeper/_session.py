"""A :class:`~swarmha.discovery.Session` on ZooKeeper: a *logical* session on a shared connection.

ZooKeeper binds ephemeral znodes to the session of a connection, and one connection per Session (the old design)
cost a TCP connection, a handshake and three kazoo threads per candidate: 200 candidates exhausted the server's
``maxClientCnxns=60``. So every Session of a Discovery with the same ``ttl`` shares one connection (one ZooKeeper
session with timeout ``ttl``), and a Session is a name (``<zk session id>.<n>``) for the ephemerals it made
there: its queue entries (``lead-<name>-<sequence>``, see :mod:`._queue`) and the ephemeral keys ``put`` with it.

Guarantees and failure modes:

* Only :meth:`ZkSession.keepalive` extends a Session: the Discovery's timer closes it ``ttl`` after the last
  successful keepalive was *sent* (kazoo keeps the connection's own ZooKeeper session alive by itself, so this
  local guard is what keeps a stuck owner from holding keys for ever). Closing (or that expiry) deletes the
  Session's ephemerals by name; if the connection is down then, the deletes are sent when it is back
  (:meth:`~._connection.Connection.delete_later`); if instead the ZooKeeper session expires meanwhile, the
  server removed them already. A keepalive is one round trip, shared by every Session renewed at that moment.
* An entry create whose answer was lost (ConnectionLoss, timeout) may still have made the entry; nothing would
  track it, and once first it would hold the key, unclaimed and never expiring, for as long as the connection's
  ZooKeeper session lives. Such a queue is noted (:meth:`ZkSession.maybe_enqueued`) and the session's entries in
  it are deleted by name prefix when the session ends, or before the session queues there again.
* The ZooKeeper session of the connection is what the server expires when the *process* dies or is cut off:
  then every Session on it ends at once, with all the keys they hold (one lease per ttl per process, as etcd's
  ``concurrency.Session``). A Session whose connection's ZooKeeper session was replaced is expired.
* Safety: the server keeps the connection's session at least ``ttl`` after the last round trip it answered,
  the leader demotes itself ``renew_deadline < ttl`` after the last keepalive sent, so a cut-off leader has
  stopped leading before its keys can go. The server clamps the session timeout to ``[minSessionTimeout,
  maxSessionTimeout]`` (4 s .. 40 s with ``tickTime=2000``): a shorter ``ttl`` keeps a crashed process's keys
  up to ``minSessionTimeout``.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from kazoo.protocol.states import EventType

from swarmha.discovery._base import Record, Session
from swarmha.discovery.zookeeper._connection import Connection
from swarmha.discovery.zookeeper._core import Core
from swarmha.discovery.zookeeper._entry import ENTRY, OFF, QUIET, STALE, Entry
from swarmha.discovery.zookeeper._timer import Call
from swarmha.errors import DiscoveryUnavailable, SessionExpired

__all__ = ["TURN_CHECK_GRACE", "Owners", "ZkSession"]

#: A ticket's turn is checked this long after its predecessor went (or ttl/3 if shorter), unless a create claimed
#: it by then: the check stays off the handover's path.
TURN_CHECK_GRACE = 1.0
_numbers = itertools.count(1)


class ZkSession(Session):
    """See the module docstring. A *ticket* (``ticket=True``) has no ttl clock until a create claims its entry.

    A ticket's entry waits in a key's queue; once its predecessor is gone, :data:`TURN_CHECK_GRACE` later unless
    the entry was claimed by then, the Discovery checks whether it now holds the key; if so the ttl clock starts
    from the predecessor's departure, so a stuck owner holds the key for at most ``ttl``.
    """

    def __init__(
        self,
        core: Core,
        owners: Owners,
        conn: Connection,
        ttl: float,
        *,
        ticket: bool = False,
        check_turn: Callable[[ZkSession], None] | None = None,
    ) -> None:
        """A new Session on ``conn`` (waits up to the discovery's timeout for the connection). ``check_turn``: what
        checks a ticket's turn (:meth:`~._queue.Queues.check_turn`), called on the timer thread."""
        sent = time.monotonic()
        if not conn.connected.wait(core.timeout):
            raise DiscoveryUnavailable(f"ZooKeeper {core.url}: no connection within {core.timeout}s")
        self._core = core
        self._owners = owners
        self._check_turn_of = check_turn
        self.conn = conn
        self.ttl = ttl
        self.ticket = ticket
        self.generation = conn.generation
        self.sid = conn.session_id or 0
        self.id = f"{self.sid:x}.{next(_numbers)}"
        self.entries: dict[str, Entry] = {}  # queue (key) path -> this session's entry there
        self.plain: dict[str, int] = {}  # plain ephemeral key path -> czxid, put with this session
        #: Queue paths where an entry create of this session may have been applied although its answer was lost.
        self.unsure: set[str] = set()
        self.lock = threading.Lock()
        self._closed = False
        self._expired = False
        self._deadline = math.inf if ticket else sent + ttl
        self._expiry: Call | None = None
        self._turn: Call | None = None
        self._turn_since = math.inf  # when the entry's predecessor was seen to go
        core.timer.start()
        self._schedule()

    # -- the ttl clock ---------------------------------------------------------------------------------------

    def _schedule(self) -> None:
        """(Re)arm the expiry call at the deadline. Caller need not hold the lock."""
        with self.lock:
            if self._closed or self._expired or self._deadline == math.inf:
                return
            if self._expiry is not None:
                if self._expiry.when <= self._deadline:
                    return  # it fires first and re-arms itself from the (later) deadline
                self._expiry.cancel()
            self._expiry = self._core.timer.call_at(self._deadline, self._on_deadline)

    def _on_deadline(self) -> None:
        with self.lock:
            self._expiry = None
            if self._closed or self._expired:
                return
            if time.monotonic() < self._deadline:
                later = True
            else:
                later = False
                self._expired = True
        if later:
            self._schedule()
            return
        self._core.log.warning("ZooKeeper session %s expired: not renewed within ttl=%ss", self.id, self.ttl)
        self._drop(wait=False)

    def _drop(self, *, wait: bool = True) -> None:
        """Delete what this session made (later, if the connection is down) and forget it.

        ``wait``: return once the server answered (or the discovery's timeout passed), so that a closed Session's
        keys are gone when :meth:`close` returns; the timer thread's expiry sends the deletes without waiting.
        """
        with self.lock:
            entries = list(self.entries.values())
            self._unsteer(entries)
            plain = dict(self.plain)
            unsure = set(self.unsure)
            self.entries.clear()
            self.plain.clear()
            self.unsure.clear()
            if self._turn is not None:
                self._turn.cancel()
        timeout = self._core.timeout if wait else None
        self.conn.delete_all([entry.path for entry in entries], timeout)
        for parent in unsure:  # an entry nothing tracks would hold the key once first, for as long as conn lives
            self.conn.sweep_later(parent, self.entry_prefix)
        self._owners.delete_plain(self, plain, timeout)
        self._owners.disown(self, entries)

    @property
    def entry_prefix(self) -> str:
        """The name every queue entry of this session starts with (``lead-<id>-``)."""
        return f"{ENTRY}{self.id}-"

    def maybe_enqueued(self, parent: str) -> None:
        """An entry create in the queue ``parent`` got no answer (the connection dropped, or the request timed
        out): the server may have made the entry. Swept when this session ends, or before it queues there again
        (:meth:`~._queue.Queues.enqueue`); at once (once connected) if it has ended already."""
        with self.lock:
            ended = self._closed or self._expired
            if not ended:
                self.unsure.add(parent)
        if ended:
            self.conn.sweep_later(parent, self.entry_prefix)

    # -- tickets ---------------------------------------------------------------------------------------------

    def predecessor_gone(self, event: Any = None) -> None:
        """Watch callback (kazoo's event thread: must not block): an entry may lead now; check soon.

        If the event is the deletion of the only entry that was ahead of one of ours, that entry holds the key
        now (``first``): a create then claims it without a read, as soon as it runs; and if its steering watch was
        QUIET here, its claim lists nothing (:mod:`._steering`).
        """
        deleted = getattr(event, "type", None) == EventType.DELETED
        path = getattr(event, "path", None)
        with self.lock:
            for entry in self.entries.values():
                if deleted and not entry.claimed and entry.ahead == 1 and entry.predecessor == path:
                    entry.first = True
                    entry.steer_clear = entry.steer_state == QUIET
            if not self.ticket or self._closed or self._expired:
                return
            now = time.monotonic()
            self._turn_since = min(self._turn_since, now)
            when = now + min(TURN_CHECK_GRACE, self.ttl / 3.0)
            if self._turn is not None and self._turn.when <= when:
                return
            if self._turn is not None:
                self._turn.cancel()
            self._turn = self._core.timer.call_at(when, self._check_turn)

    def steering_changed(self, event: Any = None) -> None:
        """Watch callback of the steering prefixes of this session's entries (kazoo's event thread): an event
        on one (or a session event, or a wake-up without one) makes its entry STALE (:mod:`._steering`)."""
        path = getattr(event, "path", None)
        with self.lock:
            for entry in self.entries.values():
                if entry.steer_state != OFF and (path is None or entry.steer == path):
                    entry.steer_state = STALE

    def steering_clear(self, path: str, top: str) -> bool:
        """True once if this session's entry in the queue ``path`` became first while its steering watch on
        ``top`` was QUIET (:mod:`._steering`): the claim that follows need not list ``top``."""
        with self.lock:
            entry = self.entries.get(path)
            if entry is None:
                return False
            clear, entry.steer_clear = entry.steer_clear and entry.steer == top, False
            return clear

    def _unsteer(self, entries: list[Entry]) -> None:
        """Drop the steering watches of ``entries`` (they were claimed or leave); caller holds the lock."""
        for entry in entries:
            if entry.steer is not None and entry.steer_state != OFF:
                self._core.hub.unsubscribe(self.conn, entry.steer, self.steering_changed)
            entry.steer_state = STALE

    def _check_turn(self) -> None:
        with self.lock:
            self._turn = None
        if self._check_turn_of is not None:
            self._check_turn_of(self)

    def leads_unclaimed(self, entry: Entry) -> None:
        """``entry`` holds the key unclaimed: start the ttl clock from the predecessor's departure."""
        with self.lock:
            if not entry.claimed:
                since = min(self._turn_since, time.monotonic())
                self._deadline = min(self._deadline, since + self.ttl)
        self._schedule()

    def forget(self, entry: Entry, *, gone: bool = True) -> None:
        """Stop tracking ``entry``: close no longer deletes it. ``gone=False`` (its delete failed): the
        connection deletes it once it is back, so that no entry is ever left in a queue that nothing tracks."""
        with self.lock:
            if self.entries.get(entry.parent) is entry:
                del self.entries[entry.parent]
            self._unsteer([entry])
        if not gone:
            self.conn.delete_later(entry.path)

    def claim(self, entry: Entry, sent: float) -> None:
        """A create returned ``entry``'s Record: the session holds the key; its ttl clock runs from ``sent``."""
        with self.lock:
            if not self.alive:
                raise SessionExpired(f"ZooKeeper session {self.id} expired or was closed")
            if self.ticket and not any(e.claimed for e in self.entries.values()):
                self._deadline = sent + self.ttl  # a ticket's clock starts now (see Discovery.prepare)
            else:
                self._deadline = max(self._deadline, sent + self.ttl) if self._deadline != math.inf else sent + self.ttl
            entry.claimed = True
            self._unsteer([entry])
        self._schedule()

    # -- the Session contract ----------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Not closed, not expired here, and its connection's ZooKeeper session is still the same one."""
        return not (self._closed or self._expired) and self.conn.generation == self.generation

    def check(self) -> None:
        """Raise SessionExpired if this session is closed or lost, DiscoveryUnavailable if not connected now."""
        if not self.alive:
            raise SessionExpired(f"ZooKeeper session {self.id} expired or was closed")
        if not self.conn.connected.is_set():
            raise DiscoveryUnavailable(f"ZooKeeper session {self.id} is suspended (connection lost)")

    def keepalive(self) -> None:
        sent = time.monotonic()
        self.check()
        self.conn.confirm(sent, self)
        with self.lock:
            self.check()
            if self._deadline != math.inf:  # an unclaimed ticket's stays inf
                self._deadline = max(self._deadline, sent + self.ttl)

    def close(self) -> None:
        with self.lock:
            if self._closed:
                return
            self._closed = True
            if self._expiry is not None:
                self._expiry.cancel()
        self._drop()


class Owners:
    """Which live Sessions of one Discovery own what: the Sessions with an entry in each queue, and the plain
    ephemeral keys put with a Session (path -> czxid and that Session). Thread-safe (under the core's lock)."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._members: dict[str, set[ZkSession]] = {}  # queue path -> live Sessions with an entry there
        self._plain: dict[str, tuple[int, ZkSession]] = {}  # plain ephemeral path -> (czxid, the Session that put it)

    def note_entry(self, session: ZkSession, entry: Entry) -> None:
        """``session`` has ``entry`` in the queue ``entry.parent``."""
        with self._core.lock:
            self._members.setdefault(entry.parent, set()).add(session)

    def members(self, path: str) -> list[ZkSession]:
        """The Sessions with an entry in the queue ``path`` (as noted; a member may have ended since)."""
        with self._core.lock:
            return list(self._members.get(path, ()))

    def plain_owner(self, path: str) -> tuple[int, ZkSession] | None:
        """The czxid and the Session of the plain ephemeral key ``path`` if one of our Sessions put it."""
        with self._core.lock:
            return self._plain.get(path)

    def own_plain(self, path: str, czxid: int, session: ZkSession) -> None:
        """``session`` put the plain ephemeral ``path`` (its znode's czxid)."""
        with self._core.lock:
            self._plain[path] = (czxid, session)
        with session.lock:
            session.plain[path] = czxid

    def drop_plain(self, path: str, session: ZkSession) -> None:
        """The plain ephemeral ``path`` of ``session`` was deleted."""
        with self._core.lock:
            self._plain.pop(path, None)
        with session.lock:
            session.plain.pop(path, None)

    def owned_record(self, path: str, found: Record) -> Record:
        """A plain ephemeral put with one of our Sessions names that Session (not the connection's session)."""
        mine = self.plain_owner(path)
        if mine is not None and mine[0] == found.token:
            return Record(found.value, found.token, mine[1].id)
        return found

    def disown(self, session: ZkSession, entries: list[Entry]) -> None:
        """Forget a Session that ended (called by it) and the entries it had."""
        with self._core.lock:
            for entry in entries:
                members = self._members.get(entry.parent)
                if members is not None:
                    members.discard(session)
                    if not members:
                        del self._members[entry.parent]
        for entry in entries:
            self._core.remember(entry.path, None)

    def delete_plain(self, session: ZkSession, plain: dict[str, int], timeout: float | None) -> None:
        """Delete the plain ephemerals ``session`` put (path -> czxid; it ended) that are still those znodes.

        Waits up to ``timeout`` for the answers (None: not at all), so that once a connected Session's close
        returned its keys are gone; see :meth:`~._connection.Connection.delete_owned` for a connection that is down.
        """
        with self._core.lock:
            for path in plain:
                if self._plain.get(path, (0, None))[1] is session:
                    del self._plain[path]
        session.conn.delete_owned(plain, timeout)
