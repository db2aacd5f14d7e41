"""The synchronous face: :class:`Candidate` and :class:`Follower`, each driving a background thread."""

from __future__ import annotations

import queue
from collections.abc import Iterator

from swarmha._context import StopsOnExit
from swarmha.discovery import Discovery
from swarmha.election._machinery import Campaign, Event, Follow, Kind, Transitions
from swarmha.election._values import Leader, Term

__all__ = ["Candidate", "Follower"]


class Candidate(StopsOnExit):
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
    * :meth:`stop` removes the key if held, through this candidate's own session (never a successor's key), so
      the next candidate wins in one watch round trip; it leaves no thread behind. A crashed leader is replaced
      once the store expires its session, at most ``ttl`` (plus the store's own grace) after its last renewal.

    ``ttl`` (seconds, > 0) is the session TTL; the leader renews every ``ttl/3``. ``renew_deadline`` defaults
    to ``2/3·ttl`` and must lie strictly between ``ttl/3`` and ``ttl``. Bad values raise
    :class:`~swarmha.errors.ConfigurationError` (a :class:`ValueError`) at once.
    """

    def __init__(
        self,
        discovery: Discovery,
        key: str,
        node: str,
        ttl: float = 10.0,
        renew_deadline: float | None = None,
    ) -> None:
        self._campaign = Campaign(discovery, key, node, ttl, renew_deadline)

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
    def is_leader(self) -> bool:
        """True only while this candidate holds a term whose lease is valid by the local monotonic clock."""
        return self._campaign.term is not None

    @property
    def term(self) -> Term | None:
        """The current :class:`Term` (key, node, fencing token) while leader, else None."""
        return self._campaign.term

    def start(self) -> Candidate:
        """Start campaigning in the background without iterating (``run_for_election`` also starts it)."""
        self._campaign.start()
        return self

    def run_for_election(self) -> Iterator[bool]:
        """Campaign, yielding True when leadership is gained and False when it is lost.

        Values alternate, starting with True. False comes no later than the renew deadline even when the
        store hangs. The iterator ends after :meth:`stop` (yielding a last False if it was leading).
        Breaking out of the loop does not stop the campaign; :meth:`stop` does.
        """
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        transitions = Transitions(self._campaign)
        unsubscribe = self._campaign.subscribe(events.put)
        self._campaign.start()
        try:
            while True:
                try:
                    event = events.get(timeout=transitions.timeout())
                except queue.Empty:
                    yield from transitions.on_timeout()
                    continue
                yield from transitions.on_event(event)
                if event.kind is Kind.END:
                    return
        finally:
            unsubscribe()

    def resign(self) -> None:
        """Hand leadership over now: release the key, let a waiting candidate win first, keep campaigning.

        If no other candidate takes the key within ``min(1 s, ttl/3)``, this one campaigns again.
        Does nothing when not leading. Returns at once; the iterator yields False when it took effect.
        """
        self._campaign.resign()

    def stop(self, timeout: float | None = None) -> None:
        """Stop campaigning, release the key if held, and wait for the background thread. Idempotent."""
        self._campaign.stop(timeout)

    def __repr__(self) -> str:
        return f"<Candidate key={self._campaign.key!r} node={self.node!r} term={self.term!r}>"


class Follower(StopsOnExit):
    """Watch who leads ``key`` in ``discovery``, without campaigning.

    Guarantees: it never reports a leader it has not read from the store; it reports each change once (no
    re-announcement of the same leader after a store hiccup); it reports vacancy (None) once the store has
    removed the key (the leader stopped, or its session expired). While the store is unreachable it keeps
    the last leader it saw and retries; it sends no periodic requests while idle (it watches).
    """

    def __init__(self, discovery: Discovery, key: str) -> None:
        self._discovery = discovery
        self._follow = Follow(discovery, key)

    @property
    def leader(self) -> Leader | None:
        """The current leader: the last one seen if following, else read from the store now.

        Reading from the store (not following) may raise :class:`~swarmha.errors.DiscoveryError`.
        """
        if self._follow.running and self._follow.seen:
            return self._follow.leader
        record = self._discovery.get(self._follow.key)
        return None if record is None else Leader(record.value, record.token)

    def start(self) -> Follower:
        """Start following in the background without iterating (``follow_election`` also starts it)."""
        self._follow.start()
        return self

    def follow_election(self) -> Iterator[Leader | None]:
        """Yield the current leader first, then each change (None while no one leads); ends after stop()."""
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        unsubscribe = self._follow.subscribe(events.put)
        self._follow.start()
        last: list[Leader | None] = []
        try:
            while True:
                event = events.get()
                if event.kind is Kind.END:
                    return
                if last != [event.leader]:
                    last = [event.leader]
                    yield event.leader
        finally:
            unsubscribe()

    def stop(self, timeout: float | None = None) -> None:
        """Stop following and wait for the background thread. Idempotent."""
        self._follow.stop(timeout)

    def __repr__(self) -> str:
        return f"<Follower key={self._follow.key!r} leader={self._follow.leader!r}>"
