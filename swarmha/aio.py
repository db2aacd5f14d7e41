"""The asyncio face: :class:`Candidate` and :class:`Follower` with the same names and guarantees as the sync ones.

They run the same state machine (a background thread per object, see :mod:`swarmha.election._machinery`)
and bridge its events into the event loop, so the guarantees are identical: ``async for`` yields the same
alternating True/False (False no later than the renew deadline even if the loop is busy elsewhere),
``await stop()`` releases the key and joins the thread without blocking the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from swarmha._context import AsyncStopsOnExit
from swarmha.discovery import Discovery
from swarmha.election import _sync
from swarmha.election._machinery import Event, Kind, Transitions
from swarmha.election._values import Leader, Term

__all__ = ["Candidate", "Follower"]


def _bridge(loop: asyncio.AbstractEventLoop, q: asyncio.Queue[Event]) -> Callable[[Event], None]:
    """A subscriber that hands events from the worker thread to ``q`` on ``loop``."""

    def deliver(event: Event) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            loop.call_soon_threadsafe(q.put_nowait, event)

    return deliver


class Candidate(AsyncStopsOnExit):
    """asyncio version of :class:`swarmha.Candidate` (same arguments, guarantees and failure modes)."""

    def __init__(
        self,
        discovery: Discovery,
        key: str,
        node: str,
        ttl: float = 10.0,
        renew_deadline: float | None = None,
    ) -> None:
        self._sync = _sync.Candidate(discovery, key, node, ttl, renew_deadline)

    @property
    def is_leader(self) -> bool:
        """True only while the lease is valid by the local monotonic clock."""
        return self._sync.is_leader

    @property
    def term(self) -> Term | None:
        """The current term (with its fencing token) while leader, else None."""
        return self._sync.term

    async def run_for_election(self) -> AsyncIterator[bool]:
        """Campaign; yield True when leadership is gained, False when lost; end after :meth:`stop`."""
        campaign = self._sync._campaign
        events: asyncio.Queue[Event] = asyncio.Queue()
        transitions = Transitions(campaign)
        unsubscribe = campaign.subscribe(_bridge(asyncio.get_running_loop(), events))
        campaign.start()
        try:
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), transitions.timeout())
                except TimeoutError:
                    for value in transitions.on_timeout():
                        yield value
                    continue
                for value in transitions.on_event(event):
                    yield value
                if event.kind is Kind.END:
                    return
        finally:
            unsubscribe()

    async def resign(self) -> None:
        """Hand leadership over now and keep campaigning (see :meth:`swarmha.Candidate.resign`)."""
        self._sync.resign()

    async def stop(self) -> None:
        """Stop campaigning, release the key if held, wait for the background thread. Idempotent."""
        await asyncio.to_thread(self._sync.stop)


class Follower(AsyncStopsOnExit):
    """asyncio version of :class:`swarmha.Follower`."""

    def __init__(self, discovery: Discovery, key: str) -> None:
        self._sync = _sync.Follower(discovery, key)

    @property
    def leader(self) -> Leader | None:
        """The last leader seen while following (None: vacant or not read yet)."""
        return self._sync._follow.leader

    async def follow_election(self) -> AsyncIterator[Leader | None]:
        """Yield the current leader first, then each change (None while vacant); end after :meth:`stop`."""
        follow = self._sync._follow
        events: asyncio.Queue[Event] = asyncio.Queue()
        unsubscribe = follow.subscribe(_bridge(asyncio.get_running_loop(), events))
        follow.start()
        last: list[Leader | None] = []
        try:
            while True:
                event = await events.get()
                if event.kind is Kind.END:
                    return
                if last != [event.leader]:
                    last = [event.leader]
                    yield event.leader
        finally:
            unsubscribe()

    async def stop(self) -> None:
        """Stop following and wait for the background thread. Idempotent."""
        await asyncio.to_thread(self._sync.stop)
