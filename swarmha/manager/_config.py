"""Parsing and checking what the command line gives: addresses (``HOST:PORT``, ``:4000``), filters.

Durations (``20s``) are :mod:`swarmha._duration`'s, shared with the discovery URLs.

Every check raises :class:`~swarmha.errors.ConfigurationError` with a message naming the bad value, before
anything is started (no socket bound, no session opened).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from swarmha.errors import ConfigurationError
from swarmha.manager.scheduler import FILTERS

__all__ = ["parse_address", "parse_filters", "parse_listen"]

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?$")


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
