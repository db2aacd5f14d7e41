"""sqlite:// test store: one file per session; an outage is rehearsed by holding the file's write lock."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.support.stores import fresh_prefix


class SqliteStoreFixture:
    name = "sqlite"
    can_stop = True

    def __init__(self, directory: Path) -> None:
        self.path = directory / "election.db"
        self._blocker: sqlite3.Connection | None = None

    def url(self, **params: str) -> str:
        extra = "".join(f"&{k}={v}" for k, v in params.items())
        return f"sqlite://{self.path}?prefix={fresh_prefix(self.name)}&timeout=0.2{extra}"

    def stop(self) -> None:
        """Another process's writer holding the lock: every write times out (DiscoveryUnavailable)."""
        if self._blocker is None:
            self._blocker = sqlite3.connect(self.path, isolation_level=None)
            self._blocker.execute("BEGIN EXCLUSIVE")

    def start(self) -> None:
        if self._blocker is not None:
            self._blocker.execute("ROLLBACK")
            self._blocker.close()
            self._blocker = None

    def close(self) -> None:
        self.start()


def open_store(tmp_path_factory: pytest.TempPathFactory) -> SqliteStoreFixture:
    return SqliteStoreFixture(tmp_path_factory.mktemp("sqlite"))
