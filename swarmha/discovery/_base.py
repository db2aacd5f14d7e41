"""The abstract Discovery: TTL sessions, create-if-absent bound to a session, compare-and-delete, watch.

This is the whole contract a backend implements; the election code uses nothing else.

Keys are ``/``-separated relative paths (``"svc/leader"``); a backend puts its URL prefix in front.
Values are text (the election stores the node address there).

Guarantees every backend gives:

* :meth:`Discovery.create` is atomic: among concurrent callers for an absent key exactly one succeeds.
  The created key is bound to the session: it disappears when the session expires or is closed.
* :attr:`Record.token` is the *fencing token* of the write that created the key: an int that strictly
  increases every time the key is created anew (etcd: revision of the write; ZooKeeper: czxid;
  Consul: index of the acquiring write; sqlite/memory: a stored counter).
* :meth:`Discovery.delete` deletes only when the stored token equals the given one (compare-and-delete).
* :meth:`Discovery.release` removes a key only through the session that created it, never a successor's.
* :meth:`Discovery.watch` never misses a change that happened after the ``seen`` state was read.
* A session is never extended by anything but :meth:`Session.keepalive`; a session that expired in the
  store stays expired (``keepalive`` raises :class:`SessionExpired`, it does not resurrect it).

Failure modes: any operation may raise :class:`~swarmha.errors.DiscoveryUnavailable` (store down or slow:
every call has a bounded time) or another :class:`~swarmha.errors.DiscoveryError`. None of them leave a
half-done write behind that the caller could not see with :meth:`Discovery.get`.

Non-blocking forms: :meth:`Discovery.get_async`, :meth:`~Discovery.create_async`, :meth:`~Discovery.delete_async`,
:meth:`~Discovery.release_async` and :meth:`~Discovery.list_async` send the same request and return a
:class:`concurrent.futures.Future` of its answer (or of the error the blocking form raises), so that one thread
can have many requests in flight on the Discovery's connection (the election engine does: see
:mod:`swarmha.election._engine`). Their defaults run the blocking call inline and return a future that is done
already, so a backend that overrides nothing behaves exactly as its blocking calls do; etcd and ZooKeeper
override them with pipelined requests. The future completes within the store's request timeout, as the blocking
call returns; its done-callbacks may run on a thread of the backend's client (they must not block).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar

import attrs

from swarmha._context import ClosesOnExit
from swarmha.discovery._url import DiscoveryURL
from swarmha.errors import ConfigurationError

__all__ = ["Claim", "Discovery", "Record", "Session", "Watch", "check_key", "check_ttl", "done"]

_T = TypeVar("_T")


def done(call: Callable[..., _T], *args: Any) -> Future[_T]:
    """``call(*args)`` run now, as a future that is done already (its result, or the exception it raised)."""
    future: Future[_T] = Future()
    try:
        future.set_result(call(*args))
    except Exception as e:
        future.set_exception(e)
    return future


@attrs.frozen
class Record:
    """One stored key: its value, the fencing token of its creation, and the owning session (if any)."""

    value: str
    token: int
    session: str | None = None


@attrs.frozen
class Claim:
    """What :meth:`Discovery.claim_async` found: the Record it ``created`` (it won), else the ``holder`` it saw
    (None: the key was vacant again when read); ``listed``: the keys under the prefix asked for, read after a win."""

    created: Record | None
    holder: Record | None = None
    listed: Mapping[str, Record] | None = None


class Session(abc.ABC):
    """A TTL lease in the store. Keys created with it live only as long as it does.

    The store expires the session no sooner than ``ttl`` seconds after the last successful
    :meth:`keepalive` was *sent* (a backend whose store adds grace, as Consul does, may expire it later).
    """

    id: str
    ttl: float
    #: None, or (a ticket whose store lease was granted ahead, see :meth:`Discovery.prepare`) the monotonic time
    #: at which the session's ttl clock started: whoever counts a term from the ``create`` that claims with
    #: this session counts it from here instead.
    clock: float | None = None

    @abc.abstractmethod
    def keepalive(self) -> None:
        """Extend the lease by ``ttl`` from now.

        Raises :class:`~swarmha.errors.SessionExpired` if the store no longer has the session, and
        :class:`~swarmha.errors.DiscoveryUnavailable` if the store did not answer in time.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Revoke the session (its keys go with it). Best effort and idempotent: never raises."""


class Watch(ClosesOnExit, abc.ABC):
    """A watch on one key, armed at the state the caller last saw.

    Use it as a context manager or call :meth:`close`. :meth:`close` may be called from any thread and wakes
    a thread blocked in :meth:`wait`.
    """

    #: True right after :meth:`wait` returned True because the watch *saw* the record the caller had seen
    #: deleted: a caller may then go straight to :meth:`Discovery.create` without reading the key back first
    #: (``create`` answers None if a new holder is already there, e.g. the next in a ZooKeeper key's queue).
    #: False means "read it". Backends that cannot tell leave it False.
    known_absent: bool = False

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> bool:
        """Block until the key may differ from the ``seen`` state, the timeout passes, or :meth:`close`.

        Returns True when the key changed (or may have: callers re-read with :meth:`Discovery.get`), False on
        timeout or close. After it returned True, the watch is re-armed at the state it observed.
        Raises :class:`~swarmha.errors.DiscoveryError` if the watch broke and could not be resumed.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Stop watching and release what the watch holds. Idempotent, thread-safe, never raises."""

    def notify(self, callback: Callable[[], None]) -> bool:
        """Ask for ``callback()`` whenever a blocked :meth:`wait` would wake up to look at the key again.

        That is: when the watch fired (or may have), or was closed or interrupted. Returns True if this watch
        does that, False (the default) if it cannot: a caller then has to block in :meth:`wait` to learn of a
        change. The callback runs on any thread, must not block, may be called spuriously, and is registered once
        per watch; after it, ``wait(0)`` tells whether the key changed (and re-arms). This is how one thread
        waits for a thousand keys (the election engine); a backend that also needs to look at the key at a
        given time (a store without a server to expire sessions) says when in :meth:`recheck_at`.
        """
        return False

    def recheck_at(self) -> float | None:
        """With :meth:`notify`: a monotonic time at which the caller should call ``wait(0)`` even if not called
        back (e.g. when a session in the store expires by the clock), or None. Valid after each ``wait``."""
        return None

    def interrupt(self) -> None:
        """Make a pending :meth:`wait` and every later one return False at once; the caller still closes the watch.

        For a caller that must act *now* and may tear the watch down afterwards: a leader stopping (its release
        goes out before a watch thread is joined). Thread-safe, never raises. The default is :meth:`close`;
        backends whose close waits for a thread (etcd, Consul) wake the waiter without waiting.
        """
        self.close()


class Discovery(ClosesOnExit, abc.ABC):
    """A connection to one discovery store under one key prefix. Safe to share between threads."""

    url: DiscoveryURL
    #: How many ``*_async`` requests of this Discovery's elections may be in flight at once (more wait, in
    #: order; why 32: ``swarmha.election._engine.WINDOW``). A backend that folds concurrent requests into few
    #: (etcd's batched claims) can take more.
    request_window: int = 32

    def check_ttl(self, ttl: float) -> None:
        """Raise :class:`~swarmha.errors.ConfigurationError` if this store cannot grant sessions of ``ttl``.

        Called when a Candidate is built, so a TTL the store would refuse fails at once, not on every retry
        in the background. The default accepts any positive TTL; backends with limits (Consul) override it.
        """
        check_ttl(ttl)

    @abc.abstractmethod
    def session(self, ttl: float) -> Session:
        """Create a new session (lease) with the given TTL in seconds."""

    def prepare(self, key: str, value: str, ttl: float, *, listing: str | None = None) -> Session | None:
        """Get ready to :meth:`create` ``key`` once its holder leaves: return a *ticket*, or None.

        A candidate calls this before it campaigns and passes the ticket (a :class:`Session` of ``ttl``) to
        ``create(key, value, ticket)`` instead of a new :meth:`session`; if another candidate won, it keeps the
        ticket while it waits behind the holder. A backend that keeps a queue per key (ZooKeeper) puts the
        ticket in the key's queue, so that the ``create`` after the holder left needs no write (as kazoo's
        ``Lock`` waiters need none), and a lost round leaves the ticket queued.

        Guarantees of a ticket: it holds no key until a ``create`` with it returns a Record, and its ``ttl``
        clock runs from that call, unless the ticket's :attr:`Session.clock` is set: then the clock started
        there, at most ``ttl/6`` before the ``create`` call (a backend that grants a ticket's lease ahead, etcd,
        takes a new one at the claim when the old one is older). A ``create`` that returns None leaves it queued,
        so it can be used again. When the holders before it have left, the backend may report the ticket's
        own entry as the key's holder (:meth:`get` then returns a Record whose ``session`` is the ticket's
        ``id``): the owner is expected to claim it with ``create`` promptly; if it does not within ``ttl``, the
        backend expires the ticket, so a stuck owner never blocks the key for longer. Closing the ticket
        withdraws it. Returns None when the backend has nothing to prepare (the default) or preparing failed:
        never raises, and blocks at most about two request timeouts of the store.

        ``listing``: the prefix a :meth:`claim_async` with this ticket will list after a win. A backend may watch
        it while the ticket waits, so that the listing after the win needs no request when nothing changed there
        (ZooKeeper); the listing's answer is then the prefix as it was when the ticket's turn came.
        """
        return None

    @abc.abstractmethod
    def create(self, key: str, value: str, session: Session) -> Record | None:
        """Create ``key`` bound to ``session`` if it does not exist; return the new Record, or None if it exists.

        With a session from :meth:`session`, None leaves nothing of ``session`` in the store. With a ticket
        from :meth:`prepare`, None leaves the ticket queued for the key (see there).
        """

    @abc.abstractmethod
    def put(self, key: str, value: str, session: Session | None = None) -> Record:
        """Create or overwrite ``key`` (bound to ``session`` if given). Used for registrations, not elections."""

    @abc.abstractmethod
    def get(self, key: str) -> Record | None:
        """The current Record of ``key``, or None if absent."""

    @abc.abstractmethod
    def delete(self, key: str, token: int) -> bool:
        """Delete ``key`` only if its token equals ``token``; True if deleted."""

    def release(self, key: str, token: int, session: Session) -> None:
        """Hand over ``key``, created with ``token`` through ``session``: remove it and close the session.

        What a leader calls on a graceful exit. Never removes a key another session created (a successor's),
        and closes ``session`` in every case. Raises :class:`~swarmha.errors.DiscoveryError` when the store
        was not reached: the key may then still exist, and goes when the session expires (within its ttl).
        The default is :meth:`delete` (compare-and-delete), then :meth:`Session.close`; a backend whose store
        removes a session's keys when the session ends (ZooKeeper, etcd) may end the session alone, one
        round trip instead of two.
        """
        try:
            self.delete(key, token)
        finally:
            session.close()

    @abc.abstractmethod
    def list(self, prefix: str) -> Mapping[str, Record]:
        """Every key below ``prefix/`` (keys returned relative to the URL prefix, like the ones passed in)."""

    @abc.abstractmethod
    def watch(self, key: str, seen: Record | None) -> Watch:
        """A :class:`Watch` on ``key`` that fires once the key differs from ``seen`` (the caller's last read)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection and every watch; idempotent."""

    # -- non-blocking forms (see the module docstring); the defaults run the blocking call inline -----------

    def get_async(self, key: str) -> Future[Record | None]:
        """:meth:`get` as a future."""
        return done(self.get, key)

    def create_async(self, key: str, value: str, session: Session) -> Future[Record | None]:
        """:meth:`create` as a future."""
        return done(self.create, key, value, session)

    def delete_async(self, key: str, token: int) -> Future[bool]:
        """:meth:`delete` as a future."""
        return done(self.delete, key, token)

    def release_async(self, key: str, token: int, session: Session) -> Future[None]:
        """:meth:`release` as a future (``session`` is closed when the future is done, in every case)."""
        return done(self.release, key, token, session)

    def list_async(self, prefix: str) -> Future[Mapping[str, Record]]:
        """:meth:`list` as a future."""
        return done(self.list, prefix)

    def claim_async(
        self, key: str, value: str, session: Session, listing: str | None = None, *, vacant: bool = False
    ) -> Future[Claim]:
        """A candidate's claim in as few round trips as the store allows: :meth:`create`; if it won and
        ``listing`` is given, :meth:`list` of ``listing`` (read after the create); if it lost, :meth:`get` of the
        holder. ``vacant``: the caller just saw the key deleted (a backend that reads before it creates may skip
        the read). The guarantees are those of the calls it stands for. The default makes those calls in turn;
        etcd makes all of it one transaction."""
        return done(self._claim, key, value, session, listing)

    def _claim(self, key: str, value: str, session: Session, listing: str | None) -> Claim:
        created = self.create(key, value, session)
        if created is None:
            return Claim(None, self.get(key))
        return Claim(created, None, None if listing is None else self.list(listing))


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid relative key (``a/b``), else raise :class:`ConfigurationError`."""
    if not isinstance(key, str) or not key or key.startswith("/") or key.endswith("/") or "//" in key:
        raise ConfigurationError(f"invalid key {key!r}: expected a relative path like 'svc/leader'")
    return key


def check_ttl(ttl: float, what: str = "ttl") -> float:
    """Return ``ttl`` as a float if it is a finite number > 0, else raise :class:`ConfigurationError`."""
    try:
        value = float(ttl)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{what} must be a number of seconds, not {ttl!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{what} must be a positive number of seconds, not {ttl!r}")
    return value
