"""A :class:`~swarmha.discovery.Watch` fed by a thread that serves many watches (etcd's watch stream, Consul's
hub): the state every such watch keeps and how ``wait``, ``notify``, ``interrupt``, ``fail`` and ``close``
treat it, written once.

The feeding thread sets ``_changed`` (with ``_seen`` the record it saw) or calls :meth:`FedWatch.fail`, under
``_lock``, then :meth:`FedWatch._kick`; ``wait`` reports a change once and re-arms, raises the error of a failed
watch, and returns False once interrupted or closed. A subclass says how to leave its feeder
(:meth:`FedWatch._unregister`) and how records arrive. :class:`Outage` is the feeding thread's side of a break:
when to try again and when to give its watches up.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable

from swarmha._backoff import Backoff
from swarmha.discovery._base import Record, Watch
from swarmha.errors import DiscoveryError

__all__ = ["BACKOFF", "FedWatch", "Outage"]

#: Pause between a feeding thread's tries after a break: 50 ms, doubling to 500 ms.
BACKOFF = Backoff(first=0.05, cap=0.5)


class Outage:
    """How long a thread that feeds many watches has failed to resume them, and its pause before the next try.

    After each failed try, :meth:`failed` says whether the failures have now lasted ``timeout`` (the caller then
    fails its watches, and the clock starts over); else :meth:`pause` waits the backoff, cut short by
    ``closed()``. :meth:`ok` after a try that worked.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.since: float | None = None  # when the failures began; None while it works
        self.attempt = 1  # of the next pause

    def ok(self, broke_at: float | None = None) -> None:
        """A try worked. ``broke_at``: it worked, then broke at that moment (the clock runs from there)."""
        self.since, self.attempt = broke_at, 1

    def failed(self, now: float) -> bool:
        """Count a failed try at ``now``; True once the failures have lasted ``timeout`` (the clock starts over)."""
        if self.since is None:
            self.since = now
        if now - self.since >= self.timeout:
            self.since = None
            return True
        return False

    def pause(self, cond: threading.Condition, closed: Callable[[], bool]) -> None:
        """Wait the backoff (:data:`BACKOFF`) on ``cond`` (taken here) unless ``closed()``; the next is longer."""
        with cond:
            cond.wait_for(closed, BACKOFF.delay(self.attempt))
        self.attempt += 1


class FedWatch(Watch):
    """See the module docstring. ``changed``: the watch starts fired (the key already differs from ``seen``)."""

    def __init__(self, seen: Record | None, changed: bool = False) -> None:
        self._lock = threading.Lock()
        # Made by the first blocking wait(): a watch the election's engine follows is only ever notified, and
        # at 10,000 watches a process the condition's 7 objects each made every full garbage collection slower.
        self._waiters: threading.Condition | None = None
        self._seen = seen
        self._changed = changed
        self._error: DiscoveryError | None = None
        self._closed = False
        self._interrupted = False  # interrupt(): every wait() returns False
        self._notify: Callable[[], None] | None = None

    def notify(self, callback: Callable[[], None]) -> bool:
        self._notify = callback
        return True

    def _kick(self) -> None:
        """Wake a blocked wait() and the notified caller. Caller holds ``_lock``."""
        if self._waiters is not None:
            self._waiters.notify_all()
        if self._notify is not None:
            self._notify()

    def wait(self, timeout: float | None = None) -> bool:
        def ready() -> bool:
            return self._closed or self._interrupted or self._changed or self._error is not None

        with self._lock:
            if not ready() and (timeout is None or timeout > 0):  # a poll (timeout 0) never needs the condition
                if self._waiters is None:
                    self._waiters = threading.Condition(self._lock)
                self._waiters.wait_for(ready, timeout)
            if self._closed or self._interrupted:
                return False
            if self._changed:
                self._changed = False
                self.known_absent = self._seen is None
                return True
            if self._error is not None:
                raise self._error
            return False

    def interrupt(self) -> None:
        """Wake a pending :meth:`wait` (and make later ones return False)."""
        with self._lock:
            self._interrupted = True
            self._kick()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._kick()
        self._unregister()

    @property
    def closed(self) -> bool:
        return self._closed

    def observe(self, record: Record | None) -> None:
        """(The feeder) the key is now ``record`` (read after a change): fires if that differs from what was seen."""
        with self._lock:
            if not self._closed and record != self._seen:
                self._seen = record
                self._changed = True
                self._kick()

    def fail(self, error: DiscoveryError) -> None:
        """(The feeder) the watch broke for good: every later :meth:`wait` raises ``error``."""
        with self._lock:
            self._error = error
            self._kick()

    @abc.abstractmethod
    def _unregister(self) -> None:
        """Leave the feeder (called once, by :meth:`close`, outside ``_lock``)."""
