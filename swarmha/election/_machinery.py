"""The election state machines, shared by the sync and asyncio faces.

A :class:`Campaign` is a :class:`Phase` machine run by the engine of its Discovery
(:mod:`swarmha.election._engine`: one timer thread and a few workers however many candidates)::

    LATENT ─start()─> WAITING ⇄ QUEUED ──key vacant, create() won──> LEADING ──stop()──> STOPPING ──> STOPPED
                         ^                                              │
                         └──── resign() / key lost / session expired / renew deadline passed

WAITING holds no ticket, QUEUED holds one (see below). Every change of phase goes through
:meth:`Campaign._enter`, the one place that emits ELECTED (entering LEADING) and LOST (leaving it).

* LEADING renews the session every ``ttl/3`` and watches the key. It ends the term (self-demotion) when no
  renewal succeeded within ``renew_deadline`` of being *sent*, when the session expired, or when the key
  changed under it. Once the deadline has passed the term is over: a late renewal does not revive it.
* WAITING sends no periodic request: it watches the key and campaigns when it vanishes. A campaign first asks
  the backend for a ticket (``Discovery.prepare``): most backends have none (the campaign then opens a session,
  and WAITING holds none); ZooKeeper opens a session and queues it for the key, and a ticket that did not win
  stays queued while the candidate waits, so the campaign after the holder left costs no request at all; etcd
  grants the ticket's lease ahead, so the claim is one write (the ticket's cost is the backend's, documented
  there). A ticket is kept across waits until a campaign wins with it, and closed when the candidate stops.
  A term won with a ticket whose ttl clock started before the claim (``Session.clock``) counts from that clock.
* Store errors never end the campaign: every step is retried with jittered exponential backoff (tenacity).
* ``stop()`` and ``resign()`` end the term, then remove the key through the leader's own session
  (``Discovery.release``: compare-and-delete and close; on ZooKeeper a delete of its own entry by name; on etcd
  a revoke of its lease), never a successor's key, so a waiting candidate wins within one watch round trip
  instead of after the TTL. A ``stop()`` while the worker waits between renewals releases on the caller's
  thread (see :meth:`Campaign.stop`).

A :class:`Follow` watches the key and publishes ``Leader | None`` on change (on the same engine).

Subscribers get events on an engine thread; :class:`Transitions` turns them into the ``True``/``False``
stream the public iterators yield, and also ends a term at its deadline on the consumer's side, so a
worker blocked in a slow store call cannot make a consumer believe it still leads.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable, Generator

import attrs
from tenacity import RetryCallState, wait_exponential_jitter

from swarmha.discovery import Discovery, Record, Session, Watch
from swarmha.discovery._base import check_key, check_ttl
from swarmha.election._engine import Engine, Park, Task
from swarmha.election._lease import Lease
from swarmha.election._values import Leader, Term
from swarmha.errors import ConfigurationError, DiscoveryError, SessionExpired

__all__ = ["Campaign", "Event", "Follow", "Kind", "Observation", "Phase", "Transitions", "observers"]

log = logging.getLogger("swarmha.election")

#: Longest pause between retries of a failing store; keeps recovery after an outage well under a second.
MAX_BACKOFF = 1.0


class Phase(enum.Enum):
    """Where a campaign is (Curator's ``LeaderLatch`` states, with the waiting split by whether a ticket is held)."""

    LATENT = "latent"  # built, not started
    WAITING = "waiting"  # campaigning or waiting for the key, with no ticket
    QUEUED = "queued"  # waiting with a ticket in the key's queue (Discovery.prepare)
    LEADING = "leading"
    STOPPING = "stopping"  # stop() was called; releasing
    STOPPED = "stopped"


Steps = Generator[Park, bool, None]


class Kind(enum.Enum):
    ELECTED = "elected"
    LOST = "lost"
    LEADER = "leader"  # follower: the leader seen in the store (payload Leader | None)
    END = "end"


@attrs.frozen
class Event:
    kind: Kind
    term: Term | None = None
    leader: Leader | None = None


Subscriber = Callable[[Event], None]


@attrs.frozen
class Observation:
    """What an observer (:func:`swarmha.observe.add_observer`) is told: one event of one Candidate or Follower."""

    source: str  # "candidate" or "follower"
    key: str
    node: str | None  # the candidate's node; None for a follower
    kind: str  # "elected", "lost", "leader" (follower), "end", "store_error"
    term: Term | None = None
    leader: Leader | None = None
    error: BaseException | None = None


#: Process-wide observers of every Campaign and Follow, called on an engine thread; see :mod:`swarmha.observe`.
observers: list[Callable[[Observation], None]] = []


def _observe(
    worker: _Worker,
    kind: str,
    term: Term | None = None,
    leader: Leader | None = None,
    error: BaseException | None = None,
) -> None:
    source = worker.name.removeprefix("swarmha-")
    seen = Observation(source, worker.key, getattr(worker, "node", None), kind, term, leader, error)
    for observer in list(observers):
        try:
            observer(seen)
        except Exception:
            log.exception("election observer %r failed", observer)


@attrs.define
class _Lead:
    term: Term
    session: Session
    record: Record
    watch: Watch | None = None


class _Worker:
    """A state machine on its Discovery's engine that repeats one step, retrying store errors with backoff."""

    name = "swarmha-worker"

    def __init__(self, discovery: Discovery, key: str, backoff_cap: float) -> None:
        self._d = discovery
        self.key = check_key(key)
        self._lock = threading.RLock()
        self._stopping = False
        self._watch: Watch | None = None
        self._task: Task | None = None
        self._subscribers: list[Subscriber] = []
        self._backoff = wait_exponential_jitter(multiplier=0.02, max=backoff_cap, jitter=0.05)
        self._ended = False

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start running on the Discovery's engine (once; later calls do nothing)."""
        with self._lock:
            if self._task is not None or self._stopping:
                return
            self._task = Engine.of(self._d).task(f"{self.name}[{self.key}]", self._main(), self._interrupted_now)
            self._started()
        self._task.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the machine to finish, wake it, and wait for it (idempotent, callable from any thread)."""
        with self._lock:
            self._stopping = True
            task = self._task
            if task is None and not self._ended:
                self._ended = True
                self._finished()
                self._emit(Event(Kind.END))
        self._interrupt()
        if task is not None and task.thread is not threading.current_thread():
            task.done.wait(timeout)

    @property
    def running(self) -> bool:
        with self._lock:
            return self._task is not None and not self._task.done.is_set()

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Deliver every later event to ``callback`` (on an engine thread); returns the unsubscriber."""
        with self._lock:
            self._subscribers.append(callback)
            for event in self._current_events():
                callback(event)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    # -- for subclasses ----------------------------------------------------------------------------

    def _current_events(self) -> list[Event]:
        """Events that describe the present state to a new subscriber. Caller holds the lock."""
        return [Event(Kind.END)] if self._ended else []

    def _started(self) -> None:
        """Runs once when started, under the lock."""

    def _finished(self) -> None:
        """Runs once when ended, under the lock, right before END."""

    def _step(self) -> Steps:
        raise NotImplementedError
        yield Park()  # pragma: no cover

    def _finish(self) -> None:
        """Runs once on an engine worker after the last step."""

    def _on_error(self, error: BaseException) -> None:
        """Runs after a failed step, before the backoff sleep."""

    def _emit(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback(event)
        if observers:
            _observe(self, event.kind.value, term=event.term, leader=event.leader)

    def _interrupt(self) -> None:
        with self._lock:
            task = self._task
        if task is not None:
            task.interrupt()

    def _interrupted(self) -> bool:
        """True when stop (or a subclass's request) wants the current wait to end. Caller holds the lock."""
        return self._stopping

    def _interrupted_now(self) -> bool:
        with self._lock:
            return self._interrupted()

    def _wait_on(self, watch: Watch, timeout: float | None) -> Generator[Park, bool, bool]:
        """``watch.wait(timeout)`` on the engine, but False at once if interrupted (also before it starts)."""
        with self._lock:
            if self._interrupted():
                return False
            self._watch = watch
        try:
            until = None if timeout is None else time.monotonic() + timeout
            return (yield Park(watch, until))
        finally:
            with self._lock:
                self._watch = None

    def _main(self) -> Steps:
        try:
            while not self._stopping:
                attempt = 0
                while True:
                    try:
                        if not self._stopping:
                            yield from self._step()
                        break
                    except Exception as error:
                        attempt += 1
                        self._failed(error, attempt)
                        state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
                        state.attempt_number = attempt
                        yield Park(None, time.monotonic() + self._backoff(state))
        finally:
            try:
                self._finish()
            finally:
                with self._lock:
                    self._ended = True
                    self._finished()
                self._emit(Event(Kind.END))

    def _failed(self, error: BaseException, attempt: int) -> None:
        if isinstance(error, DiscoveryError):
            log.warning("%s: store error (attempt %d): %s", self.key, attempt, error)
        else:
            log.error("%s: unexpected error (attempt %d)", self.key, attempt, exc_info=error)
        if observers:
            _observe(self, "store_error", error=error)
        self._on_error(error)


class Campaign(_Worker):
    """The candidate state machine (see the module docstring)."""

    name = "swarmha-candidate"

    def __init__(
        self,
        discovery: Discovery,
        key: str,
        node: str,
        ttl: float,
        renew_deadline: float | None = None,
        resign_holdoff: float | None = None,
        lease: Lease | None = None,
    ) -> None:
        if lease is not None:
            if lease.discovery is not discovery:
                raise ConfigurationError("the lease belongs to another Discovery than the candidate's")
            ttl = lease.ttl
        ttl = check_ttl(ttl)
        deadline = 2.0 * ttl / 3.0 if renew_deadline is None else check_ttl(renew_deadline, "renew_deadline")
        if deadline >= ttl:
            raise ConfigurationError(f"renew_deadline ({deadline}) must be shorter than ttl ({ttl})")
        if deadline <= ttl / 3.0:
            raise ConfigurationError(
                f"renew_deadline ({deadline}) must be longer than the renew period ttl/3 ({ttl / 3.0:.3f})"
            )
        if not isinstance(node, str) or not node:
            raise ConfigurationError(f"node must be a non-empty string, not {node!r}")
        discovery.check_ttl(ttl)
        super().__init__(discovery, key, backoff_cap=min(MAX_BACKOFF, ttl / 6.0))
        self.node = node
        self.ttl = ttl
        self.renew_deadline = deadline
        self.resign_holdoff = min(1.0, ttl / 3.0) if resign_holdoff is None else float(resign_holdoff)
        self.lease = lease
        self._phase = Phase.LATENT
        self._lead: _Lead | None = None
        # (term, deadline, lease session or None) while leading: what ``term`` reads. With a lease the deadline
        # is the lease's (its last successful renewal + renew_deadline), read live.
        self._valid: tuple[Term, float, Session | None] | None = None
        self._renew_sent = 0.0
        self._deadline = 0.0
        self._resign = False
        self._holdoff_until = 0.0
        self._stale: tuple[Session, int] | None = None
        self._vacant = False  # the last watch saw the key deleted: campaign without reading it back
        self._spent: Watch | None = None  # that watch, closed after the campaign attempt (off the handover path)
        self._ticket: Session | None = None  # from Discovery.prepare: the session the next create() uses
        self._handed_over = threading.Event()  # clear while a stop() releases the key on its caller's thread
        self._handed_over.set()

    # -- what callers read ---------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        """Where the campaign is now (LEADING may already be over by the clock: :attr:`term` tells)."""
        return self._phase

    @property
    def term(self) -> Term | None:
        """The current term while the lease is valid by the local monotonic clock, else None.

        Lock-free (the HA manager asks on every request): it reads :attr:`_valid`, an immutable (term,
        deadline) pair that the machine replaces under the lock whenever either changes.
        """
        valid = self._valid
        if valid is None:
            return None
        deadline = (
            valid[1]
            if valid[2] is None or self.lease is None
            else self.lease.valid_until(valid[2], self.renew_deadline)
        )
        return valid[0] if time.monotonic() < deadline else None

    @property
    def deadline(self) -> float:
        """Monotonic time at which the current term ends unless a renewal succeeds first."""
        with self._lock:
            valid = self._valid
            if valid is not None and valid[2] is not None and self.lease is not None:
                return self.lease.valid_until(valid[2], self.renew_deadline)
            return self._deadline

    def stop(self, timeout: float | None = None) -> None:
        """Stop campaigning; if leading, end the term and release the key; wait for the machine to end.

        When the machine is parked in its leader's wait (the usual case), the release runs right here on the
        caller's thread instead of after waking it: a thread hop less between ``stop()`` and the successor's
        win. The term ends (``term`` None, LOST delivered) before the key goes, as always. The release is
        bounded by the store's request timeout, not by ``timeout`` (which bounds the wait for the end). Every
        ``stop()`` returns after the key went, also one that raced another thread's ``stop()`` (a signal handler's).
        """
        with self._lock:
            lead = self._lead
            watch = self._watch  # the machine's current wait, if any
            if lead is None or watch is None or watch is not lead.watch or self._stopping:
                lead = None
            else:
                self._stopping = True
                self._handed_over.clear()
                # under the lock, so no END from a machine that wakes now can come before this LOST
                self._end_term(Phase.STOPPING, close_watch=False)
        if lead is not None and watch is not None:
            try:
                watch.interrupt()
                self._hand_over(lead, "stopped")
            finally:
                self._handed_over.set()
        super().stop(timeout)
        # A stop() that found another thread's stop() releasing the key returns only once the key went (or the
        # store gave up): its caller may exit the process next, and that must not cut the release short.
        self._handed_over.wait(timeout)

    def resign(self) -> None:
        """Give up the current term (if any) and let a waiting candidate win before campaigning again."""
        with self._lock:
            if self._lead is None:
                return
            self._resign = True
        self._interrupt()

    # -- the one transition point ------------------------------------------------------------------------

    def _enter(self, phase: Phase, event: Event | None = None) -> None:
        """Move to ``phase``; emit ``event`` (ELECTED entering LEADING, LOST leaving it). Every phase change
        goes through here."""
        with self._lock:
            if self._phase is Phase.STOPPED:
                return
            self._phase = phase
            if event is not None:
                self._emit(event)

    def _waiting(self) -> Phase:
        if self._stopping:
            return Phase.STOPPING
        return Phase.QUEUED if self._ticket is not None else Phase.WAITING

    def _begin_term(self, record: Record, session: Session, sent: float) -> Term | None:
        """Enter LEADING with the term ``record`` won, counted from ``sent``; None if already past its deadline."""
        term = Term(self.key, self.node, record.token)
        with self._lock:
            self._lead = _Lead(term, session, record)
            self._renew_sent = sent
            self._deadline = sent + self.renew_deadline
            if self.lease is not None:  # the lease renews itself: its renewals are what keep the key
                self._deadline = self.lease.valid_until(session, self.renew_deadline)
            self._valid = (term, self._deadline, session if self.lease is not None else None)
            if time.monotonic() >= self._deadline:
                return None
            self._enter(Phase.LEADING, Event(Kind.ELECTED, term))
        return term

    def _end_term(self, phase: Phase, *, close_watch: bool = True) -> _Lead | None:
        """Leave LEADING for ``phase``: the term ends (``term`` None) and LOST is emitted, under the lock."""
        with self._lock:
            lead, self._lead = self._lead, None
            self._deadline = 0.0
            self._valid = None
            if lead is not None:
                self._enter(phase, Event(Kind.LOST, lead.term))
        if close_watch and lead is not None and lead.watch is not None:
            lead.watch.close()
        return lead

    def _started(self) -> None:
        self._enter(Phase.WAITING)

    def _finished(self) -> None:
        self._enter(Phase.STOPPED)

    # -- the steps -------------------------------------------------------------------------------------

    def _current_events(self) -> list[Event]:
        term = self.term
        events = [Event(Kind.ELECTED, term)] if term is not None else []
        return events + super()._current_events()

    def _interrupted(self) -> bool:
        return self._stopping or self._resign

    def _step(self) -> Steps:
        if self._lead is not None:
            if self._resign:
                self._release("resigned")
                self._holdoff_until = time.monotonic() + self.resign_holdoff
            else:
                yield from self._lead_step(self._lead)
        else:
            self._resign = False
            yield from self._campaign_step()

    def _campaign_step(self) -> Steps:
        spent, self._spent = self._spent, None
        try:
            yield from self._campaign_attempt()
        finally:
            if spent is not None:
                spent.close()

    def _campaign_attempt(self) -> Steps:
        if self._stale is not None:
            session, token = self._stale
            self._d.delete(self.key, token)
            self._drop_session(session)
            self._stale = None
        record = None if self._vacant else self._d.get(self.key)
        self._vacant = False
        ticket = self._ticket
        ours = self._ticket_holds(record)
        now = time.monotonic()
        if ours or (record is None and (now >= self._holdoff_until or ticket is not None)):
            # ``ours``: the ticket's queue entry became the holder (the holders before it left): claim it. A
            # ticket was queued behind another holder, so a resign's holdoff has done its job already.
            sent = time.monotonic()
            if ticket is None and self.lease is None:
                # A backend with key queues (ZooKeeper) queues a ticket now: if another candidate wins this
                # round, the ticket simply stays queued behind it (no withdraw, no new session to wait with).
                ticket = self._d.prepare(self.key, self.node, self.ttl)
            session = ticket if ticket is not None else self._open_session()
            self._ticket = None
            try:
                created = self._d.create(self.key, self.node, session)
            except SessionExpired:
                self._drop_session(session, expired=True)  # a lease's: the next session() opens a new one
                raise
            except BaseException:
                self._drop_session(session)
                raise
            if created is not None:
                # a ticket whose lease was granted ahead (etcd) started its ttl clock before ``sent``
                clock = session.clock
                yield from self._become_leader(created, session, sent if clock is None else min(sent, clock))
                return
            if session is ticket:
                self._ticket = ticket  # still queued behind the new holder: keep its place
            else:
                self._drop_session(session)
            record = self._d.get(self.key)
            if self._ticket_holds(record):
                self._vacant = True  # the holder left between create() and get(): claim at once
                return
        timeout = None if record is not None else max(0.0, self._holdoff_until - time.monotonic())
        if record is not None and self._ticket is None and self.lease is None:
            # So that winning after the holder goes costs as little as the backend can make it (a read on
            # ZooKeeper, no handshake). Never raises; None when the backend has nothing to prepare.
            self._ticket = self._d.prepare(self.key, self.node, self.ttl)
        self._enter(self._waiting())
        watch = self._d.watch(self.key, record)
        try:
            self._vacant = (yield from self._wait_on(watch, timeout)) and watch.known_absent
        finally:
            if self._vacant:
                self._spent = watch  # closing it (an etcd watch joins its thread) waits until after the create
            else:
                watch.close()

    def _ticket_holds(self, record: Record | None) -> bool:
        """True when ``record`` is our ticket's own queue entry: the holders before it left, so claim it."""
        return record is not None and self._ticket is not None and record.session == self._ticket.id

    def _become_leader(self, record: Record, session: Session, sent: float) -> Steps:
        term = self._begin_term(record, session, sent)
        if term is None:
            self._demote("the store answered after the renew deadline", stale=True)
            return
        log.info("%s: leadership acquired by %s (token %d)", self.key, self.node, term.token)
        # Let the consumer just woken by the event take the GIL first: otherwise it waits while this worker
        # sets up its watch (a gRPC stream on etcd). 1 ms (cut short by stop/resign) is nothing against the
        # renewal period. One-off probe, etcd, two processes: elected -> run_for_election's True 0.26 -> 0.09 ms.
        yield Park(None, time.monotonic() + 0.001)

    def _lead_step(self, lead: _Lead) -> Steps:
        if self.lease is not None:
            yield from self._lead_step_on_lease(lead)
            return
        now = time.monotonic()
        if now >= self._deadline:
            self._demote(f"no renewal succeeded within renew_deadline={self.renew_deadline:.3f}s", stale=True)
            return
        next_renew = self._renew_sent + self.ttl / 3.0
        if now < next_renew:
            if lead.watch is None:
                lead.watch = self._d.watch(self.key, lead.record)
            # (no read when stop() took the term while we waited: its release is what changed the key)
            fired = yield from self._wait_on(lead.watch, min(next_renew, self._deadline) - now)
            if fired and self._lead is lead:
                current = self._d.get(self.key)
                if current is None or current.token != lead.term.token:
                    self._demote("the leader key was deleted or replaced", stale=False)
            return
        try:
            sent = self._renew(lead.session)
        except SessionExpired:
            self._demote("the session expired in the store", stale=False, expired=True)
            return
        with self._lock:
            if self._lead is lead and time.monotonic() < self._deadline:
                self._renew_sent = sent
                self._deadline = sent + self.renew_deadline
                self._valid = (lead.term, self._deadline, None)
                return
        self._demote("the renewal succeeded only after the renew deadline", stale=True)

    def _lead_step_on_lease(self, lead: _Lead) -> Steps:
        """Leading with a lease: the lease renews itself, so the leader only watches its key and its deadline."""
        assert self.lease is not None
        deadline = self.lease.valid_until(lead.session, self.renew_deadline)
        with self._lock:
            self._deadline = deadline
        now = time.monotonic()
        if now >= deadline:
            if self.lease.valid_until(lead.session, 0.0) == 0.0:  # not the lease's session any more: it was lost
                self._demote("the lease's session expired in the store", stale=False, expired=False)
            else:
                self._demote(f"no renewal of the lease within renew_deadline={self.renew_deadline:.3f}s", stale=True)
            return
        if lead.watch is None:
            lead.watch = self._d.watch(self.key, lead.record)
        fired = yield from self._wait_on(lead.watch, deadline - now)
        if fired and self._lead is lead:
            current = self._d.get(self.key)
            if current is None or current.token != lead.term.token:
                self._demote("the leader key was deleted or replaced", stale=False)

    def _on_error(self, error: BaseException) -> None:
        lead = self._lead
        if lead is not None and lead.watch is not None:
            lead.watch.close()
            lead.watch = None

    # -- sessions: the candidate's own, or the shared lease's -----------------------------------------------

    def _open_session(self) -> Session:
        return self.lease.session() if self.lease is not None else self._d.session(self.ttl)

    def _renew(self, session: Session) -> float:
        """Renew ``session``; return when the renewal that succeeded was sent (a lease's may be shared)."""
        if self.lease is not None:
            return self.lease.renew(session)
        sent = time.monotonic()
        session.keepalive()
        return sent

    def _drop_session(self, session: Session, *, expired: bool = False) -> None:
        """Done with ``session``: close our own; a lease's stays (``expired``: it is gone, the lease opens anew)."""
        if self.lease is None:
            session.close()
        elif expired:
            self.lease.lost(session)

    def _demote(self, reason: str, *, stale: bool, expired: bool = False) -> None:
        """End the term. ``stale``: the store may still hold our key (we could not reach it), so keep the
        session and token to delete it once the store answers; otherwise the key is already gone and the
        session is closed to free what it holds (an etcd lease, a ZooKeeper queue entry)."""
        lead = self._end_term(self._waiting())
        if lead is None:
            return
        log.warning("%s: leadership lost by %s (token %d): %s", self.key, self.node, lead.term.token, reason)
        if stale:
            self._stale = (lead.session, lead.term.token)
        else:
            self._drop_session(lead.session, expired=expired)

    def _release(self, reason: str) -> None:
        """End the term and hand the key over (``Discovery.release``: removed through our own session, which
        is closed). The term ends before the key goes; the lead's watch is closed only after the key went, so
        closing a watch is not on the handover's path."""
        lead = self._end_term(self._waiting(), close_watch=False)
        if lead is None:
            return
        self._hand_over(lead, reason)

    def _hand_over(self, lead: _Lead, reason: str) -> None:
        """Remove the key of a term already ended (LOST emitted) through its session, then close its watch.

        The delete is the first thing done: the log line and the watch's close come after it, off the path
        between ``stop()`` and the successor's win."""
        try:
            if self.lease is None:
                self._d.release(self.key, lead.term.token, lead.session)
            else:  # the lease carries other keys: remove ours only
                self._d.delete(self.key, lead.term.token)
        except DiscoveryError as e:
            log.warning("%s: could not delete the leader key on release (it expires with the TTL): %s", self.key, e)
        else:
            log.info("%s: leadership released by %s (token %d): %s", self.key, self.node, lead.term.token, reason)
        finally:
            if lead.watch is not None:
                lead.watch.close()

    def _finish(self) -> None:
        if self._spent is not None:
            self._spent.close()
            self._spent = None
        if self._ticket is not None:
            self._ticket.close()  # withdraws it from the key's queue
            self._ticket = None
        self._release("stopped")
        if self._stale is not None:
            session, token = self._stale
            with contextlib.suppress(DiscoveryError):
                self._d.delete(self.key, token)
            self._drop_session(session)


class Follow(_Worker):
    """The follower state machine: watch the key, publish the leader seen there (deduplicated)."""

    name = "swarmha-follower"

    def __init__(self, discovery: Discovery, key: str) -> None:
        super().__init__(discovery, key, backoff_cap=MAX_BACKOFF)
        self._seen = False
        self._leader: Leader | None = None

    @property
    def leader(self) -> Leader | None:
        """The last leader read from the store (None: vacant or not read yet)."""
        with self._lock:
            return self._leader

    @property
    def seen(self) -> bool:
        with self._lock:
            return self._seen

    def _current_events(self) -> list[Event]:
        events = [Event(Kind.LEADER, leader=self._leader)] if self._seen else []
        return events + super()._current_events()

    def _step(self) -> Steps:
        record = self._d.get(self.key)
        leader = None if record is None else Leader(record.value, record.token)
        with self._lock:
            changed = not self._seen or leader != self._leader
            self._seen, self._leader = True, leader
        if changed:
            if leader is None:
                log.info("%s: no leader", self.key)
            else:
                log.info("%s: new leader elected: %s (token %d)", self.key, leader.node, leader.token)
            self._emit(Event(Kind.LEADER, leader=leader))
        with self._d.watch(self.key, record) as watch:
            yield from self._wait_on(watch, None)


class Transitions:
    """Turns a candidate's events into the bool stream ``run_for_election`` yields.

    Guarantees: values alternate (never True twice in a row), never True for a term that already ended,
    and False is produced no later than the term's renew deadline even if the worker is stuck.
    """

    def __init__(self, campaign: Campaign) -> None:
        self._campaign = campaign
        self._term: Term | None = None

    @property
    def leading(self) -> bool:
        return self._term is not None

    def timeout(self) -> float | None:
        """How long the consumer may block before it must call :meth:`on_timeout`."""
        if self._term is None:
            return None
        return max(0.0, self._campaign.deadline - time.monotonic()) + 0.001

    def on_timeout(self) -> list[bool]:
        if self._term is not None and self._campaign.term != self._term:
            self._term = None
            return [False]
        return []

    def on_event(self, event: Event) -> list[bool]:
        if event.kind is Kind.ELECTED and self._term is None and self._campaign.term == event.term:
            self._term = event.term
            return [True]
        ends_term = event.kind is Kind.END or (event.kind is Kind.LOST and event.term == self._term)
        if ends_term and self._term is not None:
            self._term = None
            return [False]
        return []
