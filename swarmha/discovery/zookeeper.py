"""``zk://h1:2181,h2:2181/prefix``: the ZooKeeper backend (kazoo; ZooKeeper 3.5 or later).

URL: ``zk://[user:password@]host[:port][,host[:port]...]/prefix[?timeout=SECONDS&prepare=0|1]``; the default
port is 2181 and the path is the znode prefix (keys live at ``/prefix/svc/leader``; parents are created as persistent
znodes on first use, so the prefix need not exist, unlike a kazoo chroot). ``user:password@`` adds ZooKeeper
``digest`` auth to every connection and creates znodes with an ACL granting that identity all rights.
``timeout`` (default 5 s) bounds every request, including the wait for a connection. ``prepare=0`` turns off
tickets (below; default on).

How the contract maps to ZooKeeper:

* A ZooKeeper session belongs to a connection, so every :class:`~swarmha.discovery.Session` is **its own
  KazooClient** with session timeout ``ttl``. Closing the Session closes that client, which ends the ZooKeeper
  session: its ephemeral znodes (the leader key) vanish at once, and vanish ``timeout`` after the process dies.
  The cost is one TCP connection and three kazoo threads per live Session, and a connection handshake (a few
  ms on a LAN, tens of ms on a busy host) when it is opened. Sharing one connection would leave a leader key
  behind for as long as the process lives whenever the key's explicit delete failed, which is the bug Swarm
  classic had.
* A Session closed (by its owner or its guard) while its connection is down cannot send the CloseSession; the
  server keeps the session and its key until it expires it, and a server restarted meanwhile restores the
  session with a fresh timeout (so without more, the key of a leader demoted during a store outage blocked
  every candidate for ~``ttl`` after the store came back). So the close is done *later*: a
  ``swarmha-zk-session-close[ID]`` thread of the Discovery reattaches a new kazoo client to that session
  (``client_id``: its id and password) and sends the CloseSession as soon as a server answers. The caller of
  ``close()`` never waits for it. It ends once the close is sent, once the server answers that the session is
  gone, once the store was reachable for ``ttl`` + 2 s without either (the server has expired it by then), after
  5 minutes, or at :meth:`ZooKeeperDiscovery.close` (which joins it); in those last cases the key goes when the
  server expires the session, as before. It is safe: that client sends nothing but the close of that one
  session, which removes only that session's own ephemerals, never another session's znode; and it ends no
  term (the owner's term ended when it could not renew: the close only frees its key sooner). A close lost
  after the handshake leaves the session to expire about one session timeout after that handshake.
* The server clamps the requested session timeout to ``[minSessionTimeout, maxSessionTimeout]``, by default
  ``[2 x tickTime, 20 x tickTime]`` = 4 s .. 40 s with the usual ``tickTime=2000``, and expires sessions in
  ``tickTime`` buckets. A ``ttl`` below ``minSessionTimeout`` therefore keeps a crashed leader's key up to
  ``minSessionTimeout`` (+ one tick); lower ``tickTime``/``minSessionTimeout`` on the server for short TTLs.
* kazoo heartbeats the session on its own; to keep the contract that only ``keepalive`` extends a session, a
  guard thread per Session closes it once ``ttl`` passed since the last keepalive was sent, so a stuck owner
  loses its key after ``ttl`` as on etcd. :meth:`Session.keepalive` confirms the session:
  it raises :class:`~swarmha.errors.DiscoveryUnavailable` while the connection is SUSPENDED (so the renew
  deadline clock runs) and :class:`~swarmha.errors.SessionExpired` once it was LOST/expired (the session id
  changed or kazoo reported LOST); otherwise it makes one ``exists`` round trip.
* An election key (one :meth:`~ZooKeeperDiscovery.create` makes) is a **queue**, as in kazoo's ``Lock``: a
  persistent znode whose data is :data:`_QUEUE_MARK` and whose children are entries, ephemeral sequential
  znodes ``lead-<session id>-<sequence>`` holding each candidate's value. The first entry holds the key (what
  ``get`` returns); its token is its ``czxid`` (entries come first in creation order and zxids strictly
  increase, so each holder's token exceeds every earlier holder's). ``create`` adds the session's entry and
  reads the queue through the session's own connection; if another entry is first, a plain session's entry is
  withdrawn again (the answer is None, as for a create-if-absent).
* A **ticket** (:meth:`ZooKeeperDiscovery.prepare`, called by a candidate that starts waiting behind a
  holder) is a Session opened ahead with its entry already queued. Watches on a queue go through the
  connection of a Session of this Discovery with an entry there (a ticket first), so the ticket's connection
  sees the holder's deletion; if that entry was the only one ahead in the last read of the queue through that
  connection, ``create`` claims the key with no request at all, else after one read. The ticket's ttl clock
  starts at that claim; before, kazoo heartbeats it (a ping every ttl/3 or so), and its guard watches the
  entry's predecessor, so an entry that becomes first and is not claimed (a stuck owner) expires ``ttl`` after
  the predecessor left. Closing the ticket withdraws it.
* A key made by ``put`` is a **plain** znode (ephemeral if put with a Session); ``put`` refuses to overwrite a
  queue.
* ``delete(key, token)`` of an election key deletes the entry whose ``czxid`` is ``token``, by its name: names
  are never reused, so it can only remove that very entry, from any connection, however late it arrives.
  Of a plain key it reads the znode and compares ``czxid`` with ``token``. ZooKeeper cannot compare a
  czxid atomically, and the data version it can compare starts at 0 in every new znode, so a delete sent by
  version through any connection may remove a *later* znode of the same key (found by the fault soak: a
  deposed leader's delayed delete removed its successor's key, and a third candidate took over while the
  successor still led). So an ephemeral key is deleted only through the connection of the Session of this
  Discovery that owns it, while that session is alive: ZooKeeper runs one session's requests in order and
  refuses them once the session ended, and the session's own ephemeral cannot be replaced while it lives.
  An ephemeral key owned by any other session (or by a Session already closed or expired here) is left to
  that session's end: ``delete`` returns False. A persistent key is deleted by version through the shared
  connection, with the gap above (a delete and re-create between the read and the delete goes unnoticed).
* ``release`` (a leader's graceful exit) deletes the session's own entry by name (one round trip; the waiting
  tickets' watches fire on it), then closes the Session, which removes whatever else it holds.
* Reads, watches, ``delete``, ``list`` and ``put`` without a session use one shared KazooClient per Discovery,
  except watches on a queue in which a Session of this Discovery has an entry (above). A watch is an
  ``exists`` watch on the holder's entry (a child watch on an empty queue, a data watch on a plain key); kazoo
  re-registers watches after a reconnect, so changes made while disconnected fire then; if the shared
  client's session expires, or the Session a watch went through ends, the watch fires (may have changed) and
  is re-armed by the next :meth:`Watch.wait`.

Failure modes: connection loss, timeouts, a closed client → ``DiscoveryUnavailable``; an expired Session →
``SessionExpired``; auth/ACL failures and other server errors → ``DiscoveryError``. No kazoo exception escapes.
Threads: one ``swarmha-zk-session[ID]`` guard per open Session (see :class:`_ZkSession`), joined by its
``close()``; one ``swarmha-zk-session-close[ID]`` per session being closed later (above), ended and joined by
:meth:`ZooKeeperDiscovery.close`; kazoo runs its own connection and callback threads per client (those of a
close-later client are stopped by that thread before it ends).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    OperationTimeoutError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import EventType, KeeperState
from kazoo.retry import KazooRetry
from kazoo.security import make_digest_acl

from swarmha.discovery._base import Discovery, Record, Session, Watch, check_key, check_ttl
from swarmha.discovery._url import DiscoveryURL
from swarmha.errors import (
    ConfigurationError,
    DiscoveryError,
    DiscoveryUnavailable,
    InvalidDiscoveryURL,
    SessionExpired,
)

__all__ = ["DEFAULT_PORT", "DEFAULT_TIMEOUT", "ZooKeeperDiscovery"]

log = logging.getLogger("swarmha.discovery.zookeeper")

DEFAULT_PORT = 2181
DEFAULT_TIMEOUT = 5.0
#: Longest session timeout of the shared client (it holds no ephemerals; expiry only costs a re-arm of the
#: watches). It is also ``timeout`` when that is shorter: kazoo waits up to the requested session timeout
#: (divided by the number of hosts) for a connection handshake, so a handshake the server never answers
#: (seen in the fault soak right after a server restart) would otherwise stall reads, watches and
#: therefore every election for up to 10 s after the store is back.
SHARED_SESSION_TIMEOUT = 10.0
#: A close-later (see :meth:`ZooKeeperDiscovery._close_later`) gives up once the store was reachable (the shared
#: connection up) for the session's ttl plus this margin without closing the session: the server has expired
#: it by then (a session it can reach is not heartbeated by anyone).
CLOSE_LATER_MARGIN = 2.0
#: ... and in any case this long after it started (a store unreachable for longer expires the session itself,
#: one session timeout after it is back).
CLOSE_LATER_LIMIT = 300.0
_OPTIONS = {"timeout", "prepare"}
#: Data of a key's queue znode (see the module docstring). Not valid UTF-8, so no put() value can equal it.
_QUEUE_MARK = b"\xffswarmha-election-queue"
#: Name prefix of a queue entry: ``lead-<session id>-`` and the 10-digit sequence number ZooKeeper appends.
_ENTRY = "lead-"
#: A ticket's guard checks whether its entry holds the key this long after the predecessor went (or ttl/3 if
#: shorter), unless a create claimed it by then: the check stays off the handover's path.
TURN_CHECK_GRACE = 1.0
#: Bound of the read-again loops when a queue changes between two reads.
_RACE_LIMIT = 10
_CACHE_LIMIT = 1024
_MAX_LIST_NODES = 100_000
_T = TypeVar("_T")
# Answers, not failures: callers handle them.
_ANSWERS = (NoNodeError, NodeExistsError, BadVersionError, NotEmptyError)
_UNAVAILABLE = (ConnectionLoss, ConnectionClosedError, OperationTimeoutError, KazooTimeoutError)


class _Conn:
    """A KazooClient and what we track of it: connected now, the session id, whether that session was lost."""

    def __init__(self, discovery: ZooKeeperDiscovery, session_timeout: float, what: str, *, sticky: bool) -> None:
        self.what = what
        self.sticky = sticky  # a lost session stays lost (Session) or is replaced by kazoo's next one (shared)
        self.connected = threading.Event()
        self.lost = False
        self.session_id: int | None = None
        # The session's (id, password) once established (sticky only): what a close-later needs (see stop()).
        self.client_id: tuple[int, bytes] | None = None
        self._stop_lock = threading.Lock()
        self.on_lost: Callable[[], None] | None = None
        self.on_revived: Callable[[], None] | None = None
        self._stopping = False
        self.client = KazooClient(
            hosts=discovery._hosts,
            timeout=session_timeout,
            # Reconnect fast and forever (attempts at most 0.2 s apart, +-40 % jitter: after a store outage the
            # shared client's return bounds the election's); commands are never retried by kazoo (we bound and
            # retry them).
            connection_retry=KazooRetry(max_tries=-1, delay=0.05, backoff=2, max_delay=0.2),
            command_retry=None,
            randomize_hosts=False,
            auth_data=discovery._auth_data,
            default_acl=discovery._acl,
            logger=logging.getLogger("swarmha.discovery.zookeeper.kazoo"),
        )
        self.client.add_listener(self._listen)

    def _listen(self, state: str) -> None:
        # Runs on kazoo's connection thread: must not block.
        if state == KazooState.CONNECTED:
            client_id = self.client.client_id
            sid = client_id[0] if client_id else None
            if self.session_id is None or not self.sticky:
                self.session_id = sid
            elif sid != self.session_id:
                self.lost = True
            if not self.lost:
                if self.sticky and client_id:
                    self.client_id = (int(client_id[0]), bytes(client_id[1]))
                self.connected.set()
        else:
            self.connected.clear()
            if state == KazooState.LOST and self.sticky and (self.session_id is not None or self._died()):
                self.lost = True
            elif state == KazooState.LOST and self._died():
                # kazoo's connection thread ended without stop(): seen when a link delivered a reply out of
                # order ("xids do not match" escapes kazoo's connect loop). kazoo never reconnects by itself
                # then, and every later request fails, so the shared client is started again (off this thread).
                threading.Thread(target=self._revive, name="swarmha-zk-revive", daemon=True).start()
        if self.lost and self.on_lost is not None:
            self.connected.clear()
            callback, self.on_lost = self.on_lost, None
            callback()

    def _died(self) -> bool:
        """True when the client is CLOSED although we did not stop it (its connection thread gave up)."""
        return not self._stopping and self.client.client_state == KeeperState.CLOSED

    def _revive(self) -> None:
        log.warning("ZooKeeper %s client: its connection thread ended unexpectedly; starting it again", self.what)
        time.sleep(0.1)  # let the dying thread finish (start_async joins it too)
        try:
            if not self._stopping:
                self.client.start_async()
        except Exception as e:  # the next request fails and is retried; a later LOST revives again
            log.warning("ZooKeeper %s client: could not start it again: %s", self.what, e)
            return
        if self.on_revived is not None:
            self.on_revived()

    def start(self) -> None:
        self.client.start_async()

    def stop(self) -> tuple[int, bytes] | None:
        """Close the ZooKeeper session and free the client; never raises.

        Returns the session's ``(id, password)`` when the session may outlive this call on the server: a
        session (sticky) client that had established its session, did not see it lost, and was not connected
        when stopped, so kazoo could not send the CloseSession. None otherwise, and on every later call.
        """
        with self._stop_lock:
            first = not self._stopping
            self._stopping = True
            # Read before stopping: the stop itself makes kazoo report LOST, which marks a sticky session lost.
            close_later = first and self.sticky and not self.connected.is_set() and not self.lost
        self.connected.clear()
        try:
            self.client.stop()
        except Exception as e:
            log.debug("stopping the %s client: %s", self.what, e)
        with contextlib.suppress(Exception):
            self.client.close()
        if close_later and self.client_id is not None:
            return self.client_id
        return None


def _record(data: bytes, stat: Any) -> Record:
    owner = int(stat.ephemeralOwner)
    return Record(data.decode(), int(stat.czxid), f"{owner:x}" if owner else None)


def _children(client: Any, path: str) -> Any:
    return client.get_children_async(path)


def _get(client: Any, path: str) -> Any:
    return client.get_async(path)


def _exists(client: Any, path: str, watch: Callable[[Any], None] | None = None) -> Any:
    return client.exists_async(path, watch=watch)


def _create_entry(client: Any, path: str, data: bytes) -> Any:
    return client.create_async(path, data, ephemeral=True, sequence=True, include_data=True)


def _set_data(client: Any, path: str, data: bytes, version: int) -> Any:
    return client.set_data_async(path, data, version)


@attrs.define
class _Entry:
    """A session's place in a key's queue: its sequential ephemeral znode and whether a create claimed it."""

    parent: str  # the key's znode (the queue)
    path: str  # the entry's znode
    record: Record
    mzxid: int
    claimed: bool = False
    #: The entry right before this one and how many were before it, in the last read of the queue through
    #: the owning session's connection (entries before this one can only leave, never arrive).
    predecessor: str | None = None
    ahead: int = -1
    #: The only entry ahead was seen deleted (through the owning connection): this one holds the key now,
    #: known without reading the queue again.
    first: bool = False

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[1]

    def saw(self, names: list[str]) -> None:
        """Note this entry's place in ``names`` (a read of its queue through the owning session's connection)."""
        if self.name in names:
            at = names.index(self.name)
            self.ahead = at
            self.predecessor = f"{self.parent}/{names[at - 1]}" if at else None
            self.first = self.first or at == 0


def _queue_order(children: Any) -> list[str]:
    """The entry names among ``children``, holder first (by the sequence number ZooKeeper appended)."""
    return sorted((c for c in children if c.startswith(_ENTRY)), key=lambda c: c[-10:])


class _ZkSession(Session):
    """A ZooKeeper session on its own connection, closed by its guard thread when not renewed within ``ttl``.

    kazoo heartbeats a session by itself, which would let a session outlive a stuck owner. The guard thread
    (``swarmha-zk-session[ID]``) keeps the contract that only :meth:`keepalive` extends a session: once ``ttl``
    has passed since the last successful keepalive was *sent*, or kazoo reported the session LOST, it marks the
    session expired and closes the client (ZooKeeper then deletes the session's ephemerals at once, or, if the
    server cannot be reached, when the Discovery's close-later reaches it, at the latest after the session
    timeout). :meth:`close` stops and joins it, and never waits for a close-later.

    A *ticket* (``ticket=True``, from :meth:`ZooKeeperDiscovery.prepare`) has no ttl clock until a create
    claims its queue entry. Its guard watches the entry's predecessor instead (kazoo's ``Lock`` does the same):
    once the predecessor is gone it checks, :data:`TURN_CHECK_GRACE` later unless the entry was claimed by
    then, whether the entry now holds the key; if so, the clock starts from the predecessor's departure, so a
    stuck owner holds the key for at most ``ttl``.
    """

    def __init__(self, discovery: ZooKeeperDiscovery, ttl: float, *, ticket: bool = False) -> None:
        """Connect a new session (wait for it within the discovery's timeout); start its ttl clock unless ``ticket``."""
        self._d = discovery
        self.ttl = ttl
        self.ticket = ticket
        self.entries: dict[str, _Entry] = {}  # queue (key) path -> this session's entry there
        self._closed = False
        self._expired = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._turn_check = math.inf  # when the guard checks whether the ticket's entry leads now
        self._turn_since = math.inf  # when the entry's predecessor was seen to go
        sent = time.monotonic()
        self._deadline = math.inf
        self.sid = 0
        self.id = "(connecting)"
        self.conn = _Conn(discovery, ttl, "session", sticky=True)
        self.conn.on_lost = self._wake.set
        self.conn.start()
        self._guard = threading.Thread(target=self._guard_main, name="swarmha-zk-session[connecting]", daemon=True)
        self._guard.start()
        if not self.conn.connected.wait(discovery.timeout) or self.conn.lost:
            self.close()
            raise DiscoveryUnavailable(f"ZooKeeper {discovery.url}: no connection within {discovery.timeout}s")
        self.sid = self.conn.session_id or 0
        self.id = f"{self.sid:x}"
        self._guard.name = f"swarmha-zk-session[{self.id}]"
        with self._lock:
            if not ticket:
                self._deadline = sent + ttl
        discovery._own(self)
        self._wake.set()  # the guard now waits for the deadline

    def _guard_main(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                now = time.monotonic()
                remaining = self._deadline - now
                lost = self.conn.lost
                if lost or remaining <= 0:
                    self._expired = True
                check = now >= self._turn_check
                if check:
                    self._turn_check = math.inf
                wait = min(remaining, self._turn_check - now)
            if lost or remaining <= 0:
                why = "ZooKeeper reported it lost" if lost else f"not renewed within ttl={self.ttl}s"
                log.warning("ZooKeeper session %s expired: %s", self.id, why)
                self._stop_conn()
                return
            if check:
                self._d._check_turn(self)
                continue
            self._wake.wait(None if wait == math.inf else wait)
            self._wake.clear()

    def predecessor_gone(self, event: Any = None, *, wake: bool = True) -> None:
        """kazoo watch callback (its event thread: must not block): the entry may lead now; check soon.

        If the event is the deletion of the only entry that was ahead of one of ours, that entry holds the key
        now (``first``): a create then claims it without a read, as soon as it runs. ``wake=False``: the caller
        wakes the guard itself (:meth:`wake_guard`), after it woke the candidate waiting to claim.
        """
        deleted = getattr(event, "type", None) == EventType.DELETED
        path = getattr(event, "path", None)
        with self._lock:
            for entry in self.entries.values():
                if deleted and not entry.claimed and entry.ahead == 1 and entry.predecessor == path:
                    entry.first = True
            now = time.monotonic()
            self._turn_since = min(self._turn_since, now)
            self._turn_check = min(self._turn_check, now + min(TURN_CHECK_GRACE, self.ttl / 3.0))
        if wake:
            self._wake.set()

    def wake_guard(self) -> None:
        """Let the guard thread look at the (changed) turn-check time."""
        self._wake.set()

    def leads_unclaimed(self, entry: _Entry) -> None:
        """The guard saw ``entry`` hold the key unclaimed: start the ttl clock from the predecessor's departure."""
        with self._lock:
            if not entry.claimed:
                since = min(self._turn_since, time.monotonic())
                self._deadline = min(self._deadline, since + self.ttl)
        self._wake.set()

    def claim(self, entry: _Entry, sent: float) -> None:
        """A create returned ``entry``'s Record: the session holds the key; its ttl clock runs from ``sent``."""
        with self._lock:
            if self._closed or self._expired:
                raise SessionExpired(f"ZooKeeper session {self.id} expired or was closed")
            if self.ticket and not any(e.claimed for e in self.entries.values()):
                self._deadline = sent + self.ttl  # a ticket's clock starts now (see Discovery.prepare)
            else:
                self._deadline = max(self._deadline, sent + self.ttl)
            entry.claimed = True
        self._wake.set()

    def check(self) -> None:
        """Raise SessionExpired if this session is closed or lost, DiscoveryUnavailable if not connected now."""
        if self._closed or self._expired or self.conn.lost:
            raise SessionExpired(f"ZooKeeper session {self.id} expired or was closed")
        if not self.conn.connected.is_set():
            raise DiscoveryUnavailable(f"ZooKeeper session {self.id} is suspended (connection lost)")

    def keepalive(self) -> None:
        sent = time.monotonic()
        self.check()
        self._d._op(self.conn, "keepalive", lambda c: c.exists_async("/"), session=self)
        with self._lock:
            self.check()
            self._deadline = max(self._deadline, sent + self.ttl)  # an unclaimed ticket's stays inf

    @property
    def alive(self) -> bool:
        """Not closed, not expired here, and not reported lost by kazoo."""
        return not (self._closed or self._expired or self.conn.lost)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._d._disown(self)
        self._wake.set()
        if self._guard is not threading.current_thread():
            self._guard.join(30.0)
        self.conn.on_lost = None
        self._stop_conn()

    def _stop_conn(self) -> None:
        """Stop the client; if its session could not be closed (connection down), close it later (never waits)."""
        client_id = self.conn.stop()
        self._d._session_ended(self)  # watches set through this connection die with it: they re-arm elsewhere
        if client_id is not None:
            self._d._close_later(client_id, self.ttl)


class _ZkWatch(Watch):
    """A watch on one key, re-armed (and compared with the last state seen) by :meth:`wait`.

    What is watched depends on the key (see :meth:`ZooKeeperDiscovery._arm`): the holder's entry of a queue
    (exists-watch: fires when it goes), an empty queue's children (fires when an entry arrives), or a plain
    znode (data watch: fires on change and deletion).
    """

    def __init__(self, discovery: ZooKeeperDiscovery, path: str, seen: Record | None) -> None:
        self._d = discovery
        self._path = path
        self._seen = seen
        self._cond = threading.Condition()
        self._fired = False
        self._deleted = False  # the last event that fired was a deletion
        self._armed = False
        self._closed = False
        #: id(client) -> (kazoo client, every znode a watcher of ours was set on through it): forgotten on close
        self.armed: dict[int, tuple[Any, set[str]]] = {}
        self.via: _ZkSession | None = None  # the Session whose connection the current watcher was set through

    def _fire(self, event: Any) -> None:
        via = self.via
        if via is not None and event is not None:
            # before the waiter wakes: a create may then claim without a read
            via.predecessor_gone(event, wake=False)
        deleted = getattr(event, "type", None) == EventType.DELETED
        with self._cond:
            self._deleted = deleted or (self._fired and self._deleted)  # a later wake-up does not hide a deletion
            self._fired = True
            self._cond.notify_all()
        if via is not None and event is not None:
            via.wake_guard()  # after the waiter: the guard's turn check is a second away, the claim is not

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
                current = self._d._arm(self._path, self)
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
        self._d._unwatch(self.armed, self._fire)


class ZooKeeperDiscovery(Discovery):
    """Discovery over a ZooKeeper ensemble (see the module docstring for the URL, options and guarantees)."""

    def __init__(self, url: DiscoveryURL) -> None:
        if url.scheme != "zk":
            raise InvalidDiscoveryURL(f"discovery URL {str(url)!r} is not a zk:// URL")
        if not url.hosts:
            raise InvalidDiscoveryURL(f"zk URL {str(url)!r} names no host: zk://host[:port][,host...]/prefix")
        url.check_options(_OPTIONS)
        self.url = url
        self.timeout = url.seconds("timeout", DEFAULT_TIMEOUT)
        prepare = url.params.get("prepare", "1")
        if prepare not in ("0", "1"):
            raise InvalidDiscoveryURL(f"zk URL {str(url)!r}: prepare must be 0 or 1, not {prepare!r}")
        self._prepare = prepare == "1"
        if url.username is not None and url.password is None:
            raise InvalidDiscoveryURL(f"zk URL {str(url)!r} needs user:password@ for digest auth")
        self._auth_data: list[tuple[str, str]] | None = None
        self._acl: list[Any] | None = None
        if url.username is not None:
            self._auth_data = [("digest", f"{url.username}:{url.password}")]
            self._acl = [make_digest_acl(url.username, url.password or "", all=True)]
        self._hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in url.endpoints(DEFAULT_PORT))
        self._root = "/" + url.path if url.path else ""
        self._lock = threading.Lock()
        self._closed = False
        self._reads: dict[str, tuple[Record, int]] = {}  # path -> (record, mzxid) of the last read
        self._watches: weakref.WeakSet[_ZkWatch] = weakref.WeakSet()
        self._owned: dict[int, _ZkSession] = {}  # session id -> this Discovery's active Session (see delete)
        self._queues: set[str] = set()  # znodes known to be key queues (see _kind)
        self._closers: dict[threading.Thread, threading.Event] = {}  # close-later threads -> their wake-up
        self._shared = _Conn(self, min(SHARED_SESSION_TIMEOUT, self.timeout), "shared", sticky=False)
        self._shared.on_revived = self._rearm_watches
        self._shared.start()

    # -- plumbing ----------------------------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        return f"{self._root}/{check_key(key)}"

    def _op(self, conn: _Conn, what: str, fn: Callable[[Any], Any], session: _ZkSession | None = None) -> Any:
        """Run ``fn(client).get(...)`` once connected, all within ``timeout``; translate kazoo errors."""
        if self._closed:
            raise DiscoveryError(f"ZooKeeper discovery {self.url} is closed")
        deadline = time.monotonic() + self.timeout
        if session is not None:
            session.check()
        elif not conn.connected.wait(self.timeout):
            raise DiscoveryUnavailable(f"ZooKeeper {what} on {self.url}: not connected within {self.timeout}s")
        try:
            return fn(conn.client).get(timeout=max(0.01, deadline - time.monotonic()))
        except _ANSWERS:
            raise
        except SessionExpiredError:
            if session is not None:
                raise SessionExpired(f"ZooKeeper session {session.id} expired") from None
            raise DiscoveryUnavailable(f"ZooKeeper {what} on {self.url}: the shared session expired") from None
        except _UNAVAILABLE as e:
            raise DiscoveryUnavailable(f"ZooKeeper {what} on {self.url} failed: {type(e).__name__} {e}") from None
        except KazooException as e:
            raise DiscoveryError(f"ZooKeeper {what} on {self.url} failed: {type(e).__name__} {e}") from None

    def _remember(self, path: str, record: Record | None, mzxid: int = 0) -> None:
        with self._lock:
            if record is None:
                self._reads.pop(path, None)
                return
            if path not in self._reads and len(self._reads) >= _CACHE_LIMIT:
                self._reads.pop(next(iter(self._reads)))
            self._reads[path] = (record, mzxid)

    def _cached(self, path: str, czxid: int, mzxid: int) -> Record | None:
        with self._lock:
            known = self._reads.get(path)
        if known is not None and known[0].token == czxid and known[1] == mzxid:
            return known[0]
        return None

    def _read(self, path: str, via: _ZkSession | None = None) -> Record | None:
        try:
            data, stat = self._op(via.conn if via else self._shared, "get", lambda c: c.get_async(path), session=via)
        except NoNodeError:
            self._remember(path, None)
            return None
        record = _record(data, stat)
        self._remember(path, record, int(stat.mzxid))
        return record

    # -- key queues (see the module docstring) ----------------------------------------------------------------

    def _kind(self, path: str) -> str | None:
        """``"queue"``, ``"plain"``, or None (absent). Queues are remembered (a queue znode is never removed)."""
        with self._lock:
            if path in self._queues:
                return "queue"
        try:
            data, _ = self._op(self._shared, "get", lambda c: c.get_async(path))
        except NoNodeError:
            return None
        if data != _QUEUE_MARK:
            return "plain"
        self._known_queue(path)
        return "queue"

    def _known_queue(self, path: str) -> None:
        with self._lock:
            if path not in self._queues and len(self._queues) >= _CACHE_LIMIT:
                self._queues.pop()
            self._queues.add(path)

    def _entries(self, path: str, conn: _Conn | None = None, session: _ZkSession | None = None) -> list[str] | None:
        """The entry names of the queue ``path``, holder first; None if ``path`` does not exist."""
        try:
            children = self._op(conn or self._shared, "read", functools.partial(_children, path=path), session=session)
        except NoNodeError:
            with self._lock:
                self._queues.discard(path)
            return None
        return _queue_order(children)

    def _holder(self, path: str) -> Record | None:
        """The Record of the queue's holder (its first entry), or None when the queue is empty or absent."""
        for _ in range(_RACE_LIMIT):
            names = self._entries(path)
            if not names:
                return None
            head = f"{path}/{names[0]}"
            with self._lock:
                known = self._reads.get(head)
            if known is not None:  # an entry's data never changes
                return known[0]
            record = self._read(head)
            if record is not None:
                return record
        raise DiscoveryUnavailable(f"ZooKeeper queue {path} changed under {_RACE_LIMIT} reads in a row")

    def _enqueue(self, path: str, value: str, session: _ZkSession) -> _Entry | None:
        """Add an entry of ``session`` to the queue ``path`` (made if absent); None if ``path`` is a plain key."""
        data = value.encode()
        for _ in range(_RACE_LIMIT):
            with self._lock:
                known = path in self._queues
            if not known:
                try:
                    self._op(
                        session.conn,
                        "create",
                        lambda c: c.create_async(path, _QUEUE_MARK, makepath=True),
                        session=session,
                    )
                except NodeExistsError:
                    if self._kind(path) != "queue":
                        return None  # a plain key (put, or a key made by an older swarmha) holds it
                self._known_queue(path)
            prefix = f"{path}/{_ENTRY}{session.sid:x}-"
            try:
                created, stat = self._op(
                    session.conn,
                    "create",
                    functools.partial(_create_entry, path=prefix, data=data),
                    session=session,
                )
            except NoNodeError:  # the queue znode was removed (by hand) since: make it again
                with self._lock:
                    self._queues.discard(path)
                continue
            entry = _Entry(path, created, _record(data, stat), int(stat.mzxid))
            with session._lock:
                session.entries[path] = entry
            return entry
        raise DiscoveryUnavailable(f"ZooKeeper queue {path} vanished under {_RACE_LIMIT} creates in a row")

    def _withdraw(self, session: _ZkSession, entry: _Entry) -> None:
        """Delete ``entry`` (by its unique name: never another entry) and forget it."""
        with session._lock:
            if session.entries.get(entry.parent) is entry:
                del session.entries[entry.parent]
        with contextlib.suppress(NoNodeError):
            self._op(session.conn, "withdraw", lambda c: c.delete_async(entry.path), session=session)

    def _check_turn(self, session: _ZkSession) -> None:
        """For a ticket's unclaimed entry: start its clock if it holds the key, else watch its predecessor.

        Runs on the ticket's guard thread (and once in :meth:`prepare`), through the ticket's own connection.
        Never raises: on a store error it tries again after :data:`TURN_CHECK_GRACE` (the session's own state
        then decides its fate, as for any session).
        """
        with session._lock:
            entries = [e for e in session.entries.values() if not e.claimed]
        for entry in entries:
            try:
                for _ in range(_RACE_LIMIT):
                    if not entry.first:
                        names = self._entries(entry.parent, session.conn, session) or []
                        if entry.name not in names:
                            break  # withdrawn or deleted: a create with this ticket will queue it again
                        with session._lock:
                            entry.saw(names)  # sets first, or the predecessor to watch
                    if entry.first:
                        session.leads_unclaimed(entry)
                        break
                    before = entry.predecessor
                    assert before is not None  # not first: saw() noted the entry right before it
                    watch = functools.partial(_exists, path=before, watch=session.predecessor_gone)
                    if self._op(session.conn, "watch", watch, session=session):
                        break
            except DiscoveryError as e:
                if session.alive:
                    log.debug("ZooKeeper ticket %s: checking its turn failed (%s); again soon", session.id, e)
                    session.predecessor_gone()

    def _via(self, path: str) -> _ZkSession | None:
        """A live, connected Session of this Discovery with an entry in the queue ``path``, if any.

        A watch on that queue is set through its connection rather than the shared one: the waiting ticket
        then gets one event when the holder goes (its guard's predecessor watch is the same server-side watch),
        the reads that follow are ordered after it on that connection, and a leader's own delete answer and
        the event for its watch arrive together.
        """
        with self._lock:
            sessions = list(self._owned.values())
        usable = []
        for s in sessions:
            entry = s.entries.get(path)
            if entry is not None and s.alive and s.conn.connected.is_set():
                usable.append((entry.claimed, s))  # a waiting ticket first: its create can then skip a read
        return min(usable, key=lambda u: u[0])[1] if usable else None

    def _arm(self, path: str, watch: _ZkWatch) -> Record | None:
        """Set a watcher for the next change of key ``path`` and return the key's state at that moment.

        A queue: an exists-watch on the holder's entry, or (empty) a child watch on the queue. A plain key: a
        data watch, or (absent) an exists-watch for its creation. Set through :meth:`_via`'s session if there is
        one (``watch.via``), else the shared connection; every znode watched is added to ``watch.armed``.
        """
        callback = watch._fire
        via = self._via(path)
        conn = via.conn if via is not None else self._shared
        watch.via = via
        armed = watch.armed.setdefault(id(conn.client), (conn.client, set()))[1]
        for _ in range(_RACE_LIMIT):
            kind = self._kind(path)
            if kind is None:
                armed.add(path)
                if self._op(conn, "watch", lambda c: c.exists_async(path, watch=callback), session=via) is None:
                    return None
                continue  # created meanwhile
            if kind == "plain":
                armed.add(path)
                try:
                    data, stat = self._op(conn, "watch", lambda c: c.get_async(path, watch=callback), session=via)
                except NoNodeError:
                    continue
                if data == _QUEUE_MARK:
                    continue
                cached = self._cached(path, int(stat.czxid), int(stat.mzxid))
                record = cached or _record(data, stat)
                self._remember(path, record, int(stat.mzxid))
                return record
            names = self._entries(path, conn, via)
            if names is None:
                continue
            if via is not None:
                with via._lock:
                    entry = via.entries.get(path)
                    if entry is not None and not entry.claimed:
                        entry.saw(names)
            if not names:
                armed.add(path)
                try:
                    children = self._op(
                        conn, "watch", lambda c: c.get_children_async(path, watch=callback), session=via
                    )
                except NoNodeError:
                    continue
                if not _queue_order(children):
                    return None
                continue  # an entry arrived meanwhile
            head = f"{path}/{names[0]}"
            armed.add(head)
            stat = self._op(conn, "watch", functools.partial(_exists, path=head, watch=callback), session=via)
            if stat is None:
                continue  # the holder left meanwhile
            held = self._cached(head, int(stat.czxid), int(stat.mzxid)) or self._read(head, via)
            if held is not None:
                return held
        raise DiscoveryUnavailable(f"ZooKeeper key {path} changed under {_RACE_LIMIT} watch attempts in a row")

    def _session_ended(self, session: _ZkSession) -> None:
        """Wake every watch armed through ``session``'s connection (its watchers die with it): they re-arm."""
        with self._lock:
            watches = [w for w in self._watches if w.via is session]
        for watch in watches:
            watch._fire(None)

    def _own(self, session: _ZkSession) -> None:
        with self._lock:
            self._owned[session.sid] = session

    def _disown(self, session: _ZkSession) -> None:
        with self._lock:
            if self._owned.get(session.sid) is session:
                del self._owned[session.sid]

    def _close_later(self, client_id: tuple[int, bytes], ttl: float) -> None:
        """Close the ZooKeeper session ``client_id`` (its id and password) as soon as the store answers again.

        For a Session whose client was stopped while its connection was down: kazoo could not send the
        CloseSession, so the server keeps the session, and its ephemerals, until it expires it; a server
        restarted meanwhile restores it with a fresh timeout. Returns at once (the caller, e.g. a campaign
        thread, never waits): one ``swarmha-zk-session-close[ID]`` thread reattaches a new client to that
        session (see :meth:`_close_later_main`). Does nothing once this Discovery is closed (the session
        then ends when the server expires it, as it would without this).
        """
        wake = threading.Event()
        thread = threading.Thread(
            target=self._close_later_main,
            args=(client_id, ttl, wake),
            name=f"swarmha-zk-session-close[{client_id[0]:x}]",
            daemon=True,
        )
        with self._lock:
            if self._closed:
                return
            self._closers[thread] = wake
            thread.start()  # under the lock: close() joins only started threads

    def _close_later_main(self, client_id: tuple[int, bytes], ttl: float, wake: threading.Event) -> None:
        """Reattach a client to session ``client_id`` and close it; ends on the first of: closed, the server
        answered that the session is gone (expired or closed), the store reachable for ``ttl`` +
        :data:`CLOSE_LATER_MARGIN` without either, :data:`CLOSE_LATER_LIMIT`, or :meth:`close`. Never raises.

        Safe: the new client only reattaches to that one session (ZooKeeper checks its password) and sends
        nothing but the CloseSession, which removes that session's own ephemerals and never another
        session's znode. It requests the shorter of ``ttl`` and ``timeout`` as the session timeout (which also
        bounds kazoo's wait for a handshake answer); a close lost after the handshake leaves the session to
        expire about one session timeout after it.
        """
        sid = client_id[0]
        state: list[str] = []

        def listen(kazoo_state: str) -> None:  # on kazoo's connection thread: must not block
            if kazoo_state == KazooState.CONNECTED:
                current = client.client_id
                state.append("attached" if current and current[0] == sid else "gone")
                wake.set()
            elif kazoo_state == KazooState.LOST:
                state.append("gone")
                wake.set()

        client: Any = None
        try:
            client = KazooClient(
                hosts=self._hosts,
                timeout=min(ttl, self.timeout),
                client_id=client_id,
                # Short-lived and one per abandoned session: retry often, so the close follows the store's return
                # closely (an attempt at a server that is down is refused at once).
                connection_retry=KazooRetry(max_tries=-1, delay=0.05, backoff=1.5, max_delay=0.1),
                command_retry=None,
                randomize_hosts=False,
                auth_data=self._auth_data,
                logger=logging.getLogger("swarmha.discovery.zookeeper.kazoo"),
            )
            client.add_listener(listen)
            client.start_async()
            started = time.monotonic()
            reachable_since: float | None = None
            while not state and not self._closed:
                wake.wait(0.2)
                now = time.monotonic()
                if self._shared.connected.is_set():
                    reachable_since = now if reachable_since is None else reachable_since
                else:
                    reachable_since = None
                if state or now - started > CLOSE_LATER_LIMIT:
                    break
                if reachable_since is not None and now - reachable_since > ttl + CLOSE_LATER_MARGIN:
                    break
            outcome = state[0] if state else "closed" if self._closed else "gave up"
            if outcome == "attached":
                client.stop()  # sends the CloseSession; the server removes the session's ephemerals
                log.info("ZooKeeper session %x closed once the store was reachable again", sid)
            else:
                log.debug("ZooKeeper session %x not closed later: %s", sid, outcome)
        except Exception as e:
            log.warning("closing ZooKeeper session %x later failed: %s", sid, e)
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.stop()
                with contextlib.suppress(Exception):
                    client.close()
            with self._lock:
                self._closers.pop(threading.current_thread(), None)

    def _rearm_watches(self) -> None:
        """Wake every open watch so it re-arms on the shared client (after that client was started again)."""
        with self._lock:
            watches = list(self._watches)
        for watch in watches:
            watch._fire(None)

    @staticmethod
    def _unwatch(armed: dict[int, tuple[Any, set[str]]], callback: Callable[[Any], None]) -> None:
        """Forget a closed watch's callback (kazoo keeps one-shot watchers until they fire)."""
        for client, paths in armed.values():
            for path in paths:
                with contextlib.suppress(Exception):
                    client._data_watchers[path].discard(callback)
                with contextlib.suppress(Exception):
                    client._child_watchers[path].discard(callback)

    @staticmethod
    def _session(session: Session) -> _ZkSession:
        if not isinstance(session, _ZkSession):
            raise ConfigurationError(f"{session!r} is not a session of a ZooKeeper discovery")
        return session

    # -- the Discovery contract ----------------------------------------------------------------------------------

    def session(self, ttl: float) -> Session:
        """A new ZooKeeper session (its own connection) with session timeout ``ttl`` (clamped by the server)."""
        if self._closed:
            raise DiscoveryError(f"ZooKeeper discovery {self.url} is closed")
        return _ZkSession(self, check_ttl(ttl))

    def prepare(self, key: str, value: str, ttl: float) -> Session | None:
        """A ticket: a session of ``ttl`` opened now and queued for ``key`` (see :meth:`Discovery.prepare`).

        Its cost while it waits: one more connection and ZooKeeper session, heartbeated by kazoo (a ping every
        ttl/3 or so while idle), and one entry znode in the key's queue; its guard watches the entry's
        predecessor (no periodic request). ``?prepare=0`` in the URL turns it off (None: a waiting candidate
        then holds only the shared connection, and a handover pays a handshake, a create and a read).
        """
        if not self._prepare or self._closed:
            return None
        try:
            ttl = check_ttl(ttl)
            path = self._path(key)
        except ConfigurationError:
            return None
        ticket: _ZkSession | None = None
        try:
            ticket = _ZkSession(self, ttl, ticket=True)
            if self._enqueue(path, value, ticket) is None:
                ticket.close()
                return None
            self._check_turn(ticket)
            return ticket
        except Exception as e:  # never raises: the campaign opens a session itself
            log.debug("preparing a ZooKeeper ticket for %s: %s", path, e)
            if ticket is not None:
                ticket.close()
            return None

    def create(self, key: str, value: str, session: Session) -> Record | None:
        """Make ``session`` the holder of ``key`` if the key's queue has no holder before it; token = the czxid of
        the session's entry. None if another entry (or a plain znode) holds the key.

        A session without an entry gets one (a create) and the queue is read through the session's own
        connection (it sees its own write); if another entry is first, a plain session's entry is withdrawn
        again (a delete), a ticket's stays queued. A ticket already queued costs one read.
        """
        path = self._path(key)
        s = self._session(session)
        sent = time.monotonic()
        s.check()
        with s._lock:
            entry = s.entries.get(path)
        if entry is not None and entry.record.value != value:
            self._withdraw(s, entry)
            entry = None
        fresh = entry is None
        if entry is None:
            entry = self._enqueue(path, value, s)
            if entry is None:
                return None
        # If the only entry ahead was seen deleted through this session's connection (``first``), this one is
        # first (no entry can arrive before it) and exists while the session lives (checked above; nobody else
        # knows its token before it holds the key): it is claimed without reading the queue again.
        if fresh or not entry.first:
            names = self._entries(path, s.conn, s) or []
            with s._lock:
                entry.saw(names)
            if entry.name not in names:  # deleted (delete(key, token) of a holder claimed earlier): gone for good
                with s._lock:
                    if s.entries.get(path) is entry:
                        del s.entries[path]
                return None
            if names[0] != entry.name:
                if fresh and not s.ticket:
                    self._withdraw(s, entry)  # a plain session leaves nothing behind when it did not win
                return None
        s.claim(entry, sent)
        self._remember(entry.path, entry.record, entry.mzxid)
        return entry.record

    def put(self, key: str, value: str, session: Session | None = None) -> Record:
        """Create or overwrite ``key``: ephemeral of ``session`` if given, else persistent.

        Refuses (:class:`~swarmha.errors.DiscoveryError`) to overwrite a key that :meth:`create` made: its queue
        of candidates would be lost.
        """
        path = self._path(key)
        s = self._session(session) if session is not None else None
        conn = s.conn if s is not None else self._shared
        owner = s.sid if s is not None else 0
        data = value.encode()
        for _ in range(5):
            try:
                old, stat = self._op(conn, "put", lambda c: c.get_async(path), session=s)
            except NoNodeError:
                old, stat = b"", None
            if old == _QUEUE_MARK:
                raise DiscoveryError(f"ZooKeeper put of {path}: it is an election key (a queue); put cannot replace it")
            try:
                if stat is None:
                    self._op(
                        conn,
                        "put",
                        lambda c: c.create_async(path, data, ephemeral=s is not None, makepath=True),
                        session=s,
                    )
                elif int(stat.ephemeralOwner) == owner:
                    set_data = functools.partial(_set_data, path=path, data=data, version=int(stat.version))
                    self._op(conn, "put", set_data, session=s)
                else:  # owned by another session (or none): replace it in one transaction

                    def replace(c: Any, v: int = stat.version) -> Any:
                        t = c.transaction()
                        t.delete(path, version=v)
                        t.create(path, data, ephemeral=s is not None)
                        return t.commit_async()

                    results = self._op(conn, "put", replace, session=s)
                    if any(isinstance(r, Exception) for r in results):
                        continue
            except (NodeExistsError, NoNodeError, BadVersionError):
                continue
            record = self._read(path)
            if record is not None:
                return record
        raise DiscoveryError(f"ZooKeeper put of {path} lost the race with other writers 5 times")

    def get(self, key: str) -> Record | None:
        """The key's Record: the holder's entry of its queue (token = the entry's czxid), or a plain znode, as the
        member the shared client talks to has it."""
        path = self._path(key)
        kind = self._kind(path)
        if kind is None:
            return None
        return self._holder(path) if kind == "queue" else self._read(path)

    def delete(self, key: str, token: int) -> bool:
        """Delete ``key`` if its token equals ``token``.

        A queue: deletes the entry whose czxid is ``token`` (by its name, which no other entry ever has), so it
        can only remove that very entry. A plain ephemeral key only through its owning Session's own connection
        while that Session lives (see the module docstring: versions cannot tell znodes apart).
        """
        path = self._path(key)
        kind = self._kind(path)
        if kind == "queue":
            return self._delete_entry(path, token)
        if kind is None:
            return False
        try:
            _, stat = self._op(self._shared, "delete", lambda c: c.get_async(path))
            if int(stat.czxid) != token:
                return False
            owner = int(stat.ephemeralOwner)
            if owner:
                with self._lock:
                    session = self._owned.get(owner)
                if session is None or not session.alive:
                    return False  # another session's key, or ours already ended: it goes with that session
                # In order behind everything this session sent; refused by the server once the session ended.
                _, stat = self._op(session.conn, "delete", lambda c: c.get_async(path), session=session)
                if int(stat.czxid) != token or int(stat.ephemeralOwner) != owner:
                    return False
                self._op(session.conn, "delete", lambda c: c.delete_async(path, version=stat.version), session=session)
            else:
                self._op(self._shared, "delete", lambda c: c.delete_async(path, version=stat.version))
        except (NoNodeError, BadVersionError, NotEmptyError, SessionExpired):
            return False
        self._remember(path, None)
        return True

    def _delete_entry(self, path: str, token: int) -> bool:
        target = None
        with self._lock:
            sessions = list(self._owned.values())
        for s in sessions:
            with s._lock:
                entry = s.entries.get(path)
            if entry is not None and entry.record.token == token:
                target = entry.path
        if target is None:
            for name in self._entries(path) or []:
                stat = self._op(self._shared, "delete", functools.partial(_exists, path=f"{path}/{name}"))
                if stat is not None and int(stat.czxid) == token:
                    target = f"{path}/{name}"
                    break
        if target is None:
            return False
        try:
            self._op(self._shared, "delete", lambda c: c.delete_async(target))
        except NoNodeError:
            return False
        self._remember(target, None)
        return True

    def release(self, key: str, token: int, session: Session) -> None:
        """Hand over ``key``: delete the session's entry (by its unique name), then close ``session``.

        The waiting candidates' watches fire on the delete (one round trip, as a kazoo ``Lock`` release), and
        the close removes whatever else the session holds. Never removes a znode of another session: the delete
        names this session's own entry, and a close removes only the session's own ephemerals. Raises
        :class:`~swarmha.errors.DiscoveryUnavailable` when the session's connection was down (suspended): the
        key then goes when a server answers again (the session is closed later, see the module docstring) or
        when the server expires the session; the session is closed here in every case, without waiting.
        """
        s = self._session(session)
        path = self._path(key)
        reachable = s.conn.connected.is_set() or not s.alive  # an expired session's key is already gone
        with s._lock:
            entry = s.entries.get(path)
        try:
            if entry is not None and entry.record.token == token and reachable and s.alive:
                self._withdraw(s, entry)
        except DiscoveryUnavailable:
            reachable = False
        except DiscoveryError as e:
            log.debug("ZooKeeper release of %s: the delete failed (%s); the close removes it", path, e)
        finally:
            s.close()
            if entry is not None:
                self._remember(entry.path, None)
        if not reachable:
            raise DiscoveryUnavailable(
                f"ZooKeeper session {s.id} was not connected when released: {path} goes once the store "
                "answers (the session is closed later) or when the session expires"
            )

    def list(self, prefix: str) -> Mapping[str, Record]:
        """Every key below ``prefix/``: znodes with data, ephemeral or leaves, and election keys with a holder."""
        top = self._path(prefix)
        skip = len(self._root) + 1
        found: dict[str, Record] = {}
        pending = [top]
        visited = 0
        while pending and visited < _MAX_LIST_NODES:
            parent = pending.pop()
            try:
                children = self._op(self._shared, "list", functools.partial(_children, path=parent))
            except NoNodeError:
                continue
            for child in children:
                path = f"{parent}/{child}"
                visited += 1
                try:
                    data, stat = self._op(self._shared, "list", functools.partial(_get, path=path))
                except NoNodeError:
                    continue
                if data == _QUEUE_MARK:
                    self._known_queue(path)
                    holder = self._holder(path)
                    if holder is not None:
                        found[path[skip:]] = holder
                    continue
                if stat.numChildren:
                    pending.append(path)
                if data or stat.ephemeralOwner or not stat.numChildren:
                    found[path[skip:]] = _record(data, stat)
        return found

    def watch(self, key: str, seen: Record | None) -> Watch:
        """A watch armed on the first :meth:`Watch.wait`, compared with ``seen`` then."""
        watch = _ZkWatch(self, self._path(key), seen)
        with self._lock:
            self._watches.add(watch)
            closed = self._closed
        if closed:
            watch.close()
        return watch

    def close(self) -> None:
        """Close the shared connection (Sessions and tickets are closed by their owners). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            watches = list(self._watches)
        for watch in watches:
            watch.close()
        with self._lock:
            closers = dict(self._closers)
        for wake in closers.values():
            wake.set()
        for thread in closers:
            # Each ends within one kazoo connect attempt (at most ``timeout``) plus a reconnect pause.
            thread.join(self.timeout + 5.0)
        self._shared.stop()
