"""One thread per Discovery that runs timed callbacks: session deadlines and tickets' turn checks.

A heap of ``(when, sequence, callback)``; :meth:`Timer.call_at` returns a handle whose ``cancel()`` drops the
call. The thread wakes at the earliest call or after :data:`NAP` s, whichever comes first (an idle Discovery:
two wake-ups a second, no store request). Callbacks run one after the other on the ``swarmha-zk-timer`` thread
and may make bounded store requests; an exception in one is logged and does not stop the others.
:meth:`Timer.stop` ends and joins the thread.

Why a thread of its own and not the election engine's timer: the discovery layer may not use the election's
runtime (dependencies point election → discovery), and these callbacks make store requests, which the engine's
timer never runs (its callbacks only hand work to a worker). The thread stays off the handover's path: measured
(``python -m benchmarks runtime-threads --rounds 30 --idle 5 --parts zk``, 2026-12-07, 2 cores shared with other
jobs, load ~90), 30 handovers between two Discoveries ran 0 timed callbacks (a ticket's create claims its turn
before the turn check is due); an idle process with a leader and a follower sees 2.1 wake-ups a second of this
thread (:data:`NAP`) and 0.20 % CPU in all. Folding it into one per-Discovery runtime belongs with a runtime that
lives in the discovery layer.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable

__all__ = ["Timer"]

log = logging.getLogger("swarmha.discovery.zookeeper")

#: Seconds the thread waits at most before it looks at its heap again by itself (see :meth:`Timer.call_at`).
NAP = 0.5


def _nothing() -> None:
    pass


class Call:
    """A timed call. A cancelled one stays in the heap until its time comes (or it reaches the top), so
    ``cancel`` drops its callback at once: a pipelined operation's timeout (:mod:`._async`) would otherwise keep
    the operation, its generator and its future alive for the whole timeout after it was answered."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.callback = _nothing


class Timer:
    def __init__(self, name: str) -> None:
        self._name = name
        self._heap: list[tuple[float, int, Call]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._wake_at = -math.inf  # when the waiting thread wakes by itself; -inf while it is not waiting

    def start(self) -> None:
        """Start the thread now (idempotent), so that no later ``call_at`` pays for a thread start: the first
        call often comes on a handover's path (a ticket's turn check, the claim's deadline)."""
        with self._cond:
            self._start()

    def _start(self) -> None:
        if self._thread is None and not self._stopped:
            self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
            self._thread.start()

    def call_at(self, when: float, callback: Callable[[], None]) -> Call:
        """Run ``callback`` on the timer thread at monotonic time ``when`` (at once if past).

        The thread is woken only when the call is due before the thread wakes anyway (it naps at most
        :data:`NAP` s): a wake-up it does not need would take the GIL from the thread busy with the event that
        made the call. A ticket's turn check (1 s ahead) and a claim's deadline (``ttl`` ahead), both made on a
        handover's path, therefore wake nothing.
        """
        call = Call(when, callback)
        with self._cond:
            if self._stopped:
                call.cancelled = True
                return call
            heapq.heappush(self._heap, (when, next(self._seq), call))
            self._start()
            if when < self._wake_at:
                self._cond.notify()
        return call

    def call_soon(self, callback: Callable[[], None]) -> Call:
        return self.call_at(time.monotonic(), callback)

    def _main(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopped:
                        return
                    while self._heap and self._heap[0][2].cancelled:
                        heapq.heappop(self._heap)
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        call = heapq.heappop(self._heap)[2]
                        break
                    self._wake_at = min(now + NAP, self._heap[0][0]) if self._heap else now + NAP
                    self._cond.wait(self._wake_at - now)
                    self._wake_at = -math.inf  # busy: call_at need not wake it, it reads the heap before waiting
            try:
                call.callback()
            except Exception:
                log.exception("%s: a timed callback failed", self._name)

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
