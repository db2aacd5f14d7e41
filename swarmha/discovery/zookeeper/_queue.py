"""Election keys as queues of entries, and tickets waiting in them (the layout: :mod:`._entry`).

:class:`Queues` makes and reads them for a Discovery: enqueue an entry for a Session, withdraw it by its unique
name (never another entry), list a queue holder first, find the holder, and check a waiting ticket's turn.

Known heads: each listing notes the entry heading its queue. Entries are numbered in creation order, so an entry
that heads its queue heads it for as long as it exists: finding the holder, or arming a watch on it, then takes
one request on that entry (``get``, ``exists``) instead of a listing and that request. A head gone since (the
request answers NoNode, or a znode of another ``czxid``) is forgotten and the queue listed again. Requests per key
of three processes electing 2,000 keys: 19 -> 15 to elect, 12 -> 10 to hand over.

A key not yet known to be a queue: a plain session's claim does not read it first. One transaction makes the
queue znode with the session's entry in it (:meth:`Queues.create_with_entry_steps`): a win in one request, no
listing (the entry is the queue's only one). When the key is there already the transaction makes nothing, and the
claimer lists the queue and reads its head (entries listed tell a queue from a plain key). Requests per key of
three processes electing 10,000 keys (``python -m benchmarks scale --keys 10000 --backends zk --systems
swarmha-lease``): 15.0 -> 10.9; every key led in 14.9 s -> 11.5 s.

Creates go out as kazoo's ``Create``/``Create2`` requests through the client's request queue (``_call``, the one
kazoo's ``create_async`` ends in), without ``create_async``'s wrapping: it makes two async results, three closures
decorated with ``functools.wraps`` and a second hop through the completion thread per create, for its makepath
retry, which a queue needs only when the prefix's znodes are missing (then kazoo's call makes them). The
private ``_call`` is kazoo's own path for every request (2.x); a client with a chroot is refused rather than
sent unprefixed paths.
"""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any

from kazoo.exceptions import NodeExistsError, NoNodeError, RolledBackError, RuntimeInconsistency
from kazoo.protocol.serialization import Create, Create2, SetData, Transaction
from kazoo.security import OPEN_ACL_UNSAFE

from swarmha.discovery._base import Record
from swarmha.discovery.zookeeper._async import Operation, Request, block
from swarmha.discovery.zookeeper._connection import Connection
from swarmha.discovery.zookeeper._core import CACHE_LIMIT, Core, log
from swarmha.discovery.zookeeper._entry import QUEUE_MARK, RACE_LIMIT, Entry, queue_order, record
from swarmha.discovery.zookeeper._steering import arm
from swarmha.errors import DiscoveryError, DiscoveryUnavailable

#: Create flags: ephemeral (1) and sequential (2).
_EPHEMERAL_SEQUENTIAL = 3
#: What a failed transaction answers for its operations other than the one that failed.
_ROLLED_BACK = (RolledBackError, RuntimeInconsistency)

if TYPE_CHECKING:
    from swarmha.discovery.zookeeper._session import ZkSession

__all__ = ["Queues"]


class Queues:
    """Queue operations of one Discovery (see the module docstring). Thread-safe."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._known: set[str] = set()  # znodes known to be queues (a queue znode is never removed by us)
        self._heads: dict[str, str] = {}  # queue path -> the entry (path) the last listing saw heading it

    def known(self, path: str) -> bool:
        with self._core.lock:
            return path in self._known

    def remember(self, path: str) -> None:
        with self._core.lock:
            if path not in self._known and len(self._known) >= CACHE_LIMIT:
                self._known.pop()
            self._known.add(path)

    def forget(self, path: str) -> None:
        with self._core.lock:
            self._known.discard(path)

    def head(self, path: str) -> str | None:
        """The entry the last listing of the queue ``path`` saw heading it (it still does if it exists), if any."""
        with self._core.lock:
            return self._heads.get(path)

    def forget_head(self, path: str, head: str) -> None:
        """``head`` no longer heads the queue ``path`` (it is gone)."""
        with self._core.lock:
            if self._heads.get(path) == head:
                del self._heads[path]

    def _saw(self, path: str, names: list[str]) -> None:
        with self._core.lock:
            if not names:
                self._heads.pop(path, None)
                return
            if path not in self._heads and len(self._heads) >= CACHE_LIMIT:
                self._heads.pop(next(iter(self._heads)))
            self._heads[path] = f"{path}/{names[0]}"

    def kind(self, path: str) -> str | None:
        """``"queue"``, ``"plain"``, or None (absent)."""
        return block(self.kind_steps(path))

    def kind_steps(self, path: str) -> Operation[str | None]:
        """:meth:`kind` as an operation (:mod:`._async`)."""
        if self.known(path):
            return "queue"
        try:
            data, _ = yield Request(self._core.shared, "get", functools.partial(_get, path=path))
        except NoNodeError:
            return None
        if data != QUEUE_MARK:
            return "plain"
        self.remember(path)
        return "queue"

    def entries(self, path: str, conn: Connection | None = None, session: ZkSession | None = None) -> list[str] | None:
        """The entry names of the queue ``path``, holder first; None if ``path`` does not exist."""
        return block(self.entries_steps(path, conn, session))

    def entries_steps(
        self, path: str, conn: Connection | None = None, session: ZkSession | None = None
    ) -> Operation[list[str] | None]:
        """:meth:`entries` as an operation (:mod:`._async`)."""
        try:
            read = functools.partial(_children, path=path)
            children = yield Request(conn or self._core.shared, "read", read, session)
        except NoNodeError:
            self.forget(path)
            self._saw(path, [])
            return None
        names = queue_order(children)
        self._saw(path, names)
        return names

    def holder(self, path: str) -> Record | None:
        """The Record of the queue's holder (its first entry), or None when the queue is empty or absent."""
        return block(self.holder_steps(path))

    def holder_steps(self, path: str) -> Operation[Record | None]:
        """:meth:`holder` as an operation (:mod:`._async`)."""
        for _ in range(RACE_LIMIT):
            head = self.head(path)
            if head is not None:  # one read, no listing: it still holds the key if it exists
                known = self._core.cached_entry(head)
                found = yield from self._core.read_steps(head)
                if found is not None and (known is None or known.token == found.token):
                    return found
                self.forget_head(path, head)
            names = yield from self.entries_steps(path)
            if not names:
                return None
            head = f"{path}/{names[0]}"
            known = self._core.cached_entry(head)
            if known is not None:  # an entry's data never changes
                return known
            found = yield from self._core.read_steps(head)
            if found is not None:
                return found
        raise DiscoveryUnavailable(f"ZooKeeper queue {path} changed under {RACE_LIMIT} reads in a row")

    def enqueue(self, path: str, value: str, session: ZkSession) -> Entry | None:
        """Add an entry of ``session`` to the queue ``path`` (made if absent); None if ``path`` is a plain key.

        Raises what :meth:`Connection.op` raises. A create that got no answer may have made the entry: the session
        notes it (:meth:`ZkSession.maybe_enqueued`), and such entries are swept before it queues there again.
        """
        return block(self.enqueue_steps(path, value, session))

    def enqueue_steps(self, path: str, value: str, session: ZkSession) -> Operation[Entry | None]:
        """:meth:`enqueue` as an operation (:mod:`._async`)."""
        data = value.encode()
        conn = session.conn
        for _ in range(RACE_LIMIT):
            if not self.known(path):
                try:
                    try:
                        yield Request(conn, "create", functools.partial(_create_queue, path=path), session)
                    except NoNodeError:  # the prefix's znodes are missing: make them too
                        yield Request(conn, "create", functools.partial(_create_queue_and_parents, path=path), session)
                except NodeExistsError:
                    if (yield from self.kind_steps(path)) != "queue":
                        return None  # a plain key (put, or a key made by an older swarmha) holds it
                self.remember(path)
            if path in session.unsure:
                yield from self._sweep_steps(path, session)
            prefix = f"{path}/{session.entry_prefix}"
            try:
                created, stat = yield Request(
                    conn, "create", functools.partial(_create_entry, path=prefix, data=data), session
                )
            except NoNodeError:  # the queue znode was removed (by hand) since: make it again
                self.forget(path)
                continue
            except DiscoveryUnavailable:
                session.maybe_enqueued(path)  # the entry may exist: it must never hold the key untracked
                raise
            return _track(session, Entry(path, created, record(data, stat, created), int(stat.mzxid)))
        raise DiscoveryUnavailable(f"ZooKeeper queue {path} vanished under {RACE_LIMIT} creates in a row")

    def create_with_entry_steps(self, path: str, value: str, session: ZkSession) -> Operation[Entry | None]:
        """Make the queue ``path`` and the session's entry in it in one transaction: the entry then heads the queue
        (nothing was in it before), so no listing is needed. None, with nothing made, when ``path`` exists
        already (a queue or a plain key); NoNodeError, with nothing made, when its parent does not (the usual
        create makes the prefix's znodes).

        Only for a path not known to be a queue, where the session has no entry and no unsure create. The third
        operation rewrites the queue's mark unchanged, for its stat: a transaction answers a create with its path
        alone, and every change of a transaction has the transaction's zxid, so that stat's ``czxid`` is the
        entry's too (its token). Raises what :meth:`Connection.op` raises; a transaction that got no answer may
        have made the entry, which is then noted as :meth:`enqueue` notes it.
        """
        data = value.encode()
        conn = session.conn
        prefix = f"{path}/{session.entry_prefix}"
        make = functools.partial(_create_queue_with_entry, path=path, prefix=prefix, data=data)
        try:
            results = yield Request(conn, "create", make, session)
        except DiscoveryUnavailable:
            session.maybe_enqueued(path)
            raise
        failed = [r for r in results if isinstance(r, Exception) and not isinstance(r, _ROLLED_BACK)]
        if failed:  # nothing was made
            if isinstance(failed[0], NodeExistsError):
                return None
            raise conn.translate("create", failed[0], session)  # NoNodeError as it is: a prefix znode is missing
        created, stat = results[1], results[2]
        self.remember(path)
        name = created.rsplit("/", 1)[1]
        self._saw(path, [name])
        entry = Entry(path, created, record(data, stat, created), int(stat.mzxid))
        entry.saw([name])
        return _track(session, entry)

    def listed_holder_steps(self, path: str, session: ZkSession) -> Operation[Record | None]:
        """The holder of the queue ``path`` found by listing it first, through the session's connection (which
        has seen ``path`` exist: :meth:`create_with_entry_steps` found it there), then reading its head; None when
        the listing shows no entry, or the head left meanwhile (the caller then reads the key the usual way, its
        kind first). Entries are made only in a znode known to be a queue, so entries listed tell a queue from a
        plain key without reading the kind: for a held queue, one read fewer than :meth:`holder_steps` makes."""
        names = yield from self.entries_steps(path, session.conn, session)
        if not names:
            return None
        self.remember(path)
        head = f"{path}/{names[0]}"
        return self._core.cached_entry(head) or (yield from self._core.read_steps(head, session.conn, session))

    def _sweep_steps(self, path: str, session: ZkSession) -> Operation[None]:
        """Delete the entries of ``session`` in the queue ``path`` that a create whose answer was lost may have
        made (it has no tracked entry there: :meth:`enqueue` is called only then). The read and the deletes go on
        the session's connection, ahead of the create that follows, so they never see that create's entry."""
        names = (yield from self.entries_steps(path, session.conn, session)) or []
        for name in names:
            if name.startswith(session.entry_prefix):
                with contextlib.suppress(NoNodeError):  # gone already
                    yield Request(session.conn, "sweep", functools.partial(_delete, path=f"{path}/{name}"), session)
        with session.lock:
            session.unsure.discard(path)

    def withdraw(self, session: ZkSession, entry: Entry) -> None:
        """Delete ``entry`` (by its unique name: never another entry), then forget it.

        If the delete fails (the connection was lost; the error is raised), the connection deletes the entry
        once it is back (:meth:`Connection.delete_later`): a forgotten entry left in the queue would hold the
        key for as long as the connection's ZooKeeper session lives (the fault soak found that: no leader for
        40 s after a withdraw hit ConnectionLoss).
        """
        block(self.withdraw_steps(session, entry))

    def withdraw_steps(self, session: ZkSession, entry: Entry) -> Operation[None]:
        """:meth:`withdraw` as an operation (:mod:`._async`)."""
        try:
            yield Request(session.conn, "withdraw", functools.partial(_delete, path=entry.path), session)
        except NoNodeError:
            pass
        except DiscoveryError:
            session.forget(entry, gone=False)
            raise
        session.forget(entry)  # only now: a close meanwhile still deletes it

    def check_turn(self, session: ZkSession) -> None:
        """For a ticket's unclaimed entries: start its clock if one holds the key, else watch its predecessor (and,
        next in line, the prefix its claim will list: :mod:`._steering`).

        Runs on the Discovery's timer thread (and once in ``prepare``). Never raises: on a store error it tries
        again after the turn-check grace (the session's own state then decides its fate, as for any session).
        """
        with session.lock:
            pending = [e for e in session.entries.values() if not e.claimed]
        for entry in pending:
            try:
                for _ in range(RACE_LIMIT):
                    if not entry.first:
                        names = self.entries(entry.parent, session.conn, session) or []
                        if entry.name not in names:
                            break  # withdrawn or deleted: a create with this ticket will queue it again
                        with session.lock:
                            entry.saw(names)  # sets first, or the predecessor to watch
                    if entry.first:
                        session.leads_unclaimed(entry)
                        break
                    before = entry.predecessor
                    assert before is not None  # not first: saw() noted the entry right before it
                    if entry.ahead == 1:  # next in line: its claim may skip the listing (see _steering)
                        arm(self._core, session, entry)
                    callback = self._core.hub.subscribe(session.conn, before, session.predecessor_gone)
                    exists = functools.partial(_exists, path=before, watch=callback)
                    if session.conn.op("watch", exists, session=session):
                        break
            except DiscoveryError as e:
                if session.alive:
                    log.debug("ZooKeeper ticket %s: checking its turn failed (%s); again soon", session.id, e)
                    session.predecessor_gone()


def _track(session: ZkSession, entry: Entry) -> Entry | None:
    """``entry``, just made, as the session's in its queue; None (and the entry deleted) if the session was closed or
    expired while the create was in flight."""
    with session.lock:
        alive = session.alive
        if alive:
            session.entries[entry.parent] = entry
    if not alive:
        session.conn.delete_later(entry.path)
        return None
    return entry


def _exists(client: Any, path: str, watch: Any) -> Any:
    return client.exists_async(path, watch=watch)


def _create_entry(client: Any, path: str, data: bytes) -> Any:
    return _create(client, Create2(path, data, client.default_acl or OPEN_ACL_UNSAFE, _EPHEMERAL_SEQUENTIAL))


def _create_queue(client: Any, path: str) -> Any:
    return _create(client, Create(path, QUEUE_MARK, client.default_acl or OPEN_ACL_UNSAFE, 0))


def _create_queue_with_entry(client: Any, path: str, prefix: str, data: bytes) -> Any:
    acl = client.default_acl or OPEN_ACL_UNSAFE
    queue, entry = Create(path, QUEUE_MARK, acl, 0), Create(prefix, data, acl, _EPHEMERAL_SEQUENTIAL)
    return _create(client, Transaction([queue, entry, SetData(path, QUEUE_MARK, -1)]))


def _create_queue_and_parents(client: Any, path: str) -> Any:
    return client.create_async(path, QUEUE_MARK, makepath=True)


def _create(client: Any, request: Any) -> Any:
    """Send a create request as kazoo's ``create_async`` does, without its retry-and-makepath wrapping (two async
    results, three decorated closures and a second completion hop per create; see the module docstring)."""
    if client.chroot:  # never ours (the prefix is in each path); kazoo's own call would prefix the chroot
        raise DiscoveryError("ZooKeeper client with a chroot: not supported")
    result = client.handler.async_result()
    client._call(request, result)
    return result


def _get(client: Any, path: str) -> Any:
    return client.get_async(path)


def _children(client: Any, path: str) -> Any:
    return client.get_children_async(path)


def _delete(client: Any, path: str) -> Any:
    return client.delete_async(path)
