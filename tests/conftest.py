"""Fixtures shared by the whole suite: the parametrised ``store`` (one per backend, session-scoped servers)."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator

import pytest

from tests.support.stores import BACKENDS, StoreFixture

_MODULES = {"zk": "zookeeper"}


@pytest.fixture(scope="session")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, StoreFixture]]:
    """Lazily opened test stores by backend name; all closed at the end of the session."""
    opened: dict[str, StoreFixture] = {}

    class _Lazy(dict[str, StoreFixture]):
        def __missing__(self, name: str) -> StoreFixture:
            module = importlib.import_module(f"tests.support.stores.{_MODULES.get(name, name)}")
            opened[name] = self[name] = module.open_store(tmp_path_factory)
            return opened[name]

    yield _Lazy()
    for fixture in opened.values():
        fixture.close()


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, stores: dict[str, StoreFixture]) -> Iterator[StoreFixture]:
    """One test store per backend; a stopped store is started again after the test."""
    fixture = stores[request.param]
    yield fixture
    if fixture.can_stop:
        fixture.start()


# Threads that must not outlive a test: a lease's keeper (joined by Lease.close), an etcd Discovery's watch stream
# and a Consul Discovery's watch hub (both joined by close). Candidates and followers have no thread of their own:
# the engine's timer and workers end 2 s after the last work, so they are not listed.
_TEST_SCOPED_THREADS = (
    "swarmha-lease[",
    "swarmha-etcd-watch",
    "swarmha-consul-watch",
    "swarmha-postgres-watch",
    "swarmha-redis-watch",
)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a lease keeper or a watch stream thread running after it ended."""
    yield
    leaked = [t.name for t in threading.enumerate() if t.name.startswith(_TEST_SCOPED_THREADS) and t.is_alive()]
    assert not leaked, f"threads left running: {leaked}"
