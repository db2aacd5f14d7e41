"""Parsing and checking what the command line gives: durations (``20s``), addresses (``HOST:PORT``, ``:4000``).

Every check raises :class:`~swarmha.errors.ConfigurationError` with a message naming the bad value, before
anything is started (no socket bound, no session opened).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from swarmha.errors import ConfigurationError
from swarmha.manager.scheduler import FILTERS

__all__ = ["format_duration", "parse_address", "parse_duration", "parse_filters", "parse_listen"]

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?$")


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds in a Go-style duration (``20s``, ``1m30s``, ``500ms``, ``1.5h``); a bare number means seconds.

    Raises ConfigurationError for anything else, or a duration that is not > 0.
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
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise ConfigurationError(f"{what}: duration must be positive, not {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``20.0`` -> ``"20s"``, ``0.5`` -> ``"500ms"``."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


def _check_host(host: str, text: str, what: str) -> str:
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
        return bare
    except ValueError:
        pass
    if not _HOSTNAME.match(bare):
        raise ConfigurationError(f"{what}: invalid host {host!r} in {text!r}")
    return bare


def _split(text: str, what: str, *, allow_empty_host: bool) -> tuple[str, int]:
    s = str(text).strip()
    for scheme in ("tcp://", "http://", "https://"):
        if s.startswith(scheme):
            s = s[len(scheme) :]
    host, sep, port_s = s.rpartition(":")
    if not sep:
        raise ConfigurationError(f"{what}: {text!r} is not HOST:PORT (the port is missing)")
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ConfigurationError(f"{what}: invalid port {port_s!r} in {text!r} (1-65535)")
    if not host:
        if not allow_empty_host:
            raise ConfigurationError(f"{what}: {text!r} has no host; expected HOST:PORT, e.g. 192.168.42.200:4000")
        return "", int(port_s)
    return _check_host(host, text, what), int(port_s)


def parse_address(text: str, what: str = "--advertise") -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 in brackets) -> (host, port). Raises ConfigurationError naming the bad part."""
    return _split(text, what, allow_empty_host=False)


def parse_listen(text: str, what: str = "-H") -> tuple[str, int]:
    """A listen address as Swarm took it: ``:4000``, ``0.0.0.0:4000``, ``tcp://127.0.0.1:4000``.

    An empty host means every interface (returned as ``""``).
    """
    return _split(text, what, allow_empty_host=True)


def parse_filters(names: Iterable[str] | None, what: str = "--filter") -> tuple[str, ...] | None:
    """The ``--filter`` names given (repeatable; ``a,b`` also accepted), checked; None when none was given
    (Swarm's default set). An unknown name is refused with the list of the known ones."""
    if not names:
        return None
    out: list[str] = []
    for name in (n.strip() for text in names for n in str(text).split(",")):
        if name not in FILTERS:
            raise ConfigurationError(f"{what} {name!r}: filter not supported (expected one of {', '.join(FILTERS)})")
        if name not in out:
            out.append(name)
    return tuple(out)
