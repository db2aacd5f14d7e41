"""Whether this manager reaches its discovery store, said once per change: one WARN when lost, one INFO when back.

:class:`StoreState` is fed by :meth:`Manager._watch_store` (one ``get`` of the leader key per probe period, bounded
by the store's own request timeout) and read by ``docker info`` (the ``Store`` line of ``SystemStatus``), the
``/health`` endpoint, the metrics and the reason given when leadership is lost. The election library's own
per-retry warnings are kept out of the log (see :func:`swarmha.manager.logs.setup_logging`): this is the one place
that tells an operator the store is gone.

Durations count from the **last successful request**, not from when the failure was noticed (a request to a hung
store fails only after the store's timeout): "unreachable since T" names the time of the last answer, and
"reachable again after X s" is the time from that answer to the next one.
"""

from __future__ import annotations

import datetime
import logging
import time

__all__ = ["StoreState"]

log = logging.getLogger("swarmha.manager")


def _error_text(error: BaseException) -> str:
    return str(error) or type(error).__name__


def _clock(wall: datetime.datetime) -> str:
    return wall.strftime("%Y-%m-%dT%H:%M:%S.") + f"{wall.microsecond // 1000:03d}Z"


class StoreState:
    """Reachable until a probe fails; every transition is logged exactly once."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.reachable = True
        self.error = ""
        #: When the last request answered (monotonic, and the wall clock for the log).
        self.last_success = time.monotonic()
        self._last_success_wall = datetime.datetime.now(datetime.UTC)
        #: When the request in flight was sent (None: none in flight).
        self.sent_at: float | None = None
        #: Completed outages (for the metrics).
        self.outages = 0
        self._due = 0.0  # when the prober should wake next (monotonic; 0: not sleeping)
        self._late = (0.0, 0.0)  # (seconds late, when) of the prober's last late wake-up

    def sending(self) -> None:
        """A probe is sent now."""
        self.sent_at = time.monotonic()

    def sleeping(self, period: float) -> None:
        """The prober sleeps ``period`` seconds now (:meth:`stalled` notices if it wakes late)."""
        self._due = time.monotonic() + period

    def woke(self) -> None:
        now = time.monotonic()
        if now - self._due > 0.5:
            self._late = (now - self._due, now)
        self._due = 0.0

    def stalled(self) -> float:
        """The longest the prober's event loop did not run lately, in seconds (a process stopped or starved)."""
        now = time.monotonic()
        overdue = now - self._due if self._due else 0.0  # asleep past its time: the loop has not run since
        late, when = self._late
        return max(0.0, overdue, late if now - when < 10.0 else 0.0)

    def failed(self, error: BaseException) -> None:
        """A store request failed: WARN once, the first time."""
        self.sent_at = None
        self.error = _error_text(error)
        if self.reachable:
            self.reachable = False
            log.warning(
                "Discovery store %s unreachable: %s (no answer since %s, %.1fs ago)",
                self.url,
                self.error,
                self.since(),
                self.quiet_for,
            )

    def succeeded(self) -> None:
        """A store request answered: INFO once, with how long the store was gone (since its last answer)."""
        self.sent_at = None
        took = time.monotonic() - self.last_success
        self.last_success = time.monotonic()
        self._last_success_wall = datetime.datetime.now(datetime.UTC)
        if not self.reachable:
            self.reachable, self.error = True, ""
            self.outages += 1
            log.info("Discovery store %s reachable again after %.1fs", self.url, took)

    @property
    def quiet_for(self) -> float:
        """Seconds since the store last answered."""
        return time.monotonic() - self.last_success

    @property
    def waiting_for(self) -> float:
        """Seconds the request in flight has waited for its answer (0: none in flight)."""
        return 0.0 if self.sent_at is None else time.monotonic() - self.sent_at

    @property
    def down_for(self) -> float:
        """Seconds since the store last answered, while it is unreachable (0 while reachable)."""
        return 0.0 if self.reachable else self.quiet_for

    def since(self) -> str:
        """The wall-clock time of the last answer (``2026-12-06T21:00:00.123Z``)."""
        return _clock(self._last_success_wall)

    def describe(self) -> str:
        """``reachable``, or ``unreachable for 12s (since 2026-...Z): <error>`` for ``docker info``."""
        if self.reachable:
            return "reachable"
        return f"unreachable for {self.down_for:.0f}s (since {self.since()}): {self.error}"
