"""The candidate's state machine, shared by the sync and asyncio faces.

A :class:`Campaign` holds its key through a :class:`~swarmha.election._lease.Lease` (the user's shared one, or a
private one of its own) and moves through the :class:`~swarmha.election._phases.Phase` table: every change of
phase is a :class:`~swarmha.election._phases.Signal` applied by :meth:`Campaign._fire`, the one place that emits
ELECTED (entering LEADING) and LOST (leaving it) and releases the key. The phase decides the next step:

* WAITING / QUEUED: read the key; if it is vacant, claim it (``Discovery.claim_async``: the create, and in the
  same round trip where the store allows, the holder when it lost or the steering keys when it won); else watch
  it and look again when it changes. A shared lease claims without reading first (on etcd a claim is one
  transaction: one request per candidate). No periodic request. Every request is made through the engine
  (``_await``), pipelined where the backend can. A private lease first asks the backend for a ticket
  (``Discovery.prepare``): ZooKeeper queues a session for the key, so the claim after the holder left costs no
  request; etcd grants the ticket's lease ahead, so the claim is one write. A ticket is kept across waits until
  a claim wins with it (QUEUED is waiting with one), and withdrawn when the candidate stops. A term won with a
  ticket whose ttl clock started before the claim (``Session.clock``) counts from that clock.
* LEADING: watch the key; the lease's deadline (:meth:`Lease.valid_until`: its last successful renewal, *sent*
  time, plus ``renew_deadline``) is checked on every read of the term and on every step. The lease renews
  itself; the leader sends nothing and has no timer: the lease wakes it when the session is lost or a deadline
  passes without a renewal (:meth:`Lease.wake_on_loss`). The term ends (DEMOTE) then, or when the key changed
  under it. Once the deadline has passed the term is over: a late renewal does not revive it.
* RESIGN / STOP while leading: the term ends (LOST) and only then the key goes, through the term's own session
  (:meth:`Lease.release`: compare-and-delete, or the end of a private session), never a successor's key; so a
  waiting candidate wins within one watch round trip instead of after the TTL. Both run on the engine.
* Store errors never end the campaign: every step is retried with jittered exponential backoff. A term that
  ended while the store could not be reached leaves its key behind (*leftover*): it is deleted by token once
  the store answers, before the next claim.
* Steering (:mod:`swarmha.election._control`): a claim that wins checks the transfer marker and the registry
  before its term begins, and gives the key back if another is to have it. TRANSFER marks the key for the
  target, then ends the term like RESIGN, and the old leader waits (no claim) until the target holds the key or
  the transfer's deadline. With ``drain`` a graceful end goes by way of DRAINING: LOST at once, the release once
  every consumer that was told True came back for its next value (:meth:`Campaign.came_back`) or ``drain``
  seconds passed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import weakref
from collections.abc import Mapping

from swarmha.discovery import Discovery, Record, Session, Watch
from swarmha.discovery._base import check_ttl
from swarmha.election._control import Drain, Handoff, Steering, control_prefix
from swarmha.election._engine import Park
from swarmha.election._lease import Held, Lease, Loss, check_renew_deadline
from swarmha.election._phases import Action, Phase, Signal, step
from swarmha.election._transfer import Transfers
from swarmha.election._values import Term
from swarmha.election._worker import MAX_BACKOFF, Event, Kind, Steps, Transitions
from swarmha.errors import ConfigurationError, DiscoveryError, SessionExpired

__all__ = ["Campaign"]

log = logging.getLogger("swarmha.election")


class Campaign(Transfers):
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
        *,
        priority: int = 0,
        preempt: bool = False,
        preempt_after: float | None = None,
        drain: float | None = None,
    ) -> None:
        if lease is not None:
            if lease.discovery is not discovery:
                raise ConfigurationError("the lease belongs to another Discovery than the candidate's")
            ttl = lease.ttl
        ttl = check_ttl(ttl)
        deadline = check_renew_deadline(ttl, renew_deadline)
        if not isinstance(node, str) or not node:
            raise ConfigurationError(f"node must be a non-empty string, not {node!r}")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ConfigurationError(f"priority must be an int, not {priority!r}")
        grace = ttl if preempt_after is None else check_ttl(preempt_after, "preempt_after")
        drain = None if drain is None else check_ttl(drain, "drain")
        discovery.check_ttl(ttl)
        super().__init__(discovery, key, backoff_cap=min(MAX_BACKOFF, ttl / 6.0))
        self.node = node
        self.ttl = ttl
        self.renew_deadline = deadline
        self.resign_holdoff = min(1.0, ttl / 3.0) if resign_holdoff is None else float(resign_holdoff)
        self.lease = lease if lease is not None else Lease.private_for(discovery, ttl, deadline)
        self.priority = priority
        self.preempt = bool(preempt)
        self.preempt_after = grace
        self.drain = drain
        self._steer = Steering(discovery, self.key, node, priority, registers=priority != 0 or self.preempt)
        self._presence: Lease | None = None  # a private lease's registration session (shared: the lease's)
        self._transfer: Handoff | None = None  # a transfer asked for and not decided yet
        self._draining: Drain | None = None  # while DRAINING: the end waiting for the consumers
        # the iterators' transitions; made by the first iterator (a WeakSet is 7 objects the collector walks)
        self._consumers: weakref.WeakSet[Transitions] | None = None
        self._phase = Phase.LATENT
        self._lead: Held | None = None  # the term, while LEADING
        self._request: Signal | None = None  # RESIGN asked for, not taken yet (a stop is the worker's flag)
        self._holdoff_until = 0.0  # after a resign: no claim before this unless the key's queue names us
        self._leftover: tuple[Session, int] | None = None  # a key the store may still hold for a term that ended
        self._spent: Watch | None = None  # the watch that saw the key vacant: closed after the claim it led to
        self._lost_reason: str | None = None

    # -- what callers read ---------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        """Where the campaign is now (LEADING may already be over by the clock: :attr:`term` tells)."""
        return self._phase

    @property
    def term(self) -> Term | None:
        """The current term while the lease is valid by the local monotonic clock, else None. Lock-free (the HA
        manager asks on every request)."""
        lead = self._lead
        if lead is None or self._phase is not Phase.LEADING:
            return None
        if time.monotonic() >= self.lease.valid_until(lead.session, self.renew_deadline):
            return None
        return lead.term

    @property
    def deadline(self) -> float:
        """Monotonic time at which the current term ends unless the lease renews first (0 when not leading)."""
        lead = self._lead
        if lead is None or self._phase is not Phase.LEADING:
            return 0.0
        return self.lease.valid_until(lead.session, self.renew_deadline)

    @property
    def lost_reason(self) -> str | None:
        """Why the last term ended ("stopped", "resigned", or what the store did), or None if none ended yet.
        A term over by the clock whose machine has not noticed yet (a consumer told by its deadline) says why."""
        lead = self._lead
        if self._phase is Phase.LEADING and lead is not None and self.term is None:
            return self.lease.loss(lead.session, self.renew_deadline).reason
        return self._lost_reason

    def stop(self, timeout: float | None = None, *, back: int | None = None) -> None:
        """Stop campaigning; if leading, end the term and release the key; wait for the machine to end.

        The STOP runs right here on the caller's thread (the same transition the engine would make): a thread
        hop less between ``stop()`` and the successor's win. The term ends (``term`` None, LOST delivered) before
        the key goes. The release is bounded by the store's request timeout, not by ``timeout`` (which bounds
        the wait for the end). Every ``stop()`` returns after the key went, also one that raced another thread's
        ``stop()`` (a signal handler's).

        With ``drain``, the key goes once the consumers came back; a consumer iterating on the calling thread
        (or on thread ``back``: an event loop's, whose stop runs on a worker) counts as come back: it is busy in
        this call, done with the term."""
        with self._lock:
            self._stopping = True
            if self._task is not None:
                self._end_gracefully(Signal.STOP, "stopped", back=threading.get_ident() if back is None else back)
        super().stop(timeout)

    def resign(self) -> None:
        """Give up the current term (if any) and let a waiting candidate win before campaigning again."""
        with self._lock:
            if self._phase is not Phase.LEADING:
                return
            self._request = Signal.RESIGN
        self._interrupt()

    # -- consumers (drain) -----------------------------------------------------------------------------------

    def attach(self, transitions: Transitions) -> None:
        """An iterator of this campaign's elections began: a drained end waits for it too."""
        with self._lock:
            if self._consumers is None:
                self._consumers = weakref.WeakSet()
            self._consumers.add(transitions)

    def came_back(self, consumer: Transitions | int) -> None:
        """A consumer came back for its next value (or left its loop) after a False; an int: every consumer
        running on that thread (``threading.get_ident()``). The key of a drained end goes when none is owed."""
        with self._lock:
            drain = self._draining
            if drain is None or not drain.owing:
                return
            if isinstance(consumer, int):
                drain.owing = {t for t in drain.owing if t.thread != consumer}
            else:
                drain.owing.discard(consumer)
            done = not drain.owing
        if done:
            self._interrupt()

    def _end_gracefully(self, signal: Signal, reason: str, back: int | None = None) -> bool:
        """STOP, RESIGN or TRANSFER: at once, or (``drain``, while leading) by way of DRAINING. Under the lock."""
        drain = self._draining
        if self._phase is Phase.DRAINING and drain is not None:
            if signal is Signal.STOP:
                drain.ending, drain.reason = Signal.STOP, reason  # the pending end becomes a stop
            if back is not None and drain.owing:
                drain.owing = {t for t in drain.owing if t.thread != back}
                if not drain.owing:
                    self._interrupt()
            return True
        if self.drain is None or self._phase is not Phase.LEADING or self._lead is None:
            return self._fire(signal, reason)
        term = self._lead.term
        owing = {t for t in (self._consumers or ()) if t.term == term and (back is None or t.thread != back)}
        self._draining = Drain(signal, reason, time.monotonic() + self.drain, owing)
        return self._fire(Signal.DRAIN, reason)

    # -- the one transition point ------------------------------------------------------------------------

    def _fire(self, signal: Signal, reason: str | None = None) -> bool:
        """Apply ``signal`` through the phase table and carry out its actions in order; False if ignored.

        Everything runs under the lock, the release (a store call bounded by the store's request timeout) too:
        a subscriber never sees events out of order with its replay of the present state, and a second thread's
        ``stop()`` returns only once the first one's release is done. Thread-safe: the table makes a signal that
        came too late (a DEMOTE after a STOP, a WIN after a STOP) a no-op, so the caller of ``stop()`` may fire
        STOP while the machine runs a step on the engine."""
        self._lock.acquire()
        try:
            move = step(self._phase, signal)
            if move is None:
                return False
            self._phase, actions = move
            lead = self._lead
            for action in actions:
                if action is Action.ELECTED and lead is not None:
                    self._emit(Event(Kind.ELECTED, lead.term))
                elif action is Action.LOST and lead is not None:
                    self._lost_reason = reason
                    if lead.unwake is not None:
                        lead.unwake()
                    self._emit(Event(Kind.LOST, lead.term, reason=reason))
                elif action is Action.RELEASE and lead is not None:
                    self._hand_over(lead, reason or signal.value)
                elif action is Action.HOLDOFF:
                    handoff = self._transfer
                    until = handoff.deadline if handoff is not None else time.monotonic() + self.resign_holdoff
                    self._holdoff_until = until
                elif action is Action.ENDED:
                    self._emit(Event(Kind.END))
            if self._phase not in (Phase.LEADING, Phase.DRAINING):
                self._lead = None  # the term's record lives as long as its key is ours
                self._draining = None
            return True
        finally:
            self._lock.release()

    def _hand_over(self, lead: Held, reason: str) -> None:
        """Remove the key of a term already ended (LOST emitted) through its session, then close its watch.

        The delete is the first thing done: the log line and the watch's close come after it, off the path
        between the end of the term and the successor's win."""
        try:
            if self._steer.registration is not None:  # no waiter may defer to a leader that is leaving
                with contextlib.suppress(DiscoveryError):
                    self._steer.deregister()
            handoff = self._transfer
            self.lease.release(self.key, lead.term.token, lead.session, keep=handoff is not None)
        except DiscoveryError as e:
            log.warning("%s: could not delete the leader key on release (it expires with the TTL): %s", self.key, e)
        else:
            log.info("%s: leadership released by %s (token %d): %s", self.key, self.node, lead.term.token, reason)
        finally:
            if lead.watch is not None:
                lead.watch.close()

    def _started(self) -> None:
        self._fire(Signal.START)

    def _close_out(self) -> None:
        self._fire(Signal.STOP, "stopped")
        self._fire(Signal.END)

    def _current_events(self) -> list[Event]:
        term = self.term
        events = [Event(Kind.ELECTED, term)] if term is not None else []
        return events + super()._current_events()

    def _interrupted(self) -> bool:
        if self._phase is Phase.DRAINING:
            drain = self._draining
            return drain is None or not drain.owing
        return self._stopping or self._request is not None

    def _more(self) -> bool:
        return not self._stopping or self._phase is Phase.DRAINING

    # -- the steps -------------------------------------------------------------------------------------

    def _step(self) -> Steps:
        with self._lock:
            request, self._request = self._request, None
        if request is Signal.TRANSFER:
            self._begin_transfer()
            return
        if request is not None:
            with self._lock:
                if self._end_gracefully(request, "resigned"):
                    return
        lead = self._lead
        if self._phase is Phase.DRAINING and lead is not None:
            yield from self._drain_step(lead)
        elif self._phase is Phase.LEADING and lead is not None:
            yield from self._lead_step(lead)
        else:
            spent, self._spent = self._spent, None
            try:
                yield from self._campaign_step(vacant=spent is not None)
            finally:
                if spent is not None:
                    spent.close()

    def _lead_step(self, lead: Held) -> Steps:
        """The one leading loop: watch the key until the lease's deadline; end the term when either says so."""
        deadline = self.lease.valid_until(lead.session, self.renew_deadline)
        now = time.monotonic()
        if now >= deadline:
            self._demote(lead, self.lease.loss(lead.session, self.renew_deadline))
            return
        until: float | None = None  # the lease wakes the leader at its deadline if it was not renewed in time
        if self.preempt and self._transfer is None:
            to = self._steer.preferred_waiter(self.preempt_after)
            if to is not None:
                log.info(
                    "%s: %s hands over to %s (higher priority, waited %.3gs)",
                    self.key,
                    self.node,
                    to,
                    self.preempt_after,
                )
                with self._lock:
                    self._transfer = Handoff(to, now + self.ttl, lead.term.token)
                    self._request = Signal.TRANSFER
                return
            until = min(deadline, now + max(0.05, self.preempt_after / 4.0))
        if lead.watch is None:
            lead.watch = self._d.watch(self.key, lead.record)
        fired = yield from self._wait_on(lead.watch, None if until is None else until - now)
        if fired and self._lead is lead:
            current = yield from self._await(lambda: self._d.get_async(self.key))
            if current is not None and current.token == lead.term.token:
                return
            if self.lease.valid_until(lead.session, 0.0) == 0.0:  # the session went, and the key with it
                self._demote(lead, self.lease.loss(lead.session, self.renew_deadline))
            elif current is None:
                self._demote(lead, Loss("the leader key was deleted", stale=False))
            else:
                self._demote(lead, Loss(f"the key was taken by {current.value} (token {current.token})", stale=False))

    def _drain_step(self, lead: Held) -> Steps:
        """DRAINING: wait for the consumers (or ``drain`` seconds), then the end asked for releases the key. A
        term whose lease ran out meanwhile is over in the store as well: nothing is left to release."""
        drain = self._draining
        now = time.monotonic()
        deadline = self.lease.valid_until(lead.session, self.renew_deadline)
        if drain is None or now >= deadline:
            loss = self.lease.loss(lead.session, self.renew_deadline)
            if self._fire(Signal.DEMOTE, loss.reason):
                self._settle(lead, loss)
            return
        if drain.owing and now < drain.until:
            yield Park(None, min(drain.until, deadline))
            return
        with self._lock:
            self._draining = None
            self._fire(drain.ending, drain.reason)

    def _demote(self, lead: Held, loss: Loss) -> None:
        """End the term for ``loss``. A stale one (the store may still hold the key: it could not be reached)
        keeps the session and token to delete the key once the store answers; otherwise the key is gone and
        the session is dropped (a private one closed, freeing what it holds: an etcd lease, a queue entry)."""
        if not self._fire(Signal.DEMOTE, loss.reason):
            return
        log.warning("%s: leadership lost by %s (token %d): %s", self.key, self.node, lead.term.token, loss.reason)
        self._settle(lead, loss)

    def _settle(self, lead: Held, loss: Loss) -> None:
        """After a term lost to the store: keep a stale key's session and token to delete it later, else drop."""
        if lead.watch is not None:
            lead.watch.close()
        if loss.stale:
            self._leftover = (lead.session, lead.term.token)
        else:
            self.lease.drop(lead.session)

    def _campaign_step(self, vacant: bool) -> Steps:
        """Claim the key if it is vacant, else wait for it to change. ``vacant``: a watch just saw it deleted."""
        lease = self.lease
        if self._leftover is not None:
            session, token = self._leftover
            yield from self._await(lambda: self._d.delete_async(self.key, token))
            lease.drop(session)
            self._leftover = None
        handoff = self._transfer
        if handoff is not None:
            yield from self._transfer_step(handoff)
            return
        if self._steer.registers and time.monotonic() >= self._holdoff_until:
            self._steer.register(self._presence_session())
        while True:
            may_claim = time.monotonic() >= self._holdoff_until or lease.queued
            # A shared lease claims without reading first: a lost claim answers with the holder (on etcd the
            # claim is one transaction: one request per candidate instead of a read, a create and a read).
            direct = may_claim and (vacant or not lease.private)
            record = None if direct or vacant else (yield from self._await(lambda: self._d.get_async(self.key)))
            was_vacant, vacant = vacant, False
            if direct or lease.holds(record) or (record is None and may_claim):
                # ``holds``: the ticket's queue entry became the holder (the holders before it left): claim it. A
                # ticket was queued behind another holder, so a resign's holdoff has done its job already.
                sent = time.monotonic()
                # A backend with key queues (ZooKeeper) queues a ticket now: if another candidate wins this
                # round, the ticket simply stays queued behind it (no withdraw, no new session to wait with).
                lease.prepare(self.key, self.node, control_prefix(self.key))
                session = lease.session()
                try:
                    request = functools.partial(
                        self._d.claim_async, self.key, self.node, session, control_prefix(self.key), vacant=was_vacant
                    )
                    claim = yield from self._await(request)
                except SessionExpired:
                    lease.drop(session, gone=True)  # a shared lease's next session() opens a new one
                    raise
                except BaseException:
                    lease.drop(session)
                    raise
                if claim.created is not None:
                    # a ticket whose lease was granted ahead (etcd) started its ttl clock before ``sent``
                    clock = session.clock
                    at = sent if clock is None else min(sent, clock)
                    yield from self._become_leader(claim.created, session, at, claim.listed)
                    return
                lease.unclaimed(session)  # a ticket stays queued behind the new holder: it keeps its place
                record = claim.holder
                if lease.holds(record):
                    vacant = True  # the holder left between create() and get(): claim at once
                    continue
            break
        timeout = None if record is not None else max(0.0, self._holdoff_until - time.monotonic())
        if record is not None:
            # So that winning after the holder goes costs as little as the backend can make it (a read on
            # ZooKeeper, no handshake). Never raises; nothing when the backend has nothing to prepare.
            lease.prepare(self.key, self.node, control_prefix(self.key))
        self._fire(Signal.QUEUE if lease.queued else Signal.UNQUEUE)
        watch = self._d.watch(self.key, record)
        seen_vacant = False
        try:
            seen_vacant = (yield from self._wait_on(watch, timeout)) and watch.known_absent
        finally:
            if seen_vacant:
                self._spent = watch  # closing it (an etcd watch joins its thread) waits until after the create
            else:
                watch.close()

    def _presence_session(self) -> Session:
        """The session registrations are bound to: a shared lease's, or a private lease's presence session."""
        if not self.lease.private:
            return self.lease.session()
        if self._presence is None:
            self._presence = Lease(self._d, self.ttl)
        return self._presence.session()

    def _become_leader(
        self, record: Record, session: Session, sent: float, steering: Mapping[str, Record] | None
    ) -> Steps:
        """Enter LEADING with the term ``record`` won, counted from ``sent`` (unless already past its deadline),
        unless a transfer names another candidate or a preferred one waits (``steering``: the control keys read
        with the claim, None: read them now): then give the key back at once."""
        try:
            if steering is None:
                steering = yield from self._await(lambda: self._d.list_async(control_prefix(self.key)))
            why = self._steer.defer_to(steering)
        except BaseException:
            self._leftover = (session, record.token)
            raise
        if why is not None:
            try:
                self.lease.release(self.key, record.token, session)
            finally:
                self._holdoff_until = time.monotonic() + self.resign_holdoff
            log.info("%s: %s gave the key back (token %d): %s", self.key, self.node, record.token, why)
            return
        self.lease.claimed(session, sent)
        lead = Held(Term(self.key, self.node, record.token), session, record)
        with self._lock:
            late = time.monotonic() >= self.lease.valid_until(session, self.renew_deadline)
            if not late:
                self._lead = lead
                if not self._fire(Signal.WIN):  # stop() came first: the key goes with the leftovers
                    self._lead = None
                    self._leftover = (session, record.token)
                    return
        if late:
            log.warning("%s: claim by %s answered after the renew deadline: not leading", self.key, self.node)
            self._leftover = (session, record.token)
            return
        lead.unwake = self.lease.wake_on_loss(self._interrupt, self.renew_deadline)
        self._steer.forget_seen()
        log.info("%s: leadership acquired by %s (token %d)", self.key, self.node, record.token)
        # Let the consumer just woken by the event take the GIL first: otherwise it waits while this worker
        # sets up its watch (a gRPC stream on etcd). 1 ms (cut short by stop/resign) is nothing against the
        # renewal period. One-off probe, etcd, two processes: elected -> run_for_election's True 0.26 -> 0.09 ms.
        yield Park(None, time.monotonic() + 0.001)
        self.lease.keep(session)  # after the consumer's wake-up: its first renewal is ttl/3 away

    def _on_error(self, error: BaseException) -> None:
        lead = self._lead
        if lead is not None and lead.watch is not None:
            lead.watch.close()
            lead.watch = None

    def _finish(self) -> None:
        """The end of the machine: release the key if held (the same path as a resign), withdraw a ticket,
        delete a leftover key (best effort)."""
        if self._spent is not None:
            self._spent.close()
            self._spent = None
        self._fire(Signal.STOP, "stopped")
        if self._transfer is not None:
            self._decide(self._transfer, False, "the candidate stopped")
        with contextlib.suppress(DiscoveryError):
            self._steer.deregister()
        if self._presence is not None:
            self._presence.close()
        if self._leftover is not None:
            session, token = self._leftover
            with contextlib.suppress(DiscoveryError):
                self._d.delete(self.key, token)
            self.lease.drop(session)
            self._leftover = None
        if self.lease.private:
            self.lease.close()  # withdraws a ticket from the key's queue

    def __repr__(self) -> str:
        return f"Campaign({self.key!r}, node={self.node!r}, phase={self._phase.value})"
