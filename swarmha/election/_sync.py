"""The synchronous face: :class:`Candidate` and :class:`Follower`, each driving a background thread.

The members that do not wait come from :mod:`swarmha.election._face` (shared with :mod:`swarmha.aio`); this
module adds the blocking ones: the iterators, ``resign()`` and ``stop()``, and the context manager.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import weakref
from collections.abc import Callable, Iterator

from swarmha._context import StopsOnExit
from swarmha.election._face import CandidateBase, FollowerBase, latest
from swarmha.election._values import Leader
from swarmha.election._worker import Event, Kind, Transitions

__all__ = ["Candidate", "Follower"]


def _unsubscribed_when_dropped(iterator: Iterator[object], unsubscribe: Callable[[], None]) -> None:
    """An iterator dropped before its first ``next()`` never runs its ``finally``: unsubscribe on collection."""
    weakref.finalize(iterator, unsubscribe)


class Candidate(CandidateBase, StopsOnExit):
    __doc__ = CandidateBase.__doc__

    def run_for_election(self) -> Iterator[bool]:
        """Campaign, yielding True when leadership is gained and False when it is lost.

        The campaign starts when this is called, not on the first ``next()``: an iterator kept for later
        yields what happened since (True first if this candidate leads by then). Values alternate, starting
        with True. False comes no later than the renew deadline even when the store hangs. The iterator ends
        after :meth:`stop` (yielding a last False if it was leading). Breaking out of the loop does not stop
        the campaign; :meth:`stop` does. Each call gives an independent iterator of the same campaign.
        """
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        unsubscribe = self._campaign.subscribe(events.put)
        self._campaign.start()
        iterator = self._elections(events, Transitions(self._campaign), unsubscribe)
        _unsubscribed_when_dropped(iterator, unsubscribe)
        return iterator

    @staticmethod
    def _elections(
        events: queue.SimpleQueue[Event], transitions: Transitions, unsubscribe: Callable[[], None]
    ) -> Iterator[bool]:
        try:
            while True:
                transitions.resumed()
                try:
                    event = events.get(timeout=transitions.timeout())
                except queue.Empty:
                    yield from transitions.on_timeout()
                    continue
                yield from transitions.on_event(event)
                if event.kind is Kind.END:
                    return
        finally:
            transitions.resumed()
            unsubscribe()

    def resign(self) -> None:
        """Hand leadership over now: release the key, let a waiting candidate win first, keep campaigning.

        If no other candidate takes the key within ``min(1 s, ttl/3)``, this one campaigns again.
        Does nothing when not leading. Returns at once; the iterator yields False when it took effect.
        """
        self._campaign.resign()

    def transfer(self, to: str, timeout: float = 10.0) -> bool:
        """Hand leadership to the waiting candidate whose node is ``to``; True once it leads (a larger token).

        Only ``to`` may win the next term while the transfer lasts; the other candidates keep waiting. False if
        ``to`` did not take the key within ``timeout`` (it is not campaigning, or died): then this candidate
        campaigns again at once (it leads again with a new term unless another took the vacant key). This
        candidate's iterator yields False when the term ends, as for :meth:`resign`. Raises
        :class:`~swarmha.errors.ConfigurationError` when this candidate does not lead.
        """
        handoff = self._campaign.transfer(to, timeout, back=threading.get_ident())
        handoff.done.wait(timeout + self.ttl)  # the machine decides by the deadline; a store call may add to it
        return handoff.result

    def stop(self, timeout: float | None = None) -> None:
        """Stop campaigning, release the key if held, and wait (up to ``timeout``) for the background thread.

        Idempotent. The release is bounded by the store's request timeout, not by ``timeout``.
        """
        self._stop_now(timeout)


class Follower(FollowerBase, StopsOnExit):
    __doc__ = FollowerBase.__doc__

    def follow_election(self) -> Iterator[Leader | None]:
        """Yield the current leader first, then each change (None while no one leads); ends after stop().

        Following starts when this is called, not on the first ``next()``; an iterator advanced later yields
        the leader current by then first (changes it missed meanwhile are not replayed one by one).
        """
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        unsubscribe = self._follow.subscribe(events.put)
        self._follow.start()
        iterator = self._leaders(events, unsubscribe)
        _unsubscribed_when_dropped(iterator, unsubscribe)
        return iterator

    @staticmethod
    def _leaders(events: queue.SimpleQueue[Event], unsubscribe: Callable[[], None]) -> Iterator[Leader | None]:
        last: list[Leader | None] = []
        try:
            while True:
                batch = [events.get()]
                with contextlib.suppress(queue.Empty):
                    while True:
                        batch.append(events.get_nowait())
                leader, ended = latest(batch)
                if leader and last != leader:
                    last = leader
                    yield leader[0]
                if ended:
                    return
        finally:
            unsubscribe()

    def stop(self, timeout: float | None = None) -> None:
        """Stop following and wait (up to ``timeout``) for the background thread. Idempotent."""
        self._stop_now(timeout)
