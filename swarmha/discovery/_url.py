"""Discovery URLs, Swarm classic style: ``scheme://[user:password@]host[:port][,host[:port]...]/prefix[?k=v]``.

Examples: ``etcd://10.0.0.5:2379,10.0.0.6:2379/nodes``, ``zk://h1,h2/swarm``, ``consul://127.0.0.1:8500/nodes``,
``sqlite:///var/lib/swarmha.db`` (a file path, key prefix in ``?prefix=``), ``memory://name/prefix``.

:func:`parse_url` checks the shape only (scheme, hosts, ports); each backend checks what it needs on top.
Every error is an :class:`~swarmha.errors.InvalidDiscoveryURL` whose message names the URL and the bad part.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable

import attrs

from swarmha._duration import parse_duration
from swarmha.errors import ConfigurationError, InvalidDiscoveryURL

__all__ = ["DiscoveryURL", "parse_url"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
_HOST = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)$")


@attrs.frozen
class DiscoveryURL:
    """A parsed discovery URL.

    ``hosts`` keeps the order given (``port`` is None where the URL gave none: the backend picks its
    default), ``path`` is the URL path without the surrounding slashes (the key prefix for networked
    stores, the file path for sqlite), ``params`` holds the query string (last value wins).
    """

    raw: str = attrs.field(repr=lambda raw: repr(_redact(raw)))
    scheme: str
    hosts: tuple[tuple[str, int | None], ...]
    path: str
    params: dict[str, str] = attrs.field(factory=dict, hash=False)
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)

    def endpoints(self, default_port: int) -> list[tuple[str, int]]:
        """``hosts`` with ``default_port`` filled in; IPv6 brackets removed."""
        return [(h.strip("[]"), p if p is not None else default_port) for h, p in self.hosts]

    def __str__(self) -> str:
        return _redact(self.raw)

    def check_options(self, known: Iterable[str]) -> None:
        """Refuse query options not in ``known`` (a typo must not silently turn TLS or a bound off)."""
        allowed = set(known)
        unknown = set(self.params) - allowed
        if unknown:
            raise InvalidDiscoveryURL(
                f"{self.scheme} URL {str(self)!r} has unknown option(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(allowed)) or 'none'}"
            )

    def seconds(self, name: str, default: float) -> float:
        """Query option ``name`` as a positive, finite duration in seconds (``2.5``, ``500ms``, ``10s``, ``1m``:
        :func:`~swarmha._duration.parse_duration`); ``default`` when absent."""
        raw = self.params.get(name)
        if raw is None:
            return default
        try:
            return parse_duration(raw, name)
        except ConfigurationError:
            raise InvalidDiscoveryURL(
                f"{self.scheme} URL {str(self)!r}: {name} must be a duration > 0 (seconds, or e.g. 500ms, 10s), "
                f"not {raw!r}"
            ) from None


def _redact(raw: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", raw)


def parse_url(url: str) -> DiscoveryURL:
    """Parse a discovery URL. Raises :class:`InvalidDiscoveryURL` naming the bad part."""
    if not isinstance(url, str):
        raise InvalidDiscoveryURL(f"discovery URL must be a string, not {type(url).__name__}")
    shown = _redact(url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidDiscoveryURL(f"discovery URL {shown!r} has no scheme: expected scheme://host:port/prefix")
    if not _SCHEME.match(scheme):
        raise InvalidDiscoveryURL(f"discovery URL {shown!r} has an invalid scheme {scheme!r}")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, colon, pw = userinfo.partition(":")
        username = urllib.parse.unquote(user)
        password = urllib.parse.unquote(pw) if colon else None
    hosts: list[tuple[str, int | None]] = []
    if netloc:
        for part in netloc.split(","):
            hosts.append(_parse_host(part, shown))
    try:
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError as e:
        raise InvalidDiscoveryURL(f"discovery URL {shown!r} has a malformed query string {query!r}") from e
    return DiscoveryURL(
        raw=url,
        scheme=scheme.lower(),
        hosts=tuple(hosts),
        path=urllib.parse.unquote(path.strip("/")) if slash else "",
        params=params,
        username=username,
        password=password,
    )


def _parse_host(part: str, shown: str) -> tuple[str, int | None]:
    if not part:
        raise InvalidDiscoveryURL(f"discovery URL {shown!r} has an empty host in its host list")
    if part.startswith("["):
        end = part.find("]")
        host, port_s = (part[: end + 1], part[end + 2 :]) if end > 0 and part[end + 1 : end + 2] == ":" else (part, "")
    elif part.count(":") == 1:
        host, port_s = part.split(":")
    else:
        host, port_s = part, ""
    if not _HOST.match(host):
        raise InvalidDiscoveryURL(f"discovery URL {shown!r} has an invalid host {host!r}")
    if port_s == "" and not part.endswith(":"):
        return host, None
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise InvalidDiscoveryURL(f"discovery URL {shown!r} has an invalid port {port_s!r} for host {host!r}")
    return host, int(port_s)
