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


# Threads that must not outlive a test. Backends' connection-scoped threads (the sqlite change poller, a
# shared ZooKeeper client's) live as long as the Discovery the test closes, so they are checked by name too
# except for those owned by session-scoped fixtures.
_TEST_SCOPED_THREADS = ("swarmha-candidate", "swarmha-follower", "swarmha-zk-session", "swarmha-etcd-watch")


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a candidate, follower, session or watch thread running after it ended."""
    yield
    leaked = [t.name for t in threading.enumerate() if t.name.startswith(_TEST_SCOPED_THREADS) and t.is_alive()]
    assert not leaked, f"threads left running: {leaked}"
