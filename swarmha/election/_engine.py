"""One engine per Discovery: every candidate and follower of it runs on a timer thread and a few workers.

A state machine (:mod:`swarmha.election._worker`) is a generator that *yields* a :class:`Park` whenever it would wait:
for a watch to fire, for a time (a renewal, a backoff), both, or for the answer of a store request (``request``: a
call that sends it and returns its future). The engine resumes it with True when the watch fired (``Watch.wait(0)``
says the key changed), False on the deadline or :meth:`Task.interrupt`; an exception of the watch is thrown into the
generator. A request is sent by the engine once fewer than the Discovery's ``request_window`` (:data:`WINDOW` unless
the backend says otherwise) of its requests are in flight, and its answer resumes the generator with the future's
result, or throws the future's exception into it, from the future's done-callback (a
:class:`~swarmha.errors.DiscoveryUnavailable` if it has not answered by ``until``).

Why futures: a store request made inline blocks the worker that runs it, so a process had at most
:data:`WORKERS` requests in flight (10,000 keys x 3 processes took 22-28 s to elect, ~400 claims a second, where
the servers answer thousands). The Discovery's ``*_async`` calls (``get_async``, ``claim_async``, ...) send a
request on the Discovery's one connection and return at once (gRPC futures on etcd, kazoo's async calls on
ZooKeeper), so a worker only runs the short Python steps between requests and up to :data:`WINDOW` requests of
one process are in flight together, pipelined on one connection. A backend without pipelined requests answers
them with a future already done (the blocking call ran inline): exactly the cost of a blocking call. An
interrupt does not end a wait for an answer (the request is out: its answer decides what the step does next);
the generator sees its stop/resign flags at its next park. So a process campaigning for a thousand keys runs a
thousand generators on:

* one ``swarmha-engine-timer`` thread (a heap of deadlines) and
* at most :data:`WORKERS` ``swarmha-engine-worker`` threads that run the steps (a backend's blocking call blocks a
  worker for at most the store's request timeout; a pipelined one does not block it at all).

While any of its tasks lives, the engine keeps its timer thread and one worker (idle, they wake every
:data:`IDLE` seconds and make no store request): a standby that waited for minutes must not pay for two thread
starts between the leader's release and its own win (measured: the timer's start, right after ELECTED, kept
the consumer from the GIL for ~0.3 ms of a 2.7 ms ZooKeeper handover). When the last task has ended, both
exit after :data:`IDLE` seconds without work, so an engine whose Discovery is no longer used leaves no thread
behind; the other workers exit after :data:`IDLE` idle seconds in any case.

A watch that can call back when it fires (``Watch.notify``: every built-in backend) costs no thread while it
waits; for one that cannot (a third-party backend), the engine waits in ``Watch.wait`` on a
``swarmha-engine-wait`` thread of its own for as long as the wait lasts (the old, thread-per-waiter cost).

Guarantees: a task's generator runs on one thread at a time, and a wake-up (watch, deadline, interrupt) that
arrives while it runs is not lost: it is looked at before the task parks again.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future
from typing import Any

import attrs

from swarmha.discovery import Discovery, Watch
from swarmha.errors import DiscoveryUnavailable

__all__ = ["IDLE", "WINDOW", "WORKERS", "Engine", "Park", "Steps", "Task"]

log = logging.getLogger("swarmha.election")

#: Worker threads per engine at most: how many store calls of one Discovery's elections can be in flight at once.
WORKERS = 4
#: Seconds an idle worker or timer thread lingers before it ends.
IDLE = 2.0
#: Store requests of one engine in flight at most, by default (``Discovery.request_window``); more wait (in order) for
#: one to answer. Unbounded, 30,000 requests sent at once by 10,000 campaigns x 3 processes on 2 cores waited for
#: their answers beyond the request timeout (every one failed with DEADLINE_EXCEEDED, and was retried all together
#: again); 128 still let claims time out on a busy machine; with 32 a process sends as fast as its Python side can
#: (measured: etcd, 2,000 claims, one process: 1,310/s with 8, 1,560/s with 32, 2,070/s with 128 in flight). etcd
#: batches its claims and takes more (``EtcdDiscovery.request_window``).
WINDOW = Discovery.request_window


@attrs.frozen
class Park:
    """What a state machine waits for: ``watch`` firing, monotonic time ``until``, or both (None: not that); or
    the answer of a store request: ``request()`` sends it and returns its future, called by the engine when the
    Discovery has fewer than :data:`WINDOW` requests in flight (then ``until``, if given, bounds the wait for the
    answer: past it the step gets DiscoveryUnavailable; ``watch`` must be None)."""

    watch: Watch | None = None
    until: float | None = None
    request: Callable[[], Future[Any]] | None = None


#: A state machine: yields Parks, is sent True/False (a watch or time park) or a future's result.
Steps = Generator[Park, Any, None]


class _Throw:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Answer:
    """A future's result, to be sent into the generator."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _outcome(future: Future[Any]) -> _Answer | _Throw:
    error = future.exception()
    return _Answer(future.result()) if error is None else _Throw(error)


class _Mark(enum.Enum):
    START = "start"  # run the generator to its first park
    SEND = "send"  # the window has room: send the parked request
    POLL = "poll"  # the watch fired or the deadline passed: poll the watch and park again or resume
    PARKED = "parked"  # waiting for a wake-up


Resume = bool | _Throw | _Answer | _Mark


class Task:
    """One state machine on an engine. ``interrupt()`` ends the current (or next) park with False."""

    def __init__(self, engine: Engine, name: str, steps: Steps, interrupted: Callable[[], bool]) -> None:
        self.name = name
        self._engine = engine
        self._steps = steps
        self._interrupted = interrupted
        self.lock = threading.Lock()
        self.finished = False  # the generator returned (or raised)
        # Made by the first wait_finished() that must block: a task's end is rarely waited for, and at 10,000
        # tasks a process an Event's 6 objects each made every full garbage collection slower.
        self._finished_event: threading.Event | None = None
        self.thread: threading.Thread | None = None  # the thread running the generator now
        self._parked: Park | None = None
        self._last = Park()
        self._kicked = False  # the watch fired (or may have) since the task last polled it
        self._generation = 0  # of the current park: a timer for an older park does nothing
        self._notified: Watch | None = None  # the watch our notifier is registered on
        self.granted = False  # a slot of the engine's request window is ours (see Engine.sending)

    def start(self, *, urgent: bool = False) -> None:
        """Run the generator to its first park on a worker; ``urgent`` (a lease's keeper, whose first renewal
        is due within ttl/3) goes before every task waiting for a worker: behind 10,000 campaigns starting
        together, a keeper's start queued last came after its lease had expired (measured: etcd, 10,000 keys x
        3 processes, every shared lease lost within 6 s)."""
        self._engine.started(self)
        self._engine.submit(self, _Mark.START, urgent=urgent)

    def interrupt(self) -> None:
        """Wake the current park with False (the generator then sees its own stop/resign flags). A wait for a
        future is not cut short: its answer comes first, and the next park sees the flags."""
        with self.lock:
            parked = self._parked
            if parked is None or parked.request is not None:
                return
            self._parked = None
        self._engine.submit(self, False, urgent=True)
        if parked.watch is not None and self._notified is not parked.watch:
            parked.watch.interrupt()  # a waiter thread blocked in wait() (a watch without notify)

    def _on_watch(self) -> None:
        """The watch's notifier (any thread, must not block)."""
        with self.lock:
            self._kicked = True
            parked = self._parked
            if parked is None or parked.watch is None:
                return
            self._parked = None
        self._engine.submit(self, _Mark.POLL)

    def _on_deadline(self, generation: int) -> None:
        with self.lock:
            parked = self._parked
            if parked is None or generation != self._generation:
                return
            self._parked = None
        if parked.request is not None:
            error = DiscoveryUnavailable(f"{self.name}: a store request got no answer in time")
            self._engine.submit(self, _Throw(error), urgent=True)
            return
        self._engine.submit(self, _Mark.POLL if parked.watch is not None else False, urgent=True)

    def _on_answer(self, generation: int, future: Future[Any]) -> None:
        """The future's done-callback (any thread: a gRPC or kazoo callback thread; must not block)."""
        self._engine.answered()
        with self.lock:
            parked = self._parked
            if parked is None or generation != self._generation:
                return  # timed out already
            self._parked = None
        self._engine.submit(self, _outcome(future))

    def _on_waited(self, park: Park, value: Resume) -> None:
        """The end of a wait on a thread of its own (a watch without notify)."""
        with self.lock:
            if self._parked is not park:
                return  # interrupted: resumed already
            self._parked = None
        self._engine.submit(self, value)

    def run(self, value: Resume) -> None:
        """On a worker: resume the generator, and keep resuming it until it parks or ends."""
        self.thread = threading.current_thread()
        try:
            while True:
                if value is _Mark.POLL or value is _Mark.SEND:
                    value = self._park(self._last)
                    if value is _Mark.PARKED:
                        return
                    continue
                try:
                    if value is _Mark.START:
                        park = next(self._steps)
                    elif isinstance(value, _Throw):
                        park = self._steps.throw(value.error)
                    elif isinstance(value, _Answer):
                        park = self._steps.send(value.value)
                    else:
                        assert isinstance(value, bool)
                        park = self._steps.send(value)
                except StopIteration:
                    self._end()
                    return
                value = self._park(park)
                if value is _Mark.PARKED:
                    return
        finally:
            self.thread = None

    def wait_finished(self, timeout: float | None = None) -> bool:
        """Wait (up to ``timeout``) for the generator to end; True if it has."""
        with self.lock:
            if self.finished:
                return True
            if self._finished_event is None:
                self._finished_event = threading.Event()
            event = self._finished_event
        return event.wait(timeout)

    def _end(self) -> None:
        with self.lock:
            if self.finished:
                return
            self.finished = True
            event = self._finished_event
        if event is not None:
            event.set()
        self._engine.ended(self)

    def _park(self, park: Park) -> Resume:
        """Park on ``park``; or the value to resume with at once (fired, deadline passed, interrupted, error)."""
        self._last = park
        if park.request is not None:
            return self._send(park, park.request)
        if self._interrupted():
            return False
        watch = park.watch
        try:
            if watch is not None and self._notified is not watch:
                if not watch.notify(self._on_watch):
                    self._wait_on_thread(park)
                    return _Mark.PARKED
                self._notified = watch
            if watch is not None:
                with self.lock:
                    self._kicked = False
                if watch.wait(0):
                    return True
        except Exception as e:  # the watch broke: the generator handles it (it retries)
            return _Throw(e)
        if park.until is not None and park.until <= time.monotonic():
            return False
        recheck = watch.recheck_at() if watch is not None else None
        wake = park.until if recheck is None else recheck if park.until is None else min(park.until, recheck)
        with self.lock:
            if watch is not None and self._kicked:
                return _Mark.POLL  # fired since the poll: poll again
            self._generation += 1
            generation = self._generation
            self._parked = park
        if self._interrupted():  # stop()/resign() between the check above and parking
            self.interrupt()
            return _Mark.PARKED
        if wake is not None:
            self._engine.call_at(wake, lambda: self._on_deadline(generation))
        return _Mark.PARKED

    def _send(self, park: Park, request: Callable[[], Future[Any]]) -> Resume:
        """Send ``request`` if the window has room (else wait for it: the engine resumes us with SEND), then wait
        for its answer (no interrupt ends that wait); the answer at once when the future is done already."""
        if not self._engine.sending(self):
            return _Mark.PARKED
        try:
            future = request()
        except Exception as e:
            self._engine.answered()
            return _Throw(e)
        if future.done():
            self._engine.answered()
            return _outcome(future)
        with self.lock:
            self._generation += 1
            generation = self._generation
            self._parked = park
        if park.until is not None:
            self._engine.call_at(park.until, lambda: self._on_deadline(generation))
        future.add_done_callback(lambda f: self._on_answer(generation, f))
        return _Mark.PARKED

    def _wait_on_thread(self, park: Park) -> None:
        watch = park.watch
        assert watch is not None
        with self.lock:
            self._parked = park

        def wait() -> None:
            timeout = None if park.until is None else max(0.0, park.until - time.monotonic())
            value: Resume
            try:
                value = False if self._interrupted() else watch.wait(timeout)
            except Exception as e:
                value = _Throw(e)
            self._on_waited(park, value)

        threading.Thread(target=wait, name=f"swarmha-engine-wait[{self.name}]", daemon=True).start()


class Engine:
    """See the module docstring. ``Engine.of(discovery)`` is the one engine of that Discovery."""

    _engines: weakref.WeakKeyDictionary[Discovery, Engine] = weakref.WeakKeyDictionary()
    _engines_lock = threading.Lock()

    @classmethod
    def of(cls, discovery: Discovery) -> Engine:
        with cls._engines_lock:
            engine = cls._engines.get(discovery)
            if engine is None:
                engine = cls._engines[discovery] = cls(discovery.request_window)
            return engine

    def __init__(self, window: int = WINDOW) -> None:
        self._window = window
        self._mutex = threading.Lock()
        self._lock = threading.Condition(self._mutex)
        self._ready: deque[tuple[Task, Resume]] = deque()
        self._workers = 0
        self._idle = 0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._timer: threading.Thread | None = None
        self._timer_wake = threading.Condition(self._mutex)
        self._live = 0  # tasks started and not ended: while any, one worker and the timer stay
        self._in_flight = 0  # store requests sent and not answered
        self._senders: deque[Task] = deque()  # tasks waiting for room in the window

    def started(self, task: Task) -> None:
        """``task`` starts: the timer thread starts now (if need be), not on the path of the task's first deadline."""
        with self._lock:
            self._live += 1
            self._start_timer()

    def ended(self, task: Task) -> None:
        with self._lock:
            self._live -= 1

    def task(self, name: str, steps: Steps, interrupted: Callable[[], bool]) -> Task:
        return Task(self, name, steps, interrupted)

    # -- the request window ---------------------------------------------------------------------------------

    def sending(self, task: Task) -> bool:
        """True if ``task`` may send a request now (counted in flight until :meth:`answered`); else it waits in
        line and is resumed with SEND when a request answered."""
        with self._lock:
            if task.granted:  # resumed with SEND: the slot of an answered request passed to it
                task.granted = False
                return True
            if self._in_flight < self._window:
                self._in_flight += 1
                return True
            self._senders.append(task)
            return False

    def answered(self) -> None:
        """A request sent under :meth:`sending` answered: the next task in line may send (any thread)."""
        with self._lock:
            if not self._senders:
                self._in_flight -= 1
                return
            task = self._senders.popleft()  # the slot passes to it
            task.granted = True
            self._ready.append((task, _Mark.SEND))
            self._wake_worker()

    # -- workers -------------------------------------------------------------------------------------------

    def submit(self, task: Task, value: Resume, *, urgent: bool = False) -> None:
        """Run ``task`` with ``value`` on a worker; ``urgent`` (a deadline: renewals, demotions) goes first."""
        with self._lock:
            if urgent:
                self._ready.appendleft((task, value))
            else:
                self._ready.append((task, value))
            self._wake_worker()

    def _wake_worker(self) -> None:
        """A ready task waits: wake an idle worker or start one (caller holds the lock)."""
        if self._idle:
            self._lock.notify()
        elif self._workers < WORKERS:
            self._workers += 1
            threading.Thread(target=self._work, name="swarmha-engine-worker", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._ready:
                    self._idle += 1
                    woke = self._lock.wait(IDLE)
                    self._idle -= 1
                    if not woke and not self._ready and (self._live == 0 or self._workers > 1):
                        self._workers -= 1
                        return
                task, value = self._ready.popleft()
            try:
                task.run(value)
            except Exception:  # a bug in a state machine must not take the worker (and every other task) down
                log.exception("%s: the state machine failed", task.name)
                task._end()

    # -- timer ---------------------------------------------------------------------------------------------

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        with self._lock:
            heapq.heappush(self._heap, (when, next(self._seq), callback))
            if not self._start_timer() and self._heap[0][0] == when:
                self._timer_wake.notify()

    def _start_timer(self) -> bool:
        """Start the timer thread if it is not running (caller holds the lock); True if it was started."""
        if self._timer is not None:
            return False
        self._timer = threading.Thread(target=self._time, name="swarmha-engine-timer", daemon=True)
        self._timer.start()
        return True

    def _time(self) -> None:
        while True:
            with self._lock:
                while True:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        callback = heapq.heappop(self._heap)[2]
                        break
                    if not self._heap:
                        self._timer_wake.wait(IDLE)
                        if not self._heap and self._live == 0:
                            self._timer = None
                            return
                        continue
                    self._timer_wake.wait(self._heap[0][0] - now)
            try:
                callback()
            except Exception:
                log.exception("a timed callback of the election engine failed")
