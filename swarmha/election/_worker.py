"""What the election's state machines share: a worker on the Discovery's engine, its events, and the follower.

A :class:`_Worker` is a state machine run by the engine of its Discovery (:mod:`swarmha.election._engine`: one
timer thread and a few workers however many candidates): it repeats one step, retries a failed step with
backoff (store errors never end it) and emits :class:`Event` values to its subscribers. :class:`Follow` is the
follower's machine: it watches the key and publishes ``Leader | None`` on change; the candidate's is
:class:`swarmha.election._campaign.Campaign`.

Subscribers get events on an engine thread; :class:`Transitions` turns a candidate's events into the
``True``/``False`` stream the public iterators yield, and also ends a term at its deadline on the consumer's
side, so a worker blocked in a slow store call cannot make a consumer believe it still leads.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future
from typing import Protocol, TypeVar

import attrs

from swarmha.discovery import Discovery, Watch
from swarmha.discovery._base import check_key
from swarmha.election._engine import Engine, Park, Steps, Task
from swarmha.election._retry import backoff
from swarmha.election._values import Leader, Term
from swarmha.errors import DiscoveryError

__all__ = ["MAX_BACKOFF", "Event", "Follow", "Kind", "Observation", "Steps", "Transitions", "observers"]

log = logging.getLogger("swarmha.election")

#: Longest pause between retries of a failing store; keeps recovery after an outage well under a second.
MAX_BACKOFF = 1.0

_T = TypeVar("_T")


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
    reason: str | None = None  # LOST: why the term ended


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
    reason: str | None = None  # "lost": why the term ended (a graceful release, or what the store did)


#: Process-wide observers of every Campaign and Follow, called on an engine thread; see :mod:`swarmha.observe`.
observers: list[Callable[[Observation], None]] = []


def _observe(
    worker: _Worker,
    kind: str,
    term: Term | None = None,
    leader: Leader | None = None,
    error: BaseException | None = None,
    reason: str | None = None,
) -> None:
    source = worker.name.removeprefix("swarmha-")
    seen = Observation(source, worker.key, getattr(worker, "node", None), kind, term, leader, error, reason)
    for observer in list(observers):
        try:
            observer(seen)
        except Exception:
            log.exception("election observer %r failed", observer)


class _Worker:
    """A state machine on its Discovery's engine that repeats one step, retrying store errors with backoff."""

    name = "swarmha-worker"

    def __init__(self, discovery: Discovery, key: str, backoff_cap: float) -> None:
        self._d = discovery
        self.key = check_key(key)
        self._lock = threading.RLock()
        self._stopping = False
        self._task: Task | None = None
        self._subscribers: list[Subscriber] = []
        self._backoff_cap = backoff_cap
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
                self._close_out()
        self._interrupt()
        if task is not None and task.thread is not threading.current_thread():
            task.wait_finished(timeout)

    @property
    def running(self) -> bool:
        with self._lock:
            return self._task is not None and not self._task.finished

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

    def _close_out(self) -> None:
        """Runs once when ended, under the lock: emits END."""
        self._emit(Event(Kind.END))

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
            _observe(self, event.kind.value, term=event.term, leader=event.leader, reason=event.reason)

    def _interrupt(self) -> None:
        with self._lock:
            task = self._task
        if task is not None:
            task.interrupt()

    def _interrupted(self) -> bool:
        """True when stop (or a subclass's request) wants the current wait to end. Caller holds the lock."""
        return self._stopping

    def _more(self) -> bool:
        """True while the machine has steps to run (until stop, unless a subclass has more to finish)."""
        return not self._stopping

    def _interrupted_now(self) -> bool:
        with self._lock:
            return self._interrupted()

    def _wait_on(self, watch: Watch, timeout: float | None) -> Generator[Park, bool, bool]:
        """``watch.wait(timeout)`` on the engine, but False at once if interrupted (also before it starts)."""
        if self._interrupted_now():
            return False
        until = None if timeout is None else time.monotonic() + timeout
        return (yield Park(watch, until))

    def _await(self, request: Callable[[], Future[_T]]) -> Generator[Park, _T, _T]:
        """The answer of ``request()`` (a ``Discovery.*_async`` call, sent when the engine's window has room), or
        its error raised here, without blocking a worker while it is in flight (:mod:`swarmha.election._engine`)."""
        return (yield Park(request=request))

    def _main(self) -> Steps:
        try:
            while self._more():
                attempt = 0
                while True:
                    try:
                        if self._more():
                            yield from self._step()
                        break
                    except Exception as error:
                        attempt += 1
                        self._failed(error, attempt)
                        yield Park(None, time.monotonic() + backoff(attempt, self._backoff_cap))
        finally:
            try:
                self._finish()
            finally:
                with self._lock:
                    self._ended = True
                    self._close_out()

    def _failed(self, error: BaseException, attempt: int) -> None:
        if isinstance(error, DiscoveryError):
            log.warning("%s: store error (attempt %d): %s", self.key, attempt, error)
        else:
            log.error("%s: unexpected error (attempt %d)", self.key, attempt, exc_info=error)
        if observers:
            _observe(self, "store_error", error=error)
        self._on_error(error)


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
        record = yield from self._await(lambda: self._d.get_async(self.key))
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


class Terms(Protocol):
    """What :class:`Transitions` reads of a campaign, and tells it."""

    @property
    def term(self) -> Term | None: ...

    @property
    def deadline(self) -> float: ...

    def attach(self, transitions: Transitions) -> None: ...

    def came_back(self, consumer: Transitions | int) -> None: ...


class Transitions:
    """Turns a candidate's events into the bool stream ``run_for_election`` yields.

    Guarantees: values alternate (never True twice in a row), never True for a term that already ended,
    and False is produced no later than the term's renew deadline even if the worker is stuck.
    """

    def __init__(self, campaign: Terms) -> None:
        self._campaign = campaign
        self._term: Term | None = None
        self._owes = False  # a False was handed out and the consumer has not come back for more yet
        #: who last asked for a value: the consumer's thread (``threading.get_ident()``), or its asyncio task's id
        self.thread: int | None = None
        campaign.attach(self)

    @property
    def leading(self) -> bool:
        return self._term is not None

    @property
    def term(self) -> Term | None:
        """The term this consumer was told it leads (its last True), or None."""
        return self._term

    def resumed(self, consumer: int | None = None) -> None:
        """The consumer (``consumer``: its identity, default the calling thread's) asks for its next value, or
        left the loop: a drained release may go ahead."""
        self.thread = threading.get_ident() if consumer is None else consumer
        if self._owes:
            self._owes = False
            self._campaign.came_back(self)

    def _false(self) -> list[bool]:
        self._term = None
        self._owes = True
        return [False]

    def timeout(self) -> float | None:
        """How long the consumer may block before it must call :meth:`on_timeout`."""
        if self._term is None:
            return None
        return max(0.0, self._campaign.deadline - time.monotonic()) + 0.001

    def on_timeout(self) -> list[bool]:
        if self._term is not None and self._campaign.term != self._term:
            return self._false()
        return []

    def on_event(self, event: Event) -> list[bool]:
        if event.kind is Kind.ELECTED and self._term is None and self._campaign.term == event.term:
            self._term = event.term
            return [True]
        ends_term = event.kind is Kind.END or (event.kind is Kind.LOST and event.term == self._term)
        if ends_term and self._term is not None:
            return self._false()
        return []
