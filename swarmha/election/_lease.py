"""A :class:`Lease`: the TTL session every campaign holds its key through (etcd's ``concurrency.Session``).

    d = swarmha.connect("etcd://10.0.0.5:2379/jobs")
    lease = swarmha.Lease(d, ttl=10.0)
    candidates = [swarmha.Candidate(d, f"shard/{i}", node="10.0.0.1", lease=lease).start() for i in range(1000)]

Every campaign runs on a lease, as etcd's ``Election`` always runs on a ``Session``: the one the user shares
between candidates, or a *private* one the candidate makes for itself when given none. The lease alone renews
its session and alone says until when a term held through it is valid (:meth:`Lease.valid_until`); a campaign
only watches its key and that deadline.

Guarantees:

* One store session for every candidate that shares the lease: one keepalive per ``ttl/3``, sent by the lease's
  keeper (a task on the Discovery's election engine, no thread of its own) while the session is open, so
  candidates that only wait keep it too; one lease in etcd, one logical session on ZooKeeper, one session in
  Consul or sqlite, however many keys. A term is valid until the lease's last successful renewal (its *sent*
  time) plus the candidate's ``renew_deadline``, checked on every read.
* A private lease behaves as a candidate's own session always has: it is opened for a claim (or is the ticket
  ``Discovery.prepare`` queued for the key: ZooKeeper's queue entry, etcd's lease granted ahead), renewed only
  while its term lasts, and ends with the term (``Discovery.release`` removes the key and ends the session in one
  step where the store allows). A renewal that answers only after the term's ``renew_deadline`` does not revive
  the term: the session counts as lost for it.
* The price of sharing on ZooKeeper and etcd: candidates of a shared lease take no ticket, so a handover costs
  the winner a create and a read instead of none.
* Each key still has its own term and its own fencing token, strictly increasing per key; a graceful
  stop/resign removes only its own key (compare-and-delete), never a shared lease.
* When a shared session is lost (the store expired it: the process was cut off or frozen longer than ``ttl``),
  **every term it carried ends at once**: the store removes all its keys together and the lease wakes every
  leader on it; the candidates campaign again with a new session the lease opens on first use. A private lease
  (no ``lease``) is what to use where keys must fail independently.
* :meth:`Lease.close` ends the session: every key still held through it goes (stop the candidates first for an
  orderly hand-over: each deletes its own key). Idempotent.

Failure modes: opening the session may raise :class:`~swarmha.errors.DiscoveryError` (the candidate retries);
:meth:`renew` raises :class:`~swarmha.errors.SessionExpired` once the session is gone and
:class:`~swarmha.errors.DiscoveryUnavailable` when the store did not answer. :meth:`loss` says why a session no
longer carries a term, in words a log can show.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Generator

import attrs

from swarmha._context import ClosesOnExit
from swarmha.discovery import Discovery, Record, Session, Watch
from swarmha.discovery._base import check_ttl
from swarmha.election._engine import Engine, Park, Task
from swarmha.election._retry import backoff
from swarmha.election._values import Term
from swarmha.errors import ConfigurationError, DiscoveryError, SessionExpired

__all__ = ["Held", "Lease", "Loss", "check_renew_deadline"]


@attrs.define
class Held:
    """A term being led through a session of a lease: what it won, through which session, and the watch on its
    key."""

    term: Term
    session: Session
    record: Record
    watch: Watch | None = None
    unwake: Callable[[], None] | None = None  # removes the lease's wake-up of this term


def check_renew_deadline(ttl: float, renew_deadline: float | None) -> float:
    """``renew_deadline`` (default ``2/3·ttl``) if it lies strictly between the renew period ``ttl/3`` and ``ttl``,
    else :class:`~swarmha.errors.ConfigurationError` naming the bound it breaks."""
    deadline = 2.0 * ttl / 3.0 if renew_deadline is None else check_ttl(renew_deadline, "renew_deadline")
    if deadline >= ttl:
        raise ConfigurationError(f"renew_deadline ({deadline}) must be shorter than ttl ({ttl})")
    if deadline <= ttl / 3.0:
        raise ConfigurationError(
            f"renew_deadline ({deadline}) must be longer than the renew period ttl/3 ({ttl / 3.0:.3f})"
        )
    return deadline


@attrs.frozen
class Loss:
    """Why a session no longer carries a term: ``reason`` for the log; ``stale``: the store may still hold the
    key (it could not be reached), so the key is to be deleted by token once it answers."""

    reason: str
    stale: bool


def _clock(at: float) -> str:
    """A monotonic time as the wall-clock time it was (for a log line)."""
    return time.strftime("%H:%M:%S", time.localtime(time.time() - (time.monotonic() - at)))


class Lease(ClosesOnExit):
    """See the module docstring. Thread-safe; a context manager (closes on exit)."""

    def __init__(self, discovery: Discovery, ttl: float = 10.0) -> None:
        self.discovery = discovery
        self.ttl = check_ttl(ttl)
        discovery.check_ttl(self.ttl)
        #: A private lease: one candidate's, whose session lives for one term (see the module docstring).
        self.private = False
        self._late: float | None = None  # private: a renewal answering this long after the last is too late
        self._lock = threading.Lock()
        self._session: Session | None = None
        self._ticket = False  # private: the session is a ticket from Discovery.prepare, not claimed yet
        self._ok_sent = 0.0  # when the last successful renewal of the current session was sent (or it was opened)
        self._failing_since: float | None = None  # first failed renewal since the last that succeeded
        self._lost: tuple[Session, Loss] | None = None  # the last session lost, and why
        self._closed = False
        self._keeper: Task | None = None
        self._wakers: dict[Callable[[], None], float] = {}  # wake-up -> the renew_deadline of its term
        # how many wakers have each renew_deadline (usually one value): the earliest without a pass over 10,000
        self._deadlines: collections.Counter[float] = collections.Counter()
        self._alarm_at = 0.0  # when the alarm (see _arm_alarm) is set for

    @classmethod
    def private_for(cls, discovery: Discovery, ttl: float, renew_deadline: float) -> Lease:
        """The private lease of one candidate (see the module docstring)."""
        lease = cls(discovery, ttl)
        lease.private = True
        lease._late = renew_deadline
        return lease

    @property
    def id(self) -> str | None:
        """The store's id of the current session, or None when none is open."""
        session = self._session
        return None if session is None else session.id

    @property
    def queued(self) -> bool:
        """A private lease whose session is a ticket waiting in the key's queue."""
        return self._ticket

    # -- the session ---------------------------------------------------------------------------------------

    def session(self) -> Session:
        """The current session, opened now if there is none (the first use, or the last one was lost)."""
        with self._lock:
            if self._closed:
                raise ConfigurationError("the lease is closed")
            if self._session is None:
                sent = time.monotonic()
                self._session = self.discovery.session(self.ttl)
                self._ok_sent = sent
                self._failing_since = None
                if not self.private:  # a private lease is kept from its claim on (see claimed)
                    self._keep(self._session)
            return self._session

    def prepare(self, key: str, value: str, listing: str | None = None) -> None:
        """A private lease with no session takes a ticket for ``key`` (``Discovery.prepare``, told the ``listing``
        its claim lists after a win); else nothing."""
        if not self.private or self._session is not None:
            return
        ticket = self.discovery.prepare(key, value, self.ttl, listing=listing)
        if ticket is not None:
            with self._lock:
                self._session, self._ticket = ticket, True

    def holds(self, record: Record | None) -> bool:
        """True when ``record`` is this lease's ticket's own queue entry: the holders before it left."""
        session = self._session
        return record is not None and self._ticket and session is not None and record.session == session.id

    def claimed(self, session: Session, sent: float) -> None:
        """A create with ``session`` won a key; the claim was sent at ``sent`` (a private lease's clock starts
        there: its session was opened, or its ticket's clock restarted, for this claim). Call :meth:`keep` next."""
        if not self.private:
            return
        with self._lock:
            if session is self._session:
                self._ticket = False
                self._ok_sent = sent

    def keep(self, session: Session) -> None:
        """A private lease starts renewing ``session`` (its term began); a shared one renews from its opening."""
        if not self.private:
            return
        with self._lock:
            if session is self._session and not self._closed:
                self._keep(session)

    def unclaimed(self, session: Session) -> None:
        """A create with ``session`` did not win: a private lease keeps a ticket (still queued), closes the rest."""
        if self.private and not self._ticket:
            self.drop(session)

    def drop(self, session: Session, *, gone: bool = False) -> None:
        """Done with ``session`` (``gone``: the store no longer has it). A private lease closes it; a shared one
        closes it only when it is gone (the next :meth:`session` opens a new one)."""
        with self._lock:
            if not (self.private or gone or session is not self._session):
                return
            keeper = self._forget(session)
        if keeper is not None:
            keeper.interrupt()
        session.close()

    def release(self, key: str, token: int, session: Session, *, keep: bool = False) -> None:
        """Hand over ``key`` (created with ``token`` through ``session``): a private lease removes it and ends
        the session (``Discovery.release``: one round trip where the store allows); a shared one deletes only
        the key (compare-and-delete), the session carries others. ``keep``: a private lease keeps the session
        too (and renews it), for keys still bound to it (a transfer's marker); :meth:`drop` ends it later.
        Raises DiscoveryError as those do."""
        if not self.private or keep:
            self.discovery.delete(key, token)
            return
        with self._lock:
            self._forget(session)  # the keeper ends at its next renewal time: no wake-up on the handover's path
        self.discovery.release(key, token, session)

    # -- validity ------------------------------------------------------------------------------------------

    def valid_until(self, session: Session, renew_deadline: float) -> float:
        """Monotonic time until which a term held through ``session`` is valid: the lease's last successful
        renewal plus ``renew_deadline``; 0 when ``session`` is not the lease's current one. Lock-free."""
        if session is not self._session:
            return 0.0
        return self._ok_sent + renew_deadline

    def loss(self, session: Session, renew_deadline: float) -> Loss:
        """Why a term held through ``session`` with ``renew_deadline`` is no longer valid."""
        with self._lock:
            if self._lost is not None and self._lost[0] is session:
                return self._lost[1]
            if session is not self._session:
                return Loss("the session expired in the store", stale=False)
            failing = self._failing_since
        why = f"no renewal succeeded within renew_deadline={renew_deadline:.3f}s"
        if failing is not None:
            why += f" (the store unreachable since {_clock(failing)})"
        return Loss(why, stale=True)

    def wake_on_loss(self, callback: Callable[[], None], renew_deadline: float) -> Callable[[], None]:
        """Call ``callback()`` (any thread, must not block) when the current session is lost, or when no renewal
        succeeded within ``renew_deadline`` (the term's deadline passed); returns the remover.

        So a leader waits on its key's watch alone, and is woken at its deadline only when the lease did not
        renew in time: one timer per lease and renewal, where a timer per leader woke 10,000 leaders of one
        process every renewal period (5,000 wake-ups a second that did nothing)."""
        with self._lock:
            old = self._wakers.get(callback)
            if old is not None:
                self._drop_deadline(old)
            self._wakers[callback] = renew_deadline
            self._deadlines[renew_deadline] += 1
            self._arm_alarm()

        def remove() -> None:
            with self._lock:
                deadline = self._wakers.pop(callback, None)
                if deadline is not None:
                    self._drop_deadline(deadline)

        return remove

    def _drop_deadline(self, deadline: float) -> None:
        self._deadlines[deadline] -= 1
        if self._deadlines[deadline] <= 0:
            del self._deadlines[deadline]

    def _arm_alarm(self) -> None:
        """Set the alarm for the earliest deadline of the terms on the lease, if not set for it already (caller
        holds the lock). It runs on the engine's timer thread: a renewal stuck in a hung store does not hold
        it up."""
        if not self._wakers or self._session is None:
            return
        at = self._ok_sent + min(self._deadlines)
        if at == self._alarm_at:
            return
        self._alarm_at = at
        Engine.of(self.discovery).call_at(at, self._alarm)

    def _alarm(self) -> None:
        with self._lock:
            if not self._wakers or self._session is None:
                return
            at = self._ok_sent + min(self._deadlines)
            if time.monotonic() < at:  # renewed since: the alarm is set for the new deadline (once)
                self._arm_alarm()
                return
            wakers = list(self._wakers)
        for callback in wakers:
            callback()

    def _forget(self, session: Session) -> Task | None:
        """``session`` is no longer the current one (caller holds the lock); returns the keeper to interrupt."""
        if session is not self._session:
            return None
        self._session, self._ticket = None, False
        return self._keeper

    def _lose(self, session: Session, loss: Loss) -> None:
        """``session`` carries no term any more (caller holds the lock; the keeper ends by itself: it is the one
        renewing); the wakers are told after."""
        self._forget(session)
        self._lost = (session, loss)

    def _wake(self) -> None:
        with self._lock:
            wakers = list(self._wakers)
        for callback in wakers:
            callback()

    # -- renewal -------------------------------------------------------------------------------------------

    def renew(self, session: Session) -> float:
        """Renew ``session`` (the lease's current one) and return when the renewal that succeeded was *sent*.

        Raises SessionExpired if ``session`` is no longer the lease's session (it was lost or closed), or a
        private lease's renewal answered after its term's deadline."""
        with self._lock:
            if session is not self._session:
                raise SessionExpired(f"the lease's session {session.id} ended")
        sent = time.monotonic()
        try:
            session.keepalive()
        except SessionExpired as e:
            with self._lock:
                self._lose(session, Loss(f"the session expired in the store ({e})", stale=False))
            self._wake()
            session.close()
            raise
        except DiscoveryError:
            with self._lock:
                if self._failing_since is None:
                    self._failing_since = sent
            raise
        with self._lock:
            if session is not self._session:
                raise SessionExpired(f"the lease's session {session.id} ended")
            late = self._late is not None and time.monotonic() >= self._ok_sent + self._late
            if late:
                self._lose(session, Loss("the renewal succeeded only after the renew deadline", stale=True))
            else:
                self._ok_sent = max(self._ok_sent, sent)
                self._failing_since = None
                self._arm_alarm()
        if late:
            self._wake()
            raise SessionExpired(f"the renewal of {session.id} came after the renew deadline")
        return sent

    def _keep(self, session: Session) -> None:
        """Start the keeper of ``session`` on the engine (caller holds the lock)."""
        self._keeper = Engine.of(self.discovery).task(
            f"swarmha-lease[{session.id}]",
            self._keeping(session),
            lambda: self._closed or self._session is not session,
        )
        self._keeper.start(urgent=True)

    def _keeping(self, session: Session) -> Generator[Park, bool, None]:
        """Renew ``session`` every ttl/3 (a failed renewal again after a short backoff) until it is lost, dropped
        or the lease closed. On the engine: it never needs a thread, and a renewal is a deadline (run first)."""
        attempt = 0
        retry_at = 0.0
        while True:
            with self._lock:
                if self._closed or session is not self._session:
                    return
                due = self._ok_sent + self.ttl / 3.0 if attempt == 0 else retry_at
            if time.monotonic() < due:
                yield Park(None, due)
                continue
            try:
                self.renew(session)
                attempt = 0
            except SessionExpired:
                return
            except DiscoveryError:
                attempt += 1
                retry_at = time.monotonic() + backoff(attempt, self.ttl / 6.0)

    def close(self) -> None:
        """End the session (every key still held through it goes). Idempotent, never raises."""
        with self._lock:
            self._closed = True
            session, self._session, self._ticket = self._session, None, False
            keeper = self._keeper
        if keeper is not None:
            keeper.interrupt()
        if session is not None:
            session.close()

    def __repr__(self) -> str:
        return f"Lease(ttl={self.ttl:g}, session={self.id!r}{', private' if self.private else ''})"
