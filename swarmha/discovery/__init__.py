"""The discovery layer: an abstract TTL-lease key store and its backends.

:func:`connect` turns a URL into a :class:`Discovery`; backends live one per module
(``memory``, ``sqlite``, ``etcd``, ``zookeeper``, ``consul``, ``postgres``, ``redis``) and depend only on the
abstract classes here.
"""

from swarmha.discovery._base import Discovery, Record, Session, Watch
from swarmha.discovery._registry import Factory, connect, register, schemes
from swarmha.discovery._url import DiscoveryURL, parse_url

__all__ = [
    "Discovery",
    "DiscoveryURL",
    "Factory",
    "Record",
    "Session",
    "Watch",
    "connect",
    "parse_url",
    "register",
    "schemes",
]
