"""Go-style durations, as Swarm's flags and Consul take them: ``20s``, ``1m30s``, ``500ms``, ``1.5h``, or seconds.

One parser for every place a duration is read (the manager's flags, every discovery URL's ``timeout=`` and
Consul's ``session_ttl_min=``), so that the same text means the same thing everywhere.
"""

from __future__ import annotations

import math
import re

from swarmha.errors import ConfigurationError

__all__ = ["format_duration", "go_duration", "parse_duration"]

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds in a Go-style duration (``20s``, ``1m30s``, ``500ms``, ``1.5h``); a bare number means seconds.

    Raises ConfigurationError, naming ``what``, for anything else or for a duration that is not a finite > 0.
    """
    s = str(text).strip()
    if not s:
        raise ConfigurationError(f"{what}: empty duration")
    try:
        seconds = float(s)
    except ValueError:
        pos = 0
        seconds = 0.0
        for m in _DURATION.finditer(s):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(s) or pos == 0:
            raise ConfigurationError(f"{what}: invalid duration {text!r} (expected e.g. 20s, 500ms, 1m30s)") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigurationError(f"{what}: duration must be positive, not {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """For people: ``20.0`` -> ``"20s"``, ``0.5`` -> ``"500ms"``."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def go_duration(seconds: float) -> str:
    """For the wire: a duration Go parses exactly (millisecond resolution, at least ``1ms``, rounded up)."""
    return f"{max(1, math.ceil(seconds * 1000))}ms"
