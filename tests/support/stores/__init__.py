"""Test stores: one module per backend, each exposing ``open_store(tmp_path_factory) -> StoreFixture``.

A StoreFixture serves discovery URLs for one backend for the whole test session (servers are started once
per session on free loopback ports and stopped at the end). Every ``url()`` call returns a fresh key
prefix, so tests never see each other's keys. ``stop()``/``start()`` make the store unreachable and bring it
back with its data (for outage tests); backends that cannot do that set ``can_stop = False``.

The parametrised contract suite runs over ``BACKENDS``: add a backend's name here when its module exists.
"""

from __future__ import annotations

import itertools
from typing import Protocol

BACKENDS = ["memory", "sqlite", "etcd", "zk", "consul", "postgres", "pgbouncer", "redis"]

_counter = itertools.count(1)


def fresh_prefix(name: str) -> str:
    """A key prefix no other test in this session uses."""
    return f"t{next(_counter)}-{name}"


class StoreFixture(Protocol):
    name: str
    can_stop: bool

    def url(self) -> str:
        """A discovery URL with a fresh key prefix."""
        ...

    def stop(self) -> None:
        """Make the store unreachable (kill/pause the server); data must survive a later start()."""
        ...

    def start(self) -> None:
        """Bring the store back after stop(), on the same address."""
        ...

    def close(self) -> None:
        """Stop servers and remove files (end of session)."""
        ...
