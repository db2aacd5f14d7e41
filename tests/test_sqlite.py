"""The embedded sqlite backend: opening a file that another process is switching or writing."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

import swarmha
from swarmha.errors import DiscoveryUnavailable


def hold_write_lock(path: Path, release: threading.Event) -> tuple[sqlite3.Connection, threading.Thread]:
    """Hold a RESERVED lock on a rollback-journal file until ``release`` is set (another process's write)."""
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE IF NOT EXISTS other (a)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO other VALUES (1)")

    def finish() -> None:
        release.wait(10)
        writer.execute("COMMIT")
        writer.close()

    thread = threading.Thread(target=finish, name="sqlite-writer")
    thread.start()
    return writer, thread


def test_connect_waits_out_a_writer_instead_of_failing_at_once(tmp_path: Path) -> None:
    """CI finding: two candidate processes opened a new file at once; one died in connect() with "database is
    locked" although the busy timeout is 5 s, because SQLite refuses a reader's upgrade to writer while another
    connection writes (deadlock avoidance) without waiting. Opening now retries until ``timeout``."""
    path = tmp_path / "election.db"
    release = threading.Event()
    _, thread = hold_write_lock(path, release)
    try:
        # The exact failure, first: plain sqlite3 with a 5 s busy timeout gives up at once.
        probe = sqlite3.connect(path, timeout=5.0, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            probe.execute("PRAGMA journal_mode=WAL")
        probe.close()
        threading.Timer(0.3, release.set).start()
        discovery = swarmha.connect(f"sqlite://{path}")
        try:
            session = discovery.session(2.0)
            assert discovery.create("svc/leader", "n1", session) is not None
            session.close()
        finally:
            discovery.close()
    finally:
        release.set()
        thread.join(10)


def test_connect_gives_up_with_a_clear_error_after_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "election.db"
    release = threading.Event()
    _, thread = hold_write_lock(path, release)
    try:
        with pytest.raises(DiscoveryUnavailable, match=r"cannot open sqlite file .*election\.db.*locked"):
            swarmha.connect(f"sqlite://{path}?timeout=0.3")
    finally:
        release.set()
        thread.join(10)
