"""The ZooKeeper Discovery: the contract of :mod:`swarmha.discovery._base` over the pieces of this package."""

from __future__ import annotations

import functools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, NoReturn, TypeVar

from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError, NotEmptyError
from kazoo.security import make_digest_acl

from swarmha.discovery._base import Claim, Discovery, Record, Session, Watch, check_key, check_ttl, done
from swarmha.discovery._url import DiscoveryURL
from swarmha.discovery.zookeeper._async import Operation, Request, block
from swarmha.discovery.zookeeper._connection import Connection
from swarmha.discovery.zookeeper._core import SHARED_SESSION_TIMEOUT, Core
from swarmha.discovery.zookeeper._entry import QUEUE_MARK, Entry, record
from swarmha.discovery.zookeeper._queue import Queues
from swarmha.discovery.zookeeper._session import Owners, ZkSession
from swarmha.discovery.zookeeper._watch import ZkWatch
from swarmha.errors import ConfigurationError, DiscoveryError, DiscoveryUnavailable, InvalidDiscoveryURL, SessionExpired

__all__ = ["DEFAULT_PORT", "DEFAULT_TIMEOUT", "SHARED_SESSION_TIMEOUT", "ZooKeeperDiscovery"]

log = logging.getLogger("swarmha.discovery.zookeeper")

DEFAULT_PORT = 2181
DEFAULT_TIMEOUT = 5.0
_OPTIONS = {"timeout", "prepare"}
_MAX_LIST_NODES = 100_000
_T = TypeVar("_T")


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
        timeout = url.seconds("timeout", DEFAULT_TIMEOUT)
        prepare = url.params.get("prepare", "1")
        if prepare not in ("0", "1"):
            raise InvalidDiscoveryURL(f"zk URL {str(url)!r}: prepare must be 0 or 1, not {prepare!r}")
        self._prepare = prepare == "1"
        if url.username is not None and url.password is None:
            raise InvalidDiscoveryURL(f"zk URL {str(url)!r} needs user:password@ for digest auth")
        auth_data: list[tuple[str, str]] | None = None
        acl: list[Any] | None = None
        if url.username is not None:
            auth_data = [("digest", f"{url.username}:{url.password}")]
            acl = [make_digest_acl(url.username, url.password or "", all=True)]
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in url.endpoints(DEFAULT_PORT))
        self._root = "/" + url.path if url.path else ""
        self._watches: weakref.WeakSet[ZkWatch] = weakref.WeakSet()
        self._watches_lock = threading.Lock()
        self._core = Core(url, timeout, hosts, auth_data, acl)
        self._owners = Owners(self._core)
        self._queues = Queues(self._core)
        self.timeout = timeout

    @property
    def closed(self) -> bool:
        return self._core.closed

    def _path(self, key: str) -> str:
        return f"{self._root}/{check_key(key)}"

    @staticmethod
    def _session(session: Session) -> ZkSession:
        if not isinstance(session, ZkSession):
            raise ConfigurationError(f"{session!r} is not a session of a ZooKeeper discovery")
        return session

    def _new_session(self, ttl: float, *, ticket: bool = False) -> ZkSession:
        conn = self._core.connection(ttl)
        return ZkSession(self._core, self._owners, conn, ttl, ticket=ticket, check_turn=self._queues.check_turn)

    def _read(self, path: str) -> Record | None:
        found = self._core.read(path)
        return None if found is None else self._owners.owned_record(path, found)

    # -- the Discovery contract ----------------------------------------------------------------------------------

    def session(self, ttl: float) -> Session:
        """A new Session of ``ttl`` on the connection of that ttl (see the package docstring)."""
        ttl = check_ttl(ttl)
        return self._new_session(ttl)

    def prepare(self, key: str, value: str, ttl: float, *, listing: str | None = None) -> Session | None:
        """A ticket: a Session of ``ttl`` queued for ``key`` now (see :meth:`Discovery.prepare`).

        Its cost while it waits: one entry znode in the key's queue and one exists-watch on its predecessor (no
        periodic request; the connection is shared); next in line, one exists-watch on ``listing``'s znode, so
        that a claim after the predecessor left lists nothing when that znode stayed absent (:mod:`._steering`).
        ``?prepare=0`` in the URL turns it off.
        """
        if not self._prepare or self._core.closed:
            return None
        try:
            ttl = check_ttl(ttl)
            path = self._path(key)
            steer = None if listing is None else self._path(listing)
        except ConfigurationError:
            return None
        ticket: ZkSession | None = None
        try:
            ticket = self._new_session(ttl, ticket=True)
            entry = self._queues.enqueue(path, value, ticket)
            if entry is None:
                ticket.close()
                return None
            self._owners.note_entry(ticket, entry)
            with ticket.lock:
                entry.steer = steer
            self._queues.check_turn(ticket)
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
        return block(self._create_steps(self._path(key), value, self._session(session)))

    def create_async(self, key: str, value: str, session: Session) -> Future[Record | None]:
        """:meth:`create` pipelined on the session's connection (:mod:`._async`)."""
        try:
            path, s = self._path(key), self._session(session)
        except ConfigurationError as e:
            return done(_raise, e)
        return self._core.pipeline.run(self._create_steps(path, value, s))

    def claim_async(
        self, key: str, value: str, session: Session, listing: str | None = None, *, vacant: bool = False
    ) -> Future[Claim]:
        """The claim pipelined (:mod:`._async`): a plain session first reads the key unless ``vacant`` (a held
        key costs no entry created and withdrawn again), then creates it if vacant; a ticket creates at once (its
        entry is queued). A key not yet known here to be a queue is not read first: one transaction makes the
        queue with the session's entry in it (a win in one request), and only if the key was there already is
        its holder read (:meth:`Queues.create_with_entry_steps`). After a win, ``listing`` is listed (no request
        for a ticket whose steering watch saw nothing there up to its turn: :mod:`._steering`); after a loss, the
        holder read.

        The listing after a win goes on the session's connection, the one whose listings and watch events made the
        entry first: ZooKeeper orders what one connection sees, not what two see, so the read connection (maybe
        on a member that is behind) could miss a key written just before the previous holder left, such as a
        transfer naming another candidate."""
        try:
            path, s = self._path(key), self._session(session)
            top = None if listing is None else self._path(listing)
        except ConfigurationError as e:
            return done(_raise, e)
        return self._core.pipeline.run(self._claim_steps(path, value, s, top, vacant))

    def _claim_steps(self, path: str, value: str, s: ZkSession, top: str | None, vacant: bool) -> Operation[Claim]:
        created: Record | None = None
        if not s.ticket and not vacant:
            if self._unseen(path, s):
                created, holder = yield from self._first_claim_steps(path, value, s)
            else:
                holder = yield from self._get_steps(path)
            if holder is not None and holder.session != s.id:
                return Claim(None, holder)
        if created is None:
            created = yield from self._create_steps(path, value, s)
        if created is None:
            return Claim(None, (yield from self._get_steps(path)))
        if top is None:
            return Claim(created, None, None)
        if s.steering_clear(path, top):  # a ticket's watch saw nothing under top up to its turn (see _steering)
            return Claim(created, None, {})
        return Claim(created, None, (yield from self._list_steps(top, s.conn)))

    def _first_claim_steps(self, path: str, value: str, s: ZkSession) -> Operation[tuple[Record | None, Record | None]]:
        """A plain session's claim of a key not known here to be a queue, without reading it first: (the
        Record, None) when one transaction made the queue with the session's entry heading it
        (:meth:`Queues.create_with_entry_steps`); else (None, the holder), the holder None when the key is vacant
        or a prefix znode is missing (the usual create follows)."""
        sent = time.monotonic()
        s.check()
        try:
            entry = yield from self._queues.create_with_entry_steps(path, value, s)
        except NoNodeError:  # the usual create makes the prefix's znodes
            return None, None
        if entry is not None:
            self._owners.note_entry(s, entry)
            return self._claimed(s, entry, sent), None
        holder = yield from self._queues.listed_holder_steps(path, s)
        return None, holder if holder is not None else (yield from self._get_steps(path))

    def _create_steps(self, path: str, value: str, s: ZkSession) -> Operation[Record | None]:
        sent = time.monotonic()
        s.check()
        with s.lock:
            entry = s.entries.get(path)
        if entry is not None and entry.record.value != value:
            yield from self._queues.withdraw_steps(s, entry)
            entry = None
        fresh = entry is None
        if entry is None:
            entry = yield from self._queues.enqueue_steps(path, value, s)
            if entry is None:
                return None
            self._owners.note_entry(s, entry)
        if fresh or entry.claimed or not entry.first:  # only a waiting ticket's turn may skip the read
            names = (yield from self._queues.entries_steps(path, s.conn, s)) or []
            with s.lock:
                entry.saw(names)
            if entry.name not in names:  # deleted (delete(key, token) of a holder claimed earlier): gone for good
                with s.lock:
                    if s.entries.get(path) is entry:
                        del s.entries[path]
                return None
            if names[0] != entry.name:
                if fresh and not s.ticket:  # a plain session leaves nothing behind when it did not win
                    yield from self._queues.withdraw_steps(s, entry)
                return None
        return self._claimed(s, entry, sent)

    def _claimed(self, s: ZkSession, entry: Entry, sent: float) -> Record:
        """``entry`` heads its queue: ``s`` holds the key from ``sent`` on."""
        s.claim(entry, sent)
        self._core.remember(entry.path, entry.record, entry.mzxid)
        return entry.record

    def _unseen(self, path: str, s: ZkSession) -> bool:
        """``path`` is not known to be a queue and ``s`` has no entry there, tracked or unsure: a claim may then
        make the queue and its entry in one transaction (:meth:`Queues.create_with_entry_steps`)."""
        if self._queues.known(path):
            return False
        with s.lock:
            return path not in s.entries and path not in s.unsure

    def put(self, key: str, value: str, session: Session | None = None) -> Record:
        """Create or overwrite ``key``: ephemeral of ``session`` if given, else persistent.

        Refuses (:class:`~swarmha.errors.DiscoveryError`) to overwrite a key that :meth:`create` made: its queue
        of candidates would be lost.
        """
        path = self._path(key)
        s = self._session(session) if session is not None else None
        conn = s.conn if s is not None else self._core.shared
        data = value.encode()
        for _ in range(5):
            try:
                old, stat = conn.op("put", lambda c: c.get_async(path), session=s)
            except NoNodeError:
                old, stat = b"", None
            if old == QUEUE_MARK:
                raise DiscoveryError(f"ZooKeeper put of {path}: it is an election key (a queue); put cannot replace it")
            mine = self._owners.plain_owner(path)
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
                self._owners.own_plain(path, found.token, s)
                found = Record(found.value, found.token, s.id)
            self._core.remember(path, found, int(stat_now.mzxid))
            return found
        raise DiscoveryError(f"ZooKeeper put of {path} lost the race with other writers 5 times")

    def get(self, key: str) -> Record | None:
        """The key's Record: the holder's entry of its queue (token = the entry's czxid), or a plain znode, as the
        member the read connection talks to has it."""
        return block(self._get_steps(self._path(key)))

    def get_async(self, key: str) -> Future[Record | None]:
        """:meth:`get` pipelined on the read connection (:mod:`._async`)."""
        return self._read_async(key, self._get_steps, lambda: super(ZooKeeperDiscovery, self).get_async(key))

    def _read_async(
        self, key: str, steps: Callable[[str], Operation[_T]], blocking: Callable[[], Future[_T]]
    ) -> Future[_T]:
        """The read operation ``steps`` of ``key``'s path pipelined on the read connection; while that connection is
        down, ``blocking()`` (the blocking form, which waits for it to come back). A bad key: a failed future."""
        try:
            path = self._path(key)
        except ConfigurationError as e:
            return done(_raise, e)
        if not self._core.shared.connected.is_set():
            return blocking()
        return self._core.pipeline.run(steps(path))

    def _get_steps(self, path: str) -> Operation[Record | None]:
        kind = yield from self._queues.kind_steps(path)
        if kind is None:
            return None
        if kind == "queue":
            return (yield from self._queues.holder_steps(path))
        found = yield from self._core.read_steps(path)
        return None if found is None else self._owners.owned_record(path, found)

    def delete(self, key: str, token: int) -> bool:
        """Delete ``key`` if its token equals ``token``.

        A queue: deletes the entry whose czxid is ``token`` (by its name, which no other entry ever has), so it
        can only remove that very entry. A plain ephemeral key only if one of our live Sessions put it, through
        that Session's connection (see the package docstring: versions cannot tell znodes apart).
        """
        path = self._path(key)
        kind = self._queues.kind(path)
        if kind == "queue":
            return self._delete_entry(path, token)
        if kind is None:
            return False
        try:
            _, stat = self._core.shared.op("delete", lambda c: c.get_async(path))
            if int(stat.czxid) != token:
                return False
            if int(stat.ephemeralOwner):
                mine = self._owners.plain_owner(path)
                if mine is None or mine[0] != token or not mine[1].alive:
                    return False  # another session's key, or ours already ended: it goes with that session
                s = mine[1]
                # In order behind everything this connection sent; the czxid check rules out a successor's znode.
                _, stat = s.conn.op("delete", lambda c: c.get_async(path), session=s)
                if int(stat.czxid) != token:
                    return False
                s.conn.op("delete", lambda c: c.delete_async(path, version=stat.version), session=s)
                self._owners.drop_plain(path, s)
            else:
                self._core.shared.op("delete", lambda c: c.delete_async(path, version=stat.version))
        except (NoNodeError, BadVersionError, NotEmptyError, SessionExpired):
            return False
        self._core.remember(path, None)
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
        for s in self._owners.members(path):
            with s.lock:
                entry = s.entries.get(path)
            if entry is not None and entry.record.token == token:
                target, owner = entry.path, (s, entry)
        if target is None:
            for name in self._queues.entries(path) or []:
                stat = self._core.shared.op("delete", functools.partial(_exists, path=f"{path}/{name}"))
                if stat is not None and int(stat.czxid) == token:
                    target = f"{path}/{name}"
                    break
        if target is None:
            return False
        try:
            self._core.shared.op("delete", lambda c: c.delete_async(target))
            deleted = True
        except NoNodeError:
            deleted = False
        except DiscoveryError:
            if owner is not None:
                owner[0].forget(owner[1], gone=False)
            raise
        if owner is not None:
            owner[0].forget(owner[1])
        self._core.remember(target, None)
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
                self._queues.withdraw(s, entry)
        except DiscoveryUnavailable:
            reachable = False
            with s.lock:
                s.entries.setdefault(path, entry)  # type: ignore[arg-type]  # the close deletes it later
        except DiscoveryError as e:
            log.debug("ZooKeeper release of %s: the delete failed (%s); the close removes it", path, e)
        finally:
            s.close()
            if entry is not None:
                self._core.remember(entry.path, None)
        if not reachable:
            raise DiscoveryUnavailable(
                f"ZooKeeper session {s.id} was not connected when released: {path} goes once the store "
                "answers or when the connection's session expires"
            )

    def list(self, prefix: str) -> Mapping[str, Record]:
        """Every key below ``prefix/``: znodes with data, ephemeral or leaves, and election keys with a holder."""
        return block(self._list_steps(self._path(prefix)))

    def list_async(self, prefix: str) -> Future[Mapping[str, Record]]:
        """:meth:`list` pipelined on the read connection (:mod:`._async`)."""
        return self._read_async(prefix, self._list_steps, lambda: super(ZooKeeperDiscovery, self).list_async(prefix))

    def _list_steps(self, top: str, conn: Connection | None = None) -> Operation[Mapping[str, Record]]:
        """The listing of ``top`` on ``conn`` (default: the read connection). A queue found below it has its
        holder read on the read connection."""
        via = conn or self._core.shared
        skip = len(self._root) + 1
        found: dict[str, Record] = {}
        pending = [top]
        visited = 0
        while pending and visited < _MAX_LIST_NODES:
            parent = pending.pop()
            try:
                children = yield Request(via, "list", functools.partial(_children, path=parent))
            except NoNodeError:
                continue
            for child in children:
                path = f"{parent}/{child}"
                visited += 1
                try:
                    data, stat = yield Request(via, "list", functools.partial(_get, path=path))
                except NoNodeError:
                    continue
                if data == QUEUE_MARK:
                    self._queues.remember(path)
                    holder = yield from self._queues.holder_steps(path)
                    if holder is not None:
                        found[path[skip:]] = holder
                    continue
                if stat.numChildren:
                    pending.append(path)
                if data or stat.ephemeralOwner or not stat.numChildren:
                    found[path[skip:]] = self._owners.owned_record(path, record(data, stat, path))
        return found

    def watch(self, key: str, seen: Record | None) -> Watch:
        """A watch armed on the first :meth:`Watch.wait`, compared with ``seen`` then."""
        watch = ZkWatch(self._core, self._queues, self._owners, self._path(key), seen)
        with self._watches_lock:
            self._watches.add(watch)
        if self._core.closed:
            watch.close()
        return watch

    def close(self) -> None:
        """Close every connection (their ZooKeeper sessions end: every key held through them goes). Idempotent."""
        if not self._core.close():
            return
        with self._watches_lock:
            watches = list(self._watches)
        for watch in watches:
            watch.close()
        self._core.stop()


def _raise(error: Exception) -> NoReturn:
    raise error


def _exists(client: Any, path: str, watch: Any = None) -> Any:
    return client.exists_async(path, watch=watch)


def _children(client: Any, path: str, watch: Any = None) -> Any:
    return client.get_children_async(path, watch=watch)


def _get(client: Any, path: str, watch: Any = None) -> Any:
    return client.get_async(path, watch=watch)


def _set_data(client: Any, path: str, data: bytes, version: int) -> Any:
    return client.set_data_async(path, data, version)
