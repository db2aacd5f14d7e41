"""A :class:`~swarmha.discovery.Watch` fed by a thread that serves many watches (etcd's watch stream, Consul's
hub): the state every such watch keeps and how ``wait``, ``notify``, ``interrupt``, ``fail`` and ``close``
treat it, written once.

The feeding thread sets ``_changed`` (with ``_seen`` the record it saw) or calls :meth:`FedWatch.fail`, under
``_cond``, then :meth:`FedWatch._kick`; ``wait`` reports a change once and re-arms, raises the error of a failed
watch, and returns False once interrupted or closed. A subclass says how to leave its feeder
(:meth:`FedWatch._unregister`) and how records arrive.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable

from swarmha.discovery._base import Record, Watch
from swarmha.errors import DiscoveryError

__all__ = ["FedWatch"]


class FedWatch(Watch):
    """See the module docstring. ``changed``: the watch starts fired (the key already differs from ``seen``)."""

    def __init__(self, seen: Record | None, changed: bool = False) -> None:
        self._cond = threading.Condition()
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
        """Wake a blocked wait() and the notified caller. Caller holds ``_cond``."""
        self._cond.notify_all()
        if self._notify is not None:
            self._notify()

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:
            self._cond.wait_for(
                lambda: self._closed or self._interrupted or self._changed or self._error is not None, timeout
            )
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
        with self._cond:
            self._interrupted = True
            self._kick()

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._kick()
        self._unregister()

    @property
    def closed(self) -> bool:
        return self._closed

    def fail(self, error: DiscoveryError) -> None:
        """(The feeder) the watch broke for good: every later :meth:`wait` raises ``error``."""
        with self._cond:
            self._error = error
            self._kick()

    @abc.abstractmethod
    def _unregister(self) -> None:
        """Leave the feeder (called once, by :meth:`close`, outside ``_cond``)."""
