"""swarmha's kazoo handler (swarmha.discovery.zookeeper._handler): its ``select`` answers as kazoo's own does
(readable, writable, never exceptional; sockets or descriptors; a timeout; errors for a bad timeout or a closed
socket), by ``select(2)`` for a socket or two and ``poll(2)`` otherwise; its results answer as kazoo's
``AsyncResult`` does (each test runs on both); and its threads are named. Every ZooKeeper test runs on it as
well."""

from __future__ import annotations

import select as select_module
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kazoo.handlers.threading import KazooTimeoutError, SequentialThreadingHandler
from kazoo.handlers.utils import selector_select

from swarmha.discovery.zookeeper import _handler
from swarmha.discovery.zookeeper._handler import LightResult, NamedThreadingHandler


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


# -- LightResult: kazoo's AsyncResult, answer for answer ----------------------------------------------------


@pytest.fixture(params=["kazoo", "light"])
def make_result(request: pytest.FixtureRequest) -> Iterator[Callable[[], Any]]:
    """kazoo's own result and swarmha's, each from a handler that is not running (callbacks run at once)."""
    handler = SequentialThreadingHandler() if request.param == "kazoo" else NamedThreadingHandler("t")
    yield handler.async_result


def test_a_result_holds_its_value_or_its_error(make_result: Callable[[], Any]) -> None:
    result = make_result()
    assert not result.ready() and not result.successful() and result.exception is None
    result.set("v")
    assert result.ready() and result.successful() and result.exception is None
    assert result.get() == "v" and result.get_nowait() == "v" and result.get(timeout=0) == "v"
    assert result.wait(0) is True
    failed = make_result()
    error = KeyError("gone")
    failed.set_exception(error)
    assert failed.ready() and not failed.successful() and failed.exception is error
    with pytest.raises(KeyError, match="gone"):
        failed.get()
    with pytest.raises(KeyError, match="gone"):
        failed.get_nowait()


def test_a_result_without_an_answer_times_out(make_result: Callable[[], Any]) -> None:
    result = make_result()
    with pytest.raises(KazooTimeoutError):
        result.get_nowait()
    started = time.monotonic()
    with pytest.raises(KazooTimeoutError):
        result.get(timeout=0.05)
    assert time.monotonic() - started >= 0.04
    assert result.wait(0.01) is False


def test_a_blocked_caller_wakes_when_another_thread_answers(make_result: Callable[[], Any]) -> None:
    result, waited = make_result(), make_result()
    got: list[Any] = []
    threads = [
        threading.Thread(target=lambda: got.append(result.get(timeout=10))),
        threading.Thread(target=lambda: got.append(waited.wait(10))),
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.02)  # let both block (the verdict does not depend on it: they get the answer either way)
    result.set(7)
    waited.set()
    for thread in threads:
        thread.join(10)
    assert sorted(got, key=str) == [7, True]


def test_callbacks_run_once_each_linked_before_or_after_the_answer_and_unlinked_ones_never(
    make_result: Callable[[], Any],
) -> None:
    result = make_result()
    calls: list[tuple[str, Any]] = []

    def first(r: Any) -> None:
        calls.append(("first", r.get_nowait()))

    def dropped(r: Any) -> None:
        calls.append(("dropped", r.get_nowait()))

    result.rawlink(first)
    result.rawlink(first)  # linked twice: still called once
    result.rawlink(dropped)
    result.unlink(dropped)
    result.set(1)
    assert calls == [("first", 1)]
    result.rawlink(lambda r: calls.append(("late", r.get_nowait())))  # linked after: called at once
    if isinstance(result, LightResult):
        assert calls == [("first", 1), ("late", 1)]
    else:  # kazoo's calls every callback linked before once more, the late one with them
        assert calls == [("first", 1), ("first", 1), ("late", 1)]


def test_a_running_handler_calls_back_on_its_completion_thread() -> None:
    handler = NamedThreadingHandler("swarmha-zk[cb]")
    handler.start()
    try:
        result = handler.async_result()
        assert isinstance(result, LightResult)
        ran = threading.Event()
        names: list[str] = []

        def callback(r: Any) -> None:
            names.append(threading.current_thread().name)
            ran.set()

        result.rawlink(callback)
        result.set(None)
        assert ran.wait(5.0)
        assert names == ["swarmha-zk[cb]-completions"]
    finally:
        handler.stop()


# -- select: select(2) for a socket or two, poll(2) otherwise ------------------------------------------------


def test_a_socket_or_two_go_to_select_and_more_or_a_high_descriptor_to_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    handler = NamedThreadingHandler("t")
    calls: list[int] = []
    real = select_module.select

    def counted(r: Any, w: Any, x: Any, timeout: Any = None) -> Any:
        calls.append(len(r) + len(w))
        return real(r, w, x, timeout)

    monkeypatch.setattr(select_module, "select", counted)
    pairs = [socket.socketpair() for _ in range(2)]
    a, b = pairs[0]
    c, _ = pairs[1]
    try:
        b.sendall(b"x")
        assert handler.select([a], [b], [], 1.0) == ([a], [b], [])
        assert calls == [2]
        assert handler.select([a, c], [b], [], 1.0) == ([a], [b], [])  # three: poll
        assert calls == [2]
        monkeypatch.setattr(_handler, "_SELECT_LIMIT", min(a.fileno(), b.fileno()))  # as if above FD_SETSIZE
        assert handler.select([a], [b], [], 1.0) == ([a], [b], [])
        assert calls == [2]
    finally:
        for pair in pairs:
            for s in pair:
                s.close()
