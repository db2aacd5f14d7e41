"""``zk://h1:2181,h2:2181/prefix``: the ZooKeeper backend (kazoo; ZooKeeper 3.5 or later).

URL: ``zk://[user:password@]host[:port][,host[:port]...]/prefix[?timeout=SECONDS&prepare=0|1]``; the default
port is 2181 and the path is the znode prefix (keys live at ``/prefix/svc/leader``; parents are created as persistent
znodes on first use, so the prefix need not exist, unlike a kazoo chroot). ``user:password@`` adds ZooKeeper
``digest`` auth to every connection and creates znodes with an ACL granting that identity all rights.
``timeout`` (default 5 s) bounds every request, including the wait for a connection. ``prepare=0`` turns off
prepared sessions (below; default on).

How the contract maps to ZooKeeper:

* A ZooKeeper session belongs to a connection, so every :class:`~swarmha.discovery.Session` is **its own
  KazooClient** with session timeout ``ttl``. Closing the Session closes that client, which ends the ZooKeeper
  session: its ephemeral znodes (the leader key) vanish at once, and vanish ``timeout`` after the process dies.
  The cost is one TCP connection and three kazoo threads per live Session, and a connection handshake (a few
  ms on a LAN, tens of ms on a busy host) in front of each campaign attempt, unless the session was
  *prepared*: :meth:`ZooKeeperDiscovery.prepare_session` (called by a candidate that starts waiting for a
  held key) opens one session ahead, so the handover after the leader's key vanishes costs no handshake.
  A prepared session holds no key; its ``ttl`` clock starts when :meth:`~ZooKeeperDiscovery.session` hands it
  out; meanwhile kazoo heartbeats it (a ping every ttl/3 or so): the one periodic cost of a waiting candidate
  on ZooKeeper, besides the shared connection's own pings. Sharing one connection would leave a leader key behind for
  as long as the process lives whenever the key's explicit delete failed, which is the bug Swarm classic had.
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
* ``create`` makes an **ephemeral** znode through the Session's client; the fencing token is its ``czxid``
  (the zxid of the creating transaction; zxids strictly increase over the ensemble's history).
* ``delete(key, token)`` reads the znode and compares ``czxid`` with ``token``. ZooKeeper cannot compare a
  czxid atomically, and the data version it can compare starts at 0 in every new znode, so a delete sent by
  version through any connection may remove a *later* znode of the same key (found by the fault soak: a
  deposed leader's delayed delete removed its successor's key, and a third candidate took over while the
  successor still led). So an ephemeral key is deleted only through the connection of the Session of this
  Discovery that owns it, while that session is alive: ZooKeeper runs one session's requests in order and
  refuses them once the session ended, and the session's own ephemeral cannot be replaced while it lives.
  An ephemeral key owned by any other session (or by a Session already closed or expired here) is left to
  that session's end: ``delete`` returns False. A persistent key is deleted by version through the shared
  connection, with the gap above (a delete and re-create between the read and the delete goes unnoticed).
* ``release`` (a leader's graceful exit) only closes the Session: the server removes the session's ephemerals
  as it ends it, one round trip, and never a znode of another session.
* Reads, watches, ``delete``, ``list`` and ``put`` without a session use one shared KazooClient per Discovery.
  Watches are ZooKeeper ``exists`` watches (they fire on create, delete and data change); kazoo re-registers
  them after a reconnect, so changes made while disconnected fire then; if that client's session expires,
  every watch fires (may have changed) and is re-armed by the next :meth:`Watch.wait`.

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


def _set_data(client: Any, path: str, data: bytes, version: int) -> Any:
    return client.set_data_async(path, data, version)


class _ZkSession(Session):
    """A ZooKeeper session on its own connection, closed by its guard thread when not renewed within ``ttl``.

    kazoo heartbeats a session by itself, which would let a session outlive a stuck owner. The guard thread
    (``swarmha-zk-session[ID]``) keeps the contract that only :meth:`keepalive` extends a session: once ``ttl``
    has passed since the last successful keepalive was *sent*, or kazoo reported the session LOST, it marks the
    session expired and closes the client (ZooKeeper then deletes the session's ephemerals at once, or, if the
    server cannot be reached, when the Discovery's close-later reaches it, at the latest after the session
    timeout). :meth:`close` stops and joins it, and never waits for a close-later.
    """

    def __init__(self, discovery: ZooKeeperDiscovery, ttl: float, *, prepared: bool = False) -> None:
        """Connect a new session; ``prepared``: only start connecting (see :meth:`activate`)."""
        self._d = discovery
        self.ttl = ttl
        self._closed = False
        self._expired = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._guard: threading.Thread | None = None
        sent = time.monotonic()
        self._deadline = math.inf  # the ttl clock starts in activate()
        self.sid = 0
        self.id = "(connecting)"
        self.conn = _Conn(discovery, ttl, "session", sticky=True)
        self.conn.on_lost = self._wake.set
        self.conn.start()
        # Started now, so that handing out a prepared session starts no thread on the handover's path.
        self._guard = threading.Thread(target=self._guard_main, name="swarmha-zk-session[prepared]", daemon=True)
        self._guard.start()
        if not prepared:
            self.activate(sent)

    def activate(self, sent: float) -> None:
        """Wait for the connection (within the discovery's timeout), then start the ttl clock at ``sent``.

        A prepared session is activated when it is handed out, so its ``ttl`` runs from then, not from when
        its connection was opened (kazoo's heartbeats kept the server-side session alive meanwhile).
        """
        if not self.conn.connected.wait(self._d.timeout) or self.conn.lost:
            self.close()
            raise DiscoveryUnavailable(f"ZooKeeper {self._d.url}: no connection within {self._d.timeout}s")
        self.sid = self.conn.session_id or 0
        self.id = f"{self.sid:x}"
        with self._lock:
            self._deadline = sent + self.ttl
        self._d._own(self)
        if self._guard is not None:
            self._guard.name = f"swarmha-zk-session[{self.id}]"
        self._wake.set()  # the guard now waits for the deadline

    def _guard_main(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                remaining = self._deadline - time.monotonic()
                lost = self.conn.lost
                if lost or remaining <= 0:
                    self._expired = True
            if lost or remaining <= 0:
                why = "ZooKeeper reported it lost" if lost else f"not renewed within ttl={self.ttl}s"
                log.warning("ZooKeeper session %s expired: %s", self.id, why)
                self._stop_conn()
                return
            self._wake.wait(None if remaining == math.inf else remaining)
            self._wake.clear()

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
            self._deadline = max(self._deadline, sent + self.ttl)

    @property
    def alive(self) -> bool:
        """Not closed, not expired here, and not reported lost by kazoo."""
        return not (self._closed or self._expired or self.conn.lost)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._d._disown(self)
        self._wake.set()
        if self._guard is not None and self._guard is not threading.current_thread():
            self._guard.join(30.0)
        self.conn.on_lost = None
        self._stop_conn()

    def _stop_conn(self) -> None:
        """Stop the client; if its session could not be closed (connection down), close it later (never waits)."""
        client_id = self.conn.stop()
        if client_id is not None:
            self._d._close_later(client_id, self.ttl)


class _ZkWatch(Watch):
    """An exists-watch on one znode, re-armed (and compared with the last state seen) by :meth:`wait`."""

    def __init__(self, discovery: ZooKeeperDiscovery, path: str, seen: Record | None) -> None:
        self._d = discovery
        self._path = path
        self._seen = seen
        self._cond = threading.Condition()
        self._fired = False
        self._deleted = False  # the last event that fired was the znode's deletion
        self._armed = False
        self._closed = False

    def _fire(self, event: Any) -> None:
        with self._cond:
            self._fired = True
            self._deleted = getattr(event, "type", None) == EventType.DELETED
            self._cond.notify_all()

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
                        # The znode the caller saw is gone: that is a change, no need to read it back. The
                        # next wait() re-arms at "absent" and compares, so nothing after this is missed.
                        self._seen = None
                        self.known_absent = True
                        return True
                armed = self._armed
            if not armed:
                current = self._d._arm(self._path, self._fire)
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
        self._d._unwatch(self._path, self._fire)


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
        self._spare: _ZkSession | None = None  # a prepared session (see prepare_session)
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

    def _remember(self, path: str, record: Record | None, stat: Any) -> None:
        with self._lock:
            if record is None:
                self._reads.pop(path, None)
                return
            if path not in self._reads and len(self._reads) >= _CACHE_LIMIT:
                self._reads.pop(next(iter(self._reads)))
            self._reads[path] = (record, int(stat.mzxid))

    def _read(self, path: str) -> Record | None:
        try:
            data, stat = self._op(self._shared, "get", lambda c: c.get_async(path))
        except NoNodeError:
            self._remember(path, None, None)
            return None
        record = _record(data, stat)
        self._remember(path, record, stat)
        return record

    def _arm(self, path: str, callback: Callable[[Any], None]) -> Record | None:
        """Set an exists-watch on ``path`` and return its state at that moment."""
        stat = self._op(self._shared, "watch", lambda c: c.exists_async(path, watch=callback))
        if stat is None:
            return None
        with self._lock:
            known = self._reads.get(path)
        if known is not None and known[0].token == stat.czxid and known[1] == stat.mzxid:
            return known[0]
        return self._read(path)

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

    def _unwatch(self, path: str, callback: Callable[[Any], None]) -> None:
        """Forget a closed watch's callback (kazoo keeps one-shot watchers until they fire)."""
        with contextlib.suppress(Exception):
            self._shared.client._data_watchers[path].discard(callback)

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
        ttl = check_ttl(ttl)
        sent = time.monotonic()
        with self._lock:
            spare = self._spare if self._spare is not None and self._spare.ttl == ttl else None
            if spare is not None:
                self._spare = None
        if spare is not None:
            if not spare.conn.lost:
                spare.activate(sent)
                return spare
            spare.close()
        return _ZkSession(self, ttl)

    def prepare_session(self, ttl: float) -> None:
        """Open a session of ``ttl`` ahead (connecting in the background), for the next :meth:`session`.

        One prepared session per Discovery at most. Its cost while it waits: one more connection and
        ZooKeeper session, heartbeated by kazoo (a ping every ttl/3 or so while idle). ``?prepare=0`` in the
        URL turns it off (waiting candidates then hold only the shared connection; a handover pays a handshake).
        """
        if not self._prepare:
            return
        try:
            ttl = check_ttl(ttl)
        except ConfigurationError:
            return
        with self._lock:
            if self._closed:
                return
            old = self._spare
            if old is not None and old.ttl == ttl and not old.conn.lost:
                return
            self._spare = None
        if old is not None:
            old.close()
        try:
            spare: _ZkSession | None = _ZkSession(self, ttl, prepared=True)
        except Exception as e:  # never raises: session() will open one itself
            log.debug("preparing a ZooKeeper session: %s", e)
            return
        with self._lock:
            if self._spare is None and not self._closed:
                self._spare, spare = spare, None
        if spare is not None:
            spare.close()

    def create(self, key: str, value: str, session: Session) -> Record | None:
        """Create ``key`` as an ephemeral znode of ``session``; token = its czxid. None if it exists."""
        path = self._path(key)
        s = self._session(session)
        try:
            _, stat = self._op(
                s.conn,
                "create",
                lambda c: c.create_async(path, value.encode(), ephemeral=True, makepath=True, include_data=True),
                session=s,
            )
        except NodeExistsError:
            return None
        record = _record(value.encode(), stat)
        self._remember(path, record, stat)
        return record

    def put(self, key: str, value: str, session: Session | None = None) -> Record:
        """Create or overwrite ``key``: ephemeral of ``session`` if given, else persistent."""
        path = self._path(key)
        s = self._session(session) if session is not None else None
        conn = s.conn if s is not None else self._shared
        owner = s.sid if s is not None else 0
        data = value.encode()
        for _ in range(5):
            stat = self._op(conn, "put", lambda c: c.exists_async(path), session=s)
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
        """The key's Record (token = its czxid), as the member the shared client talks to has it."""
        return self._read(self._path(key))

    def delete(self, key: str, token: int) -> bool:
        """Delete ``key`` if its czxid equals ``token``; an ephemeral key only through its owning Session's own
        connection while that Session lives (see the module docstring: versions cannot tell znodes apart)."""
        path = self._path(key)
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
        self._remember(path, None, None)
        return True

    def release(self, key: str, token: int, session: Session) -> None:
        """Hand over ``key`` by closing ``session``: ZooKeeper removes the session's ephemerals as it ends it.

        One round trip (kazoo's close of the session) instead of a compare-and-delete (a read and a delete
        through the owning connection) followed by that close: the handover's critical path on ZooKeeper.
        Safe by construction: closing a session removes only that session's own ephemerals, never a znode
        another session created, whatever happened since (even a session kazoo opened anew after the old one
        expired holds no key). Raises :class:`~swarmha.errors.DiscoveryUnavailable` when the session's
        connection was down (suspended): the key then goes when a server answers again (the session is closed
        later, see the module docstring) or when the server expires the session; the session is closed here
        in every case, without waiting for the store to come back.
        """
        s = self._session(session)
        path = self._path(key)
        reachable = s.conn.connected.is_set() or not s.alive  # an expired session's key is already gone
        s.close()
        self._remember(path, None, None)
        if not reachable:
            raise DiscoveryUnavailable(
                f"ZooKeeper session {s.id} was not connected when released: {path} goes once the store "
                "answers (the session is closed later) or when the session expires"
            )

    def list(self, prefix: str) -> Mapping[str, Record]:
        """Every znode below ``prefix/`` that is a key (has data, is ephemeral, or is a leaf)."""
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
                if stat.numChildren:
                    pending.append(path)
                if data or stat.ephemeralOwner or not stat.numChildren:
                    found[path[skip:]] = _record(data, stat)
        return found

    def watch(self, key: str, seen: Record | None) -> Watch:
        """An exists-watch armed on the first :meth:`Watch.wait`, compared with ``seen`` then."""
        watch = _ZkWatch(self, self._path(key), seen)
        with self._lock:
            self._watches.add(watch)
            closed = self._closed
        if closed:
            watch.close()
        return watch

    def close(self) -> None:
        """Close the shared connection (Sessions are closed by their owners). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            watches = list(self._watches)
            spare, self._spare = self._spare, None
        for watch in watches:
            watch.close()
        if spare is not None:
            spare.close()
        with self._lock:
            closers = dict(self._closers)
        for wake in closers.values():
            wake.set()
        for thread in closers:
            # Each ends within one kazoo connect attempt (at most ``timeout``) plus a reconnect pause.
            thread.join(self.timeout + 5.0)
        self._shared.stop()
