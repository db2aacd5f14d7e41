"""The manager's log: logrus-style lines (``INFO[0003] message``) on stderr, each said once.

Levels follow Swarm's ``-l/--log-level`` (debug, info, warn, error, fatal, panic; default info) and ``--debug``
(debug, unless ``--log-level`` says otherwise). What the manager says is its own: the election library's
per-retry lines and third-party client logs (kazoo, grpc, httpx, asyncio) are shown from ERROR up only, so a
store outage is one WARN and one INFO from :mod:`swarmha.manager.store_state`, not a line per retry. ``--debug``
shows everything (that is what it is for).
"""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["LOG_LEVELS", "THIRD_PARTY", "setup_logging"]

#: Swarm's (logrus') level names.
LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}

#: Loggers kept at ERROR and above unless --debug: the election library's retries and the clients under the stores.
THIRD_PARTY = ("swarmha.election", "swarmha.discovery", "kazoo", "grpc", "httpx", "httpcore", "asyncio", "urllib3")


class _LogrusFormatter(logging.Formatter):
    """``INFO[0003] message``, as Swarm's logrus printed it (seconds since start)."""

    def __init__(self) -> None:
        super().__init__()
        self._start = time.monotonic()

    def format(self, record: logging.LogRecord) -> str:
        level = {"WARNING": "WARN", "CRITICAL": "FATA"}.get(record.levelname, record.levelname)[:4]
        text = f"{level}[{int(time.monotonic() - self._start):04d}] {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(level: str | None = None, debug: bool = False) -> None:
    """One stderr handler on the root logger (replacing any), at ``level`` (a :data:`LOG_LEVELS` name)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogrusFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    chosen = LOG_LEVELS[level] if level else (logging.DEBUG if debug else logging.INFO)
    root.setLevel(chosen)
    logging.getLogger("swarmha").setLevel(chosen)
    for name in THIRD_PARTY:
        logger = logging.getLogger(name)
        logger.setLevel(chosen if debug else max(chosen, logging.ERROR))
        logger.propagate = True
