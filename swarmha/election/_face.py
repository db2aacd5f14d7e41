"""What the sync and asyncio faces share, so both have the same members with the same meaning by construction.

:class:`CandidateBase` and :class:`FollowerBase` hold the state machine (:mod:`swarmha.election._campaign`) and
every member that does not wait: the read-only properties, ``start()``, ``stop_on_signals()`` and ``__repr__``.
Each face (:mod:`swarmha.election._sync`, :mod:`swarmha.aio`) adds only the members whose shape differs between
blocking and ``async`` code: the iterator, ``resign`` and ``stop``. Neither face reaches into the other.

``run_for_election()`` / ``follow_election()`` subscribe and start the worker *when called*, not on the first
``next()``: the subscription buffers every event from that moment, so an iterator taken now and advanced later
yields what happened since (the first True; the current leader first).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Self

from swarmha.discovery import Discovery
from swarmha.discovery._base import check_ttl
from swarmha.election._campaign import Campaign
from swarmha.election._lease import Lease
from swarmha.election._phases import Phase
from swarmha.election._values import Leader, Term
from swarmha.election._worker import Event, Follow, Kind, _Worker
from swarmha.errors import ConfigurationError

__all__ = ["DEFAULT_SIGNALS", "CandidateBase", "FollowerBase", "latest"]

#: A candidate's session TTL when neither ``ttl`` nor a lease is given.
DEFAULT_TTL = 10.0
#: What ``stop_on_signals()`` handles when given no signal: Ctrl-C and a service manager's stop.
DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_Handler = Callable[[int, FrameType | None], Any] | int | None


class _Face:
    """The members every candidate and follower has, sync or async."""

    _worker: _Worker

    def __init__(self) -> None:
        self._restore: list[tuple[int, _Handler]] = []

    @property
    def key(self) -> str:
        return self._worker.key

    def start(self) -> Self:
        """Start the background worker without iterating; returns self. Later calls do nothing."""
        self._worker.start()
        return self

    def stop_on_signals(self, *signums: int) -> Self:
        """Stop (as :meth:`stop` does) when one of ``signums`` arrives (default SIGINT and SIGTERM).

        The handler does not raise into the code it interrupts: it starts the stop on a thread of its own, so
        an iterator in progress delivers the end of the term (a last False) and then ends normally. Ctrl-C in a
        ``for elected in c.run_for_election()`` loop therefore runs the loop's not-leader branch, releases the
        key and leaves the loop with no traceback. The previous handlers come back when the stop completes.
        Must be called from the main thread (Python's rule for signal handlers): else ConfigurationError.
        """
        if threading.current_thread() is not threading.main_thread():
            raise ConfigurationError("stop_on_signals() must be called from the main thread")
        for signum in signums or DEFAULT_SIGNALS:
            self._restore.append((signum, signal.signal(signum, self._on_signal)))
        return self

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=self._stop_from_signal, name="swarmha-signal-stop", daemon=True).start()

    def _stop_from_signal(self) -> None:
        self._stop_now(None)

    def _stop_now(self, timeout: float | None) -> None:
        """Stop the worker (idempotent) and put back the signal handlers :meth:`stop_on_signals` replaced."""
        self._worker.stop(timeout)
        self._restore_signals()

    def _restore_signals(self) -> None:
        # Only the main thread may set handlers: from another (the signal's stop thread) ours stay until the
        # next stop() on the main thread (a ``with`` block's exit); a second signal meanwhile finds us stopped.
        if not self._restore or threading.current_thread() is not threading.main_thread():
            return
        restore, self._restore = self._restore, []
        for signum, previous in reversed(restore):
            signal.signal(signum, previous)


class CandidateBase(_Face):
    """Campaign for leadership of ``key`` in ``discovery`` as ``node``.

    Guarantees:

    * At most one candidate's :attr:`is_leader` is True for a key at any instant, given that local monotonic
      clocks do not run slower than the store's by more than ``ttl - renew_deadline`` per ``ttl``.
    * :attr:`is_leader` is checked against the renew deadline on every read: a process frozen (SIGSTOP, GC,
      swap) longer than ``renew_deadline`` reads False the moment it resumes, before it can act on it.
    * :attr:`term` carries the fencing token, which strictly increases with every term on the key. Pass it
      to whatever the leader writes to; that is the only protection from a leader deposed mid-request.
    * Store errors never end the campaign: a leader that cannot renew demotes itself within
      ``renew_deadline``; the candidate keeps retrying (backoff up to ``min(1 s, ttl/6)``) and campaigns again.
    * ``stop()`` removes the key if held, through this candidate's own session (never a successor's key), so
      the next candidate wins in one watch round trip; it leaves no thread behind. A crashed leader is replaced
      once the store expires its session, at most ``ttl`` (plus the store's own grace) after its last renewal.

    ``lease``: a :class:`~swarmha.Lease` of ``discovery`` to share one TTL session with other candidates (one
    keepalive for all their keys; when that session is lost every term it carried ends at once); without it the
    candidate has a session of its own and fails independently.

    ``priority``: when the key is free, the waiting candidate with the highest priority wins (ties: the one that
    registered first); candidates that set a priority (or ``preempt``) register under ``KEY.election/``. With
    ``preempt=True`` a leader hands over (as :meth:`transfer`) to a waiting candidate of strictly higher priority
    that it has seen waiting for ``preempt_after`` seconds (default ``ttl``). ``drain`` (seconds): a graceful end
    of a term (stop, resign, transfer, preemption, a signal) releases the key only once the consumer of
    :meth:`run_for_election` took the False and came back for its next value or left its loop, or ``drain``
    seconds passed; a term lost to the store still ends at once.

    ``ttl`` (seconds, > 0; default 10, or the lease's) is the session TTL; the leader renews every ``ttl/3``.
    ``renew_deadline`` defaults to ``2/3·ttl`` and must lie strictly between ``ttl/3`` and ``ttl``. Bad values raise
    :class:`~swarmha.errors.ConfigurationError` (a :class:`ValueError`) at once.
    """

    def __init__(
        self,
        discovery: Discovery,
        key: str,
        node: str,
        ttl: float | None = None,
        renew_deadline: float | None = None,
        *,
        lease: Lease | None = None,
        priority: int = 0,
        preempt: bool = False,
        preempt_after: float | None = None,
        drain: float | None = None,
    ) -> None:
        super().__init__()
        if lease is not None and ttl is not None and check_ttl(ttl) != lease.ttl:
            raise ConfigurationError(f"ttl ({ttl}) differs from the lease's ({lease.ttl}): give one or the other")
        ttl = ttl if ttl is not None else lease.ttl if lease is not None else DEFAULT_TTL
        self._campaign = self._worker = Campaign(
            discovery,
            key,
            node,
            ttl,
            renew_deadline,
            lease=lease,
            priority=priority,
            preempt=preempt,
            preempt_after=preempt_after,
            drain=drain,
        )

    @property
    def node(self) -> str:
        return self._campaign.node

    @property
    def ttl(self) -> float:
        return self._campaign.ttl

    @property
    def renew_deadline(self) -> float:
        return self._campaign.renew_deadline

    @property
    def lease(self) -> Lease | None:
        """The shared :class:`~swarmha.Lease` this candidate campaigns with, or None (a private lease of its own)."""
        lease = self._campaign.lease
        return None if lease.private else lease

    @property
    def priority(self) -> int:
        return self._campaign.priority

    @property
    def preempt(self) -> bool:
        return self._campaign.preempt

    @property
    def drain(self) -> float | None:
        return self._campaign.drain

    @property
    def lost_reason(self) -> str | None:
        """Why the last term ended, for a log: ``"stopped"``, ``"resigned"``, ``"transferred to NODE"``, or what
        the store did (``"no renewal succeeded within renew_deadline=...s (the store unreachable since
        HH:MM:SS)"``, ``"the session expired in the store"``, ``"the key was taken by NODE (token N)"``, ``"the
        leader key was deleted"``). None before a term ended. The same text is on the observers' ``lost`` event
        (:attr:`swarmha.observe.Observation.reason`)."""
        return self._campaign.lost_reason

    @property
    def phase(self) -> Phase:
        """Where the campaign is: LATENT, WAITING, QUEUED (waiting with a ticket), LEADING, STOPPING, STOPPED.

        Informative (a LEADING campaign whose deadline passed a moment ago still says so until its machine
        runs): :attr:`is_leader` is what decides leadership."""
        return self._campaign.phase

    @property
    def is_leader(self) -> bool:
        """True only while this candidate holds a term whose lease is valid by the local monotonic clock."""
        return self._campaign.term is not None

    @property
    def term(self) -> Term | None:
        """The current :class:`Term` (key, node, fencing token) while leader, else None."""
        return self._campaign.term

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} key={self.key!r} node={self.node!r} term={self.term!r}>"


class FollowerBase(_Face):
    """Watch who leads ``key`` in ``discovery``, without campaigning.

    Guarantees: it never reports a leader it has not read from the store; it reports each change once (no
    re-announcement of the same leader after a store hiccup); it reports vacancy (None) once the store has
    removed the key (the leader stopped, or its session expired). While the store is unreachable it keeps
    the last leader it saw and retries; it sends no periodic requests while idle (it watches).
    """

    def __init__(self, discovery: Discovery, key: str) -> None:
        super().__init__()
        self._discovery = discovery
        self._follow = self._worker = Follow(discovery, key)

    @property
    def leader(self) -> Leader | None:
        """The current leader: the last one seen while following (no I/O), else read from the store now.

        Reading from the store (not following yet, or before the first read) is one blocking request, bounded
        by the store's request timeout, and may raise :class:`~swarmha.errors.DiscoveryError`.
        """
        if self._follow.running and self._follow.seen:
            return self._follow.leader
        record = self._discovery.get(self._follow.key)
        return None if record is None else Leader(record.value, record.token)

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} key={self.key!r} leader={self._follow.leader!r}>"


def latest(batch: list[Event]) -> tuple[list[Leader | None], bool]:
    """Of a follower's events taken together: ``[the newest leader]`` (``[]`` if none), and whether END came."""
    leaders = [e.leader for e in batch if e.kind is Kind.LEADER]
    return leaders[-1:], any(e.kind is Kind.END for e in batch)
