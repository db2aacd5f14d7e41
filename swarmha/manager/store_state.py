"""Whether this manager reaches its discovery store, said once per change: one WARN when lost, one INFO when back.

:class:`StoreState` is fed by :meth:`Manager._watch_store` (one ``get`` of the leader key per probe period, bounded
by the store's own request timeout) and read by ``docker info`` (the ``Store`` line of ``SystemStatus``), the
``/health`` endpoint and the metrics. The election library's own per-retry warnings are kept out of the log
(see :func:`swarmha.manager.cli.setup_logging`): this is the one place that tells an operator the store is gone.
"""

from __future__ import annotations

import datetime
import logging
import time

__all__ = ["StoreState"]

log = logging.getLogger("swarmha.manager")


def _error_text(error: BaseException) -> str:
    return str(error) or type(error).__name__


class StoreState:
    """Reachable until a probe fails; every transition is logged exactly once."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.reachable = True
        self.error = ""
        self._since = time.monotonic()
        self._since_wall = datetime.datetime.now(datetime.UTC)
        #: Completed outages (for the metrics).
        self.outages = 0

    def failed(self, error: BaseException) -> None:
        """A store request failed: WARN once, the first time."""
        self.error = _error_text(error)
        if self.reachable:
            self.reachable = False
            self._since = time.monotonic()
            self._since_wall = datetime.datetime.now(datetime.UTC)
            log.warning("Discovery store %s unreachable: %s", self.url, self.error)

    def succeeded(self) -> None:
        """A store request answered: INFO once, with how long the store was gone."""
        if not self.reachable:
            took = time.monotonic() - self._since
            self.reachable, self.error = True, ""
            self._since = time.monotonic()
            self.outages += 1
            log.info("Discovery store %s reachable again after %.1fs", self.url, took)

    @property
    def down_for(self) -> float:
        """Seconds since the store was lost (0 while reachable)."""
        return 0.0 if self.reachable else time.monotonic() - self._since

    def describe(self) -> str:
        """``reachable``, or ``unreachable for 12s (since 2026-...Z): <error>`` for ``docker info``."""
        if self.reachable:
            return "reachable"
        since = self._since_wall.strftime("%Y-%m-%dT%H:%M:%SZ")
        return f"unreachable for {self.down_for:.0f}s (since {since}): {self.error}"
