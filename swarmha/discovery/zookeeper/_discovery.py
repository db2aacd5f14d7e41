"""The ZooKeeper Discovery: the contract of :mod:`swarmha.discovery._base` over the pieces of this package."""

from __future__ import annotations

import functools
import logging
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError, NotEmptyError
from kazoo.security import make_digest_acl

from swarmha.discovery._base import Discovery, Record, Session, Watch, check_key, check_ttl
from swarmha.discovery._url import DiscoveryURL
from swarmha.discovery.zookeeper._connection import Connection
from swarmha.discovery.zookeeper._queue import QUEUE_MARK, RACE_LIMIT, Entry, Queues, queue_order, record
from swarmha.discovery.zookeeper._session import ZkSession
from swarmha.discovery.zookeeper._timer import Timer
from swarmha.discovery.zookeeper._watch import Hub, ZkWatch
from swarmha.errors import ConfigurationError, DiscoveryError, DiscoveryUnavailable, InvalidDiscoveryURL, SessionExpired

__all__ = ["DEFAULT_PORT", "DEFAULT_TIMEOUT", "SHARED_SESSION_TIMEOUT", "ZooKeeperDiscovery"]

log = logging.getLogger("swarmha.discovery.zookeeper")

DEFAULT_PORT = 2181
DEFAULT_TIMEOUT = 5.0
#: Longest session timeout of the read connection (it holds no ephemerals; expiry only costs a re-arm of the
#: watches). It is also ``timeout`` when that is shorter, so that its session is not kept long for nothing; the
#: wait for a handshake the server never answers is bounded by ``timeout`` on every connection
#: (:func:`~._connection.handshake_hosts`).
SHARED_SESSION_TIMEOUT = 10.0
_OPTIONS = {"timeout", "prepare"}
_CACHE_LIMIT = 4096
_MAX_LIST_NODES = 100_000


class ZooKeeperDiscovery(Discovery):
    """Discovery over a ZooKeeper ensemble (see the package docstring for the URL, options and guarantees)."""

    log = log

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
        self.auth_data: list[tuple[str, str]] | None = None
        self.acl: list[Any] | None = None
        if url.username is not None:
            self.auth_data = [("digest", f"{url.username}:{url.password}")]
            self.acl = [make_digest_acl(url.username, url.password or "", all=True)]
        self.hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in url.endpoints(DEFAULT_PORT))
        self._root = "/" + url.path if url.path else ""
        self.lock = threading.Lock()
        self._closed = False
        self._reads: dict[str, tuple[Record, int]] = {}  # path -> (record, mzxid) of the last read
        self._watches: weakref.WeakSet[ZkWatch] = weakref.WeakSet()
        self._members: dict[str, set[ZkSession]] = {}  # queue path -> live Sessions with an entry there
        self._plain: dict[str, tuple[int, ZkSession]] = {}  # plain ephemeral path -> (czxid, the Session that put it)
        self._conns: dict[float, Connection] = {}  # ttl -> the connection whose ZooKeeper session backs Sessions
        self.timer = Timer("swarmha-zk-timer")
        self.hub = Hub()
        self.queues = Queues(self)
        self.shared = self._connect(min(SHARED_SESSION_TIMEOUT, self.timeout), "shared")

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

    # -- plumbing ----------------------------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        return f"{self._root}/{check_key(key)}"

    def _remember(self, path: str, found: Record | None, mzxid: int = 0) -> None:
        with self.lock:
            if found is None:
                self._reads.pop(path, None)
                return
            if path not in self._reads and len(self._reads) >= _CACHE_LIMIT:
                self._reads.pop(next(iter(self._reads)))
            self._reads[path] = (found, mzxid)

    def _cached(self, path: str, czxid: int, mzxid: int) -> Record | None:
        with self.lock:
            known = self._reads.get(path)
        if known is not None and known[0].token == czxid and known[1] == mzxid:
            return known[0]
        return None

    def cached_entry(self, path: str) -> Record | None:
        with self.lock:
            known = self._reads.get(path)
        return None if known is None else known[0]

    def read(self, path: str, via: ZkSession | None = None) -> Record | None:
        conn = via.conn if via is not None else self.shared
        try:
            data, stat = conn.op("get", lambda c: c.get_async(path), session=via)
        except NoNodeError:
            self._remember(path, None)
            return None
        found = self._owned_record(path, record(data, stat, path))
        self._remember(path, found, int(stat.mzxid))
        return found

    def _owned_record(self, path: str, found: Record) -> Record:
        """A plain ephemeral put with one of our Sessions names that Session (not the shared connection's)."""
        with self.lock:
            mine = self._plain.get(path)
        if mine is not None and mine[0] == found.token:
            return Record(found.value, found.token, mine[1].id)
        return found

    def _note_entry(self, session: ZkSession, entry: Entry) -> None:
        with self.lock:
            self._members.setdefault(entry.parent, set()).add(session)

    def disown(self, session: ZkSession, entries: list[Entry]) -> None:
        """Forget a Session that ended (called by it) and the entries it had."""
        with self.lock:
            for entry in entries:
                members = self._members.get(entry.parent)
                if members is not None:
                    members.discard(session)
                    if not members:
                        del self._members[entry.parent]
                self._reads.pop(entry.path, None)

    def delete_plain(self, session: ZkSession, plain: dict[str, int], timeout: float | None) -> None:
        """Delete the plain ephemerals ``session`` put (path -> czxid; it ended) that are still those znodes.

        Waits up to ``timeout`` for the answers (None: not at all), so that once a connected Session's close
        returned its keys are gone; see :meth:`~._connection.Connection.delete_owned` for a connection that is down.
        """
        with self.lock:
            for path in plain:
                if self._plain.get(path, (0, None))[1] is session:
                    del self._plain[path]
        session.conn.delete_owned(plain, timeout)

    @staticmethod
    def _session(session: Session) -> ZkSession:
        if not isinstance(session, ZkSession):
            raise ConfigurationError(f"{session!r} is not a session of a ZooKeeper discovery")
        return session

    # -- watches -------------------------------------------------------------------------------------------------

    def _via(self, path: str) -> ZkSession | None:
        """A live, connected Session of this Discovery with an entry in the queue ``path``, if any.

        A watch on that queue goes through its connection rather than the read one: the reads that follow are
        ordered after the event on that connection, and a waiting ticket's create can then skip a read.
        """
        with self.lock:
            members = list(self._members.get(path, ()))
        usable = []
        for s in members:
            entry = s.entries.get(path)
            if entry is not None and s.alive and s.conn.connected.is_set():
                usable.append((entry.claimed, s.id, s))  # a waiting ticket first
        return min(usable, key=lambda u: (u[0], u[1]))[2] if usable else None

    def arm(self, path: str, watch: ZkWatch) -> Record | None:
        """Set a watcher for the next change of key ``path`` and return the key's state at that moment.

        A queue: an exists-watch on the holder's entry, or (empty) a child watch on the queue. A plain key: a
        data watch, or (absent) an exists-watch for its creation. Through :meth:`_via`'s session's connection if
        there is one (``watch.via``), else the read connection.
        """
        via = self._via(path)
        conn = via.conn if via is not None else self.shared
        watch.via = via

        def subscribe(target: str) -> Any:
            old = watch.subscription
            if old is not None and old != (conn, target):
                self.hub.unsubscribe(old[0], old[1], watch.fire)
            watch.subscription = (conn, target)
            return self.hub.subscribe(conn, target, watch.fire)

        for _ in range(RACE_LIMIT):
            kind = self.queues.kind(path)
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
                found = self._cached(path, int(stat.czxid), int(stat.mzxid)) or self._owned_record(
                    path, record(data, stat, path)
                )
                self._remember(path, found, int(stat.mzxid))
                return found
            names = self.queues.entries(path, conn, via)
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
            held = self._cached(head, int(stat.czxid), int(stat.mzxid)) or self.read(head, via)
            if held is not None:
                return held
        raise DiscoveryUnavailable(f"ZooKeeper key {path} changed under {RACE_LIMIT} watch attempts in a row")

    def unwatch(self, watch: ZkWatch) -> None:
        sub, watch.subscription = watch.subscription, None
        if sub is not None:
            self.hub.unsubscribe(sub[0], sub[1], watch.fire)

    def check_turn(self, session: ZkSession) -> None:
        self.queues.check_turn(session)

    # -- the Discovery contract ----------------------------------------------------------------------------------

    def session(self, ttl: float) -> Session:
        """A new Session of ``ttl`` on the connection of that ttl (see the package docstring)."""
        ttl = check_ttl(ttl)
        return ZkSession(self, self.connection(ttl), ttl)

    def prepare(self, key: str, value: str, ttl: float) -> Session | None:
        """A ticket: a Session of ``ttl`` queued for ``key`` now (see :meth:`Discovery.prepare`).

        Its cost while it waits: one entry znode in the key's queue and one exists-watch on its predecessor (no
        periodic request; the connection is shared). ``?prepare=0`` in the URL turns it off.
        """
        if not self._prepare or self._closed:
            return None
        try:
            ttl = check_ttl(ttl)
            path = self._path(key)
        except ConfigurationError:
            return None
        ticket: ZkSession | None = None
        try:
            ticket = ZkSession(self, self.connection(ttl), ttl, ticket=True)
            entry = self.queues.enqueue(path, value, ticket)
            if entry is None:
                ticket.close()
                return None
            self._note_entry(ticket, entry)
            self.queues.check_turn(ticket)
            return ticket
        except Exception as e:  # never raises: the campaign opens a session itself
            log.debug("preparing a ZooKeeper ticket for %s: %s", path, e)
            if ticket is not None:
                ticket.close()
            return None

    def create(self, key: str, value: str, session: Session) -> Record | None:
        """Make ``session`` the holder of ``key`` if the key's queue has no holder before it; token = the czxid of
        the session's entry. None if another entry (or a plain znode) holds the key.

        A session without an entry gets one (a create) and the queue is read through the session's connection
        (it sees its own write); if another entry is first, a plain session's entry is withdrawn again (a
        delete), a ticket's stays queued. A ticket already queued costs one read, or none when its watch saw the
        only entry ahead of it go.
        """
        path = self._path(key)
        s = self._session(session)
        sent = time.monotonic()
        s.check()
        with s.lock:
            entry = s.entries.get(path)
        if entry is not None and entry.record.value != value:
            self.queues.withdraw(s, entry)
            entry = None
        fresh = entry is None
        if entry is None:
            entry = self.queues.enqueue(path, value, s)
            if entry is None:
                return None
            self._note_entry(s, entry)
        if fresh or entry.claimed or not entry.first:  # only a waiting ticket's turn may skip the read
            names = self.queues.entries(path, s.conn, s) or []
            with s.lock:
                entry.saw(names)
            if entry.name not in names:  # deleted (delete(key, token) of a holder claimed earlier): gone for good
                with s.lock:
                    if s.entries.get(path) is entry:
                        del s.entries[path]
                return None
            if names[0] != entry.name:
                if fresh and not s.ticket:
                    self.queues.withdraw(s, entry)  # a plain session leaves nothing behind when it did not win
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
        conn = s.conn if s is not None else self.shared
        data = value.encode()
        for _ in range(5):
            try:
                old, stat = conn.op("put", lambda c: c.get_async(path), session=s)
            except NoNodeError:
                old, stat = b"", None
            if old == QUEUE_MARK:
                raise DiscoveryError(f"ZooKeeper put of {path}: it is an election key (a queue); put cannot replace it")
            with self.lock:
                mine = self._plain.get(path)
            ours = stat is not None and mine is not None and mine[1] is s and mine[0] == int(stat.czxid)
            try:
                if stat is None:
                    conn.op(
                        "put",
                        lambda c: c.create_async(path, data, ephemeral=s is not None, makepath=True),
                        session=s,
                    )
                elif ours or (s is None and not int(stat.ephemeralOwner)):
                    version = int(stat.version)
                    conn.op("put", functools.partial(_set_data, path=path, data=data, version=version), session=s)
                else:  # owned by another session (or none): replace it in one transaction

                    def replace(c: Any, v: int = stat.version) -> Any:
                        t = c.transaction()
                        t.delete(path, version=v)
                        t.create(path, data, ephemeral=s is not None)
                        return t.commit_async()

                    results = conn.op("put", replace, session=s)
                    if any(isinstance(r, Exception) for r in results):
                        continue
            except (NodeExistsError, NoNodeError, BadVersionError):
                continue
            try:
                data_now, stat_now = conn.op("put", lambda c: c.get_async(path), session=s)
            except NoNodeError:
                continue
            found = record(data_now, stat_now, path)
            if s is not None:
                with self.lock:
                    self._plain[path] = (found.token, s)
                with s.lock:
                    s.plain[path] = found.token
                found = Record(found.value, found.token, s.id)
            self._remember(path, found, int(stat_now.mzxid))
            return found
        raise DiscoveryError(f"ZooKeeper put of {path} lost the race with other writers 5 times")

    def get(self, key: str) -> Record | None:
        """The key's Record: the holder's entry of its queue (token = the entry's czxid), or a plain znode, as the
        member the read connection talks to has it."""
        path = self._path(key)
        kind = self.queues.kind(path)
        if kind is None:
            return None
        return self.queues.holder(path) if kind == "queue" else self.read(path)

    def delete(self, key: str, token: int) -> bool:
        """Delete ``key`` if its token equals ``token``.

        A queue: deletes the entry whose czxid is ``token`` (by its name, which no other entry ever has), so it
        can only remove that very entry. A plain ephemeral key only if one of our live Sessions put it, through
        that Session's connection (see the package docstring: versions cannot tell znodes apart).
        """
        path = self._path(key)
        kind = self.queues.kind(path)
        if kind == "queue":
            return self._delete_entry(path, token)
        if kind is None:
            return False
        try:
            _, stat = self.shared.op("delete", lambda c: c.get_async(path))
            if int(stat.czxid) != token:
                return False
            if int(stat.ephemeralOwner):
                with self.lock:
                    mine = self._plain.get(path)
                if mine is None or mine[0] != token or not mine[1].alive:
                    return False  # another session's key, or ours already ended: it goes with that session
                s = mine[1]
                # In order behind everything this connection sent; the czxid check rules out a successor's znode.
                _, stat = s.conn.op("delete", lambda c: c.get_async(path), session=s)
                if int(stat.czxid) != token:
                    return False
                s.conn.op("delete", lambda c: c.delete_async(path, version=stat.version), session=s)
                with self.lock:
                    self._plain.pop(path, None)
                with s.lock:
                    s.plain.pop(path, None)
            else:
                self.shared.op("delete", lambda c: c.delete_async(path, version=stat.version))
        except (NoNodeError, BadVersionError, NotEmptyError, SessionExpired):
            return False
        self._remember(path, None)
        return True

    def _delete_entry(self, path: str, token: int) -> bool:
        """Delete the queue entry of ``path`` whose czxid is ``token``.

        When one of our Sessions owns it, the Session forgets it once the delete is answered (until then a
        close of the Session still deletes it): a later create through that Session (a Lease's, which outlives
        the term) queues a new entry, with a new token, and never claims this one again. If the delete fails
        (connection lost; the error is raised), the owner's connection deletes the entry once it is back: an
        entry no Session tracks would otherwise hold the key for as long as the connection's ZooKeeper
        session lives.
        """
        target = None
        owner: tuple[ZkSession, Entry] | None = None
        with self.lock:
            members = list(self._members.get(path, ()))
        for s in members:
            with s.lock:
                entry = s.entries.get(path)
            if entry is not None and entry.record.token == token:
                target, owner = entry.path, (s, entry)
        if target is None:
            for name in self.queues.entries(path) or []:
                stat = self.shared.op("delete", functools.partial(_exists, path=f"{path}/{name}"))
                if stat is not None and int(stat.czxid) == token:
                    target = f"{path}/{name}"
                    break
        if target is None:
            return False
        try:
            self.shared.op("delete", lambda c: c.delete_async(target))
            deleted = True
        except NoNodeError:
            deleted = False
        except DiscoveryError:
            if owner is not None:
                owner[0].forget(owner[1], gone=False)
            raise
        if owner is not None:
            owner[0].forget(owner[1])
        self._remember(target, None)
        return deleted

    def release(self, key: str, token: int, session: Session) -> None:
        """Hand over ``key``: delete the session's entry (by its unique name), then close ``session``.

        The waiting candidates' watches fire on the delete (one round trip, as a kazoo ``Lock`` release), and
        the close removes whatever else the session holds. Never removes a znode of another session. Raises
        :class:`~swarmha.errors.DiscoveryUnavailable` when the connection was down: the key then goes as soon as
        it is back (the delete is sent then) or when the server expires the connection's session; the session
        is closed here in every case, without waiting.
        """
        s = self._session(session)
        path = self._path(key)
        reachable = s.conn.connected.is_set() or not s.alive  # an expired session's key is already gone
        with s.lock:
            entry = s.entries.get(path)
        try:
            if entry is not None and entry.record.token == token and reachable and s.alive:
                self.queues.withdraw(s, entry)
        except DiscoveryUnavailable:
            reachable = False
            with s.lock:
                s.entries.setdefault(path, entry)  # type: ignore[arg-type]  # the close deletes it later
        except DiscoveryError as e:
            log.debug("ZooKeeper release of %s: the delete failed (%s); the close removes it", path, e)
        finally:
            s.close()
            if entry is not None:
                self._remember(entry.path, None)
        if not reachable:
            raise DiscoveryUnavailable(
                f"ZooKeeper session {s.id} was not connected when released: {path} goes once the store "
                "answers or when the connection's session expires"
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
                children = self.shared.op("list", functools.partial(_children, path=parent))
            except NoNodeError:
                continue
            for child in children:
                path = f"{parent}/{child}"
                visited += 1
                try:
                    data, stat = self.shared.op("list", functools.partial(_get, path=path))
                except NoNodeError:
                    continue
                if data == QUEUE_MARK:
                    self.queues.remember(path)
                    holder = self.queues.holder(path)
                    if holder is not None:
                        found[path[skip:]] = holder
                    continue
                if stat.numChildren:
                    pending.append(path)
                if data or stat.ephemeralOwner or not stat.numChildren:
                    found[path[skip:]] = self._owned_record(path, record(data, stat, path))
        return found

    def watch(self, key: str, seen: Record | None) -> Watch:
        """A watch armed on the first :meth:`Watch.wait`, compared with ``seen`` then."""
        watch = ZkWatch(self, self._path(key), seen)
        with self.lock:
            self._watches.add(watch)
            closed = self._closed
        if closed:
            watch.close()
        return watch

    def close(self) -> None:
        """Close every connection (their ZooKeeper sessions end: every key held through them goes). Idempotent."""
        with self.lock:
            if self._closed:
                return
            self._closed = True
            watches = list(self._watches)
            conns = list(self._conns.values())
        for watch in watches:
            watch.close()
        self.timer.stop()
        for conn in conns:
            conn.stop()
        self.shared.stop()


def _exists(client: Any, path: str, watch: Any = None) -> Any:
    return client.exists_async(path, watch=watch)


def _children(client: Any, path: str, watch: Any = None) -> Any:
    return client.get_children_async(path, watch=watch)


def _get(client: Any, path: str, watch: Any = None) -> Any:
    return client.get_async(path, watch=watch)


def _set_data(client: Any, path: str, data: bytes, version: int) -> Any:
    return client.set_data_async(path, data, version)
