"""Which backend serves which URL scheme, and :func:`connect`.

Built-in backends are imported only when their scheme is used, so a missing optional client library
(``pip install swarmha[etcd]``) matters only to its own scheme. Third-party packages add schemes with an
entry point in the ``swarmha.discovery`` group whose object is a factory ``(DiscoveryURL) -> Discovery``,
or at run time with :func:`register`.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from importlib import metadata

from swarmha.discovery._base import Discovery
from swarmha.discovery._url import DiscoveryURL, parse_url
from swarmha.errors import BackendNotInstalled, UnknownBackend

__all__ = ["Factory", "connect", "register", "schemes"]

Factory = Callable[[DiscoveryURL], Discovery]

# scheme -> "module:attribute" of a factory, or the factory itself
_BUILTIN: dict[str, str] = {
    "memory": "swarmha.discovery.memory:MemoryDiscovery",
    "sqlite": "swarmha.discovery.sqlite:SqliteDiscovery",
    "etcd": "swarmha.discovery.etcd:EtcdDiscovery",
    "zk": "swarmha.discovery.zookeeper:ZooKeeperDiscovery",
    "consul": "swarmha.discovery.consul:ConsulDiscovery",
    "postgresql": "swarmha.discovery.postgres:PostgresDiscovery",
    "postgres": "swarmha.discovery.postgres:PostgresDiscovery",
    "redis": "swarmha.discovery.redis:RedisDiscovery",
    "rediss": "swarmha.discovery.redis:RedisDiscovery",
    "redis+sentinel": "swarmha.discovery.redis:RedisDiscovery",
}
_EXTRA = {
    "etcd": "etcd",
    "zk": "zookeeper",
    "consul": "consul",
    "postgresql": "postgres",
    "postgres": "postgres",
    "rediss": "redis",
    "redis+sentinel": "redis",
}
_registered: dict[str, Factory | str] = {}
_lock = threading.Lock()
_entry_points_loaded = False


def register(scheme: str, factory: Factory) -> None:
    """Serve ``scheme://`` URLs with ``factory``. A later registration of the same scheme replaces it."""
    with _lock:
        _registered[scheme.lower()] = factory


def schemes() -> list[str]:
    """Every scheme :func:`connect` knows now (built-in, registered, and from entry points)."""
    _load_entry_points()
    return sorted(set(_BUILTIN) | set(_registered))


def _load_entry_points() -> None:
    global _entry_points_loaded
    with _lock:
        if _entry_points_loaded:
            return
        _entry_points_loaded = True
        for ep in metadata.entry_points(group="swarmha.discovery"):
            _registered.setdefault(ep.name.lower(), ep.value)


def _resolve(target: Factory | str, scheme: str) -> Factory:
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        if module.startswith("swarmha.") and e.name and not e.name.startswith("swarmha"):
            extra = _EXTRA.get(scheme, scheme)
            raise BackendNotInstalled(
                f"the {scheme}:// backend needs {e.name!r}: pip install 'swarmha[{extra}]'"
            ) from e
        raise
    factory: Factory = getattr(mod, attr)
    return factory


def connect(url: str) -> Discovery:
    """Open the discovery store a URL names, e.g. ``connect("etcd://10.0.0.5:2379/nodes")``.

    Raises :class:`~swarmha.errors.InvalidDiscoveryURL` (a :class:`ValueError`) for a malformed URL or an
    unknown scheme, :class:`~swarmha.errors.BackendNotInstalled` when the backend's extra is missing.
    Connecting does not wait for the store to answer: an unreachable store shows up as
    :class:`~swarmha.errors.DiscoveryUnavailable` on the first operation.
    """
    parsed = parse_url(url)
    _load_entry_points()
    with _lock:
        target = _registered.get(parsed.scheme) or _BUILTIN.get(parsed.scheme)
    if target is None:
        raise UnknownBackend(
            f"discovery URL {str(parsed)!r} has an unknown scheme {parsed.scheme!r}; known: {', '.join(schemes())}"
        )
    return _resolve(target, parsed.scheme)(parsed)
