"""memory:// test store: outages are rehearsed with MemoryStore.available."""

from __future__ import annotations

import pytest

from swarmha.discovery import memory
from tests.support.stores import fresh_prefix


class MemoryStoreFixture:
    name = "memory"
    can_stop = True

    def __init__(self) -> None:
        self._store_name = fresh_prefix("mem")

    def url(self) -> str:
        return f"memory://{self._store_name}/{fresh_prefix(self.name)}"

    def stop(self) -> None:
        memory.store(self._store_name).available = False

    def start(self) -> None:
        memory.store(self._store_name).available = True

    def close(self) -> None:
        self.start()


def open_store(tmp_path_factory: pytest.TempPathFactory) -> MemoryStoreFixture:
    return MemoryStoreFixture()
