"""Election keys as queues of entries, and tickets waiting in them (the layout: :mod:`._entry`).

:class:`Queues` makes and reads them for a Discovery: enqueue an entry for a Session, withdraw it by its unique
name (never another entry), list a queue holder first, find the holder, and check a waiting ticket's turn.
"""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any

from kazoo.exceptions import NodeExistsError, NoNodeError

from swarmha.discovery._base import Record
from swarmha.discovery.zookeeper._async import Operation, Request, block
from swarmha.discovery.zookeeper._connection import Connection
from swarmha.discovery.zookeeper._core import CACHE_LIMIT, Core, log
from swarmha.discovery.zookeeper._entry import QUEUE_MARK, RACE_LIMIT, Entry, queue_order, record
from swarmha.errors import DiscoveryError, DiscoveryUnavailable

if TYPE_CHECKING:
    from swarmha.discovery.zookeeper._session import ZkSession

__all__ = ["Queues"]


class Queues:
    """Queue operations of one Discovery (see the module docstring). Thread-safe."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._known: set[str] = set()  # znodes known to be queues (a queue znode is never removed by us)

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
            return None
        return queue_order(children)

    def holder(self, path: str) -> Record | None:
        """The Record of the queue's holder (its first entry), or None when the queue is empty or absent."""
        return block(self.holder_steps(path))

    def holder_steps(self, path: str) -> Operation[Record | None]:
        """:meth:`holder` as an operation (:mod:`._async`)."""
        for _ in range(RACE_LIMIT):
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
                    yield Request(conn, "create", functools.partial(_create_queue, path=path), session)
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
            entry = Entry(path, created, record(data, stat, created), int(stat.mzxid))
            with session.lock:
                alive = session.alive
                if alive:
                    session.entries[path] = entry
            if not alive:  # closed or expired while the create was in flight: take the entry back
                conn.delete_later(created)
                return None
            return entry
        raise DiscoveryUnavailable(f"ZooKeeper queue {path} vanished under {RACE_LIMIT} creates in a row")

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
        """For a ticket's unclaimed entries: start its clock if one holds the key, else watch its predecessor.

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
                    callback = self._core.hub.subscribe(session.conn, before, session.predecessor_gone)
                    exists = functools.partial(_exists, path=before, watch=callback)
                    if session.conn.op("watch", exists, session=session):
                        break
            except DiscoveryError as e:
                if session.alive:
                    log.debug("ZooKeeper ticket %s: checking its turn failed (%s); again soon", session.id, e)
                    session.predecessor_gone()


def _exists(client: Any, path: str, watch: Any) -> Any:
    return client.exists_async(path, watch=watch)


def _create_entry(client: Any, path: str, data: bytes) -> Any:
    return client.create_async(path, data, ephemeral=True, sequence=True, include_data=True)


def _create_queue(client: Any, path: str) -> Any:
    return client.create_async(path, QUEUE_MARK, makepath=True)


def _get(client: Any, path: str) -> Any:
    return client.get_async(path)


def _children(client: Any, path: str) -> Any:
    return client.get_children_async(path)


def _delete(client: Any, path: str) -> Any:
    return client.delete_async(path)
