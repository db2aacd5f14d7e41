"""The asyncio face: :class:`Candidate` and :class:`Follower` with the same members and guarantees as the sync ones.

Both faces are built on :mod:`swarmha.election._face` (the state machine and every member that does not wait),
so they have the same members with the same meaning; here only the waiting members are ``async``:
``async for`` over ``run_for_election()`` / ``follow_election()``, ``await resign()``, ``await stop(timeout)``,
``async with``. The same state machine runs (a background thread per object); its events reach the event loop
through an :class:`_Inbox`, so the guarantees are identical: values alternate True/False, False comes no later
than the renew deadline even if the loop is busy elsewhere, and ``await stop()`` releases the key and joins the
thread without blocking the loop.

``run_for_election()`` and ``follow_election()`` are plain methods that return an async iterator: the campaign
(the following) starts when they are called, even outside a running loop, and events are buffered until the
iterator is advanced on whatever loop iterates it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import weakref
from collections.abc import AsyncIterator, Callable

from swarmha._context import AsyncStopsOnExit
from swarmha.election._face import CandidateBase, FollowerBase, latest
from swarmha.election._lease import Lease
from swarmha.election._values import Leader
from swarmha.election._worker import Event, Kind, Transitions

__all__ = ["Candidate", "Follower", "Lease"]


class _Inbox:
    """Events from the worker thread, buffered from subscription on, awaited by one consumer on any loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: collections.deque[Event] = collections.deque()
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    def put(self, event: Event) -> None:
        """Called on the worker thread (or the subscriber's, for the replayed present state)."""
        with self._lock:
            self._items.append(event)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            loop, future = waiter
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
                loop.call_soon_threadsafe(_wake, future)

    async def get(self, timeout: float | None) -> Event:
        """The next event; raises TimeoutError after ``timeout`` seconds (None: wait as long as it takes)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._items:
                return self._items.popleft()
            future: asyncio.Future[None] = loop.create_future()
            self._waiter = (loop, future)
        try:
            await asyncio.wait_for(future, timeout)
        finally:
            with self._lock:
                if self._waiter is not None and self._waiter[1] is future:
                    self._waiter = None
        with self._lock:
            return self._items.popleft()

    async def get_all(self) -> list[Event]:
        """Every event buffered now, waiting for the first one if there is none."""
        first = await self.get(None)
        with self._lock:
            rest = list(self._items)
            self._items.clear()
        return [first, *rest]


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _task_id() -> int:
    """Who consumes on the asyncio face: the current task (a drained end waits for a consumer, not a thread)."""
    return id(asyncio.current_task())


def _unsubscribed_when_dropped(iterator: AsyncIterator[object], unsubscribe: Callable[[], None]) -> None:
    """An iterator dropped before its first ``anext()`` never runs its ``finally``: unsubscribe on collection."""
    weakref.finalize(iterator, unsubscribe)


class Candidate(CandidateBase, AsyncStopsOnExit):
    """asyncio version of :class:`swarmha.Candidate`: same arguments, members, guarantees and failure modes."""

    def run_for_election(self) -> AsyncIterator[bool]:
        """Campaign (from this call on); ``async for`` yields True when elected, False when the term ends.

        As :meth:`swarmha.Candidate.run_for_election`: the campaign starts when this is called; the iterator ends
        after :meth:`stop`, with a last False if it was leading.
        """
        inbox = _Inbox()
        unsubscribe = self._campaign.subscribe(inbox.put)
        self._campaign.start()
        iterator = self._elections(inbox, Transitions(self._campaign), unsubscribe)
        _unsubscribed_when_dropped(iterator, unsubscribe)
        return iterator

    @staticmethod
    async def _elections(
        inbox: _Inbox, transitions: Transitions, unsubscribe: Callable[[], None]
    ) -> AsyncIterator[bool]:
        try:
            while True:
                transitions.resumed(_task_id())
                try:
                    event = await inbox.get(transitions.timeout())
                except TimeoutError:
                    for value in transitions.on_timeout():
                        yield value
                    continue
                for value in transitions.on_event(event):
                    yield value
                if event.kind is Kind.END:
                    return
        finally:
            transitions.resumed(_task_id())
            unsubscribe()

    async def resign(self) -> None:
        """Hand leadership over now and keep campaigning (see :meth:`swarmha.Candidate.resign`)."""
        self._campaign.resign()

    async def transfer(self, to: str, timeout: float = 10.0) -> bool:
        """Hand leadership to the waiting candidate ``to`` (see :meth:`swarmha.Candidate.transfer`)."""
        handoff = self._campaign.transfer(to, timeout, back=_task_id())
        await asyncio.to_thread(handoff.done.wait, timeout + self.ttl)
        return handoff.result

    async def stop(self, timeout: float | None = None) -> None:
        """Stop campaigning, release the key if held, wait (up to ``timeout``) for the thread. Idempotent.

        Runs on a worker thread of the loop's default executor, so the loop is not blocked meanwhile.
        """
        me = _task_id()  # the consumer's own task awaiting this in its loop counts as come back

        def stop() -> None:
            self._campaign.stop(timeout, back=me)
            self._restore_signals()

        await asyncio.to_thread(stop)


class Follower(FollowerBase, AsyncStopsOnExit):
    """asyncio version of :class:`swarmha.Follower`: same arguments, members and guarantees.

    :attr:`leader` answers as the sync one does: the last leader seen while following (no I/O), else one
    blocking read of the store; call :meth:`start` first to keep store reads off the event loop.
    """

    def follow_election(self) -> AsyncIterator[Leader | None]:
        """Yield the current leader first, then each change (None while vacant); end after :meth:`stop`.

        Following starts when this is called, not on the first ``anext()``; an iterator advanced later yields
        the leader current by then first.
        """
        inbox = _Inbox()
        unsubscribe = self._follow.subscribe(inbox.put)
        self._follow.start()
        iterator = self._leaders(inbox, unsubscribe)
        _unsubscribed_when_dropped(iterator, unsubscribe)
        return iterator

    @staticmethod
    async def _leaders(inbox: _Inbox, unsubscribe: Callable[[], None]) -> AsyncIterator[Leader | None]:
        last: list[Leader | None] = []
        try:
            while True:
                leader, ended = latest(await inbox.get_all())
                if leader and last != leader:
                    last = leader
                    yield leader[0]
                if ended:
                    return
        finally:
            unsubscribe()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop following and wait (up to ``timeout``) for the background thread, off the loop. Idempotent."""
        await asyncio.to_thread(self._stop_now, timeout)
