"""swarmha's kazoo handler (swarmha.discovery.zookeeper._handler): its ``select`` answers as kazoo's own does
(readable, writable, never exceptional; sockets or descriptors; a timeout; errors for a bad timeout or a closed
socket), and its threads are named. Every ZooKeeper test runs on it as well."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from kazoo.handlers.utils import selector_select

from swarmha.discovery.zookeeper._handler import NamedThreadingHandler


def test_select_says_what_is_readable_and_writable_as_kazoos_own_select_does() -> None:
    handler = NamedThreadingHandler("t")
    a, b = socket.socketpair()
    try:
        for select in (handler.select, selector_select):
            assert select([a], [], [], 0) == ([], [], [])  # nothing to read yet
            assert select([], [a], [], 0) == ([], [a], [])  # room to write
        b.sendall(b"x")
        for select in (handler.select, selector_select):
            assert select([a, b.fileno()], [], [], 1.0) == ([a], [], [])  # sockets and descriptors alike
        readable, writable, _ = handler.select([a], [a], [], 1.0)
        assert (readable, writable) == ([a], [a])
        b.close()  # the peer gone: readable (a recv then returns b""), as for kazoo's select
        assert handler.select([a], [], [], 1.0)[0] == [a]
    finally:
        a.close()
        b.close()


def test_select_waits_for_its_timeout_and_refuses_bad_input() -> None:
    handler = NamedThreadingHandler("t")
    a, b = socket.socketpair()
    try:
        started = time.monotonic()
        assert handler.select([a], [], [], 0.05) == ([], [], [])
        assert time.monotonic() - started >= 0.04
        with pytest.raises(ValueError, match="non-negative"):
            handler.select([a], [], [], -1)
        with pytest.raises(TypeError, match="number"):
            handler.select([a], [], [], "1")
        a.close()
        with pytest.raises(ValueError, match="Invalid event mask or fd"):
            handler.select([a], [], [], 0)
    finally:
        a.close()
        b.close()


def test_its_threads_are_named_by_role() -> None:
    handler = NamedThreadingHandler("swarmha-zk[t]")
    handler.start()
    try:
        names = {t.name for t in threading.enumerate()}
        assert {"swarmha-zk[t]-completions", "swarmha-zk[t]-callbacks"} <= names
    finally:
        handler.stop()
