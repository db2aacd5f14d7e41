"""ZooKeeper's pipelined operations (``swarmha.discovery.zookeeper._async``) against a fake connection: answers
arriving later resume the operation, errors are thrown into it, a lone operation runs inline, a close fails what
waits."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from kazoo.exceptions import NoNodeError

from swarmha.discovery.zookeeper._async import Operation, Pipeline, Request, drive
from swarmha.discovery.zookeeper._timer import Timer
from swarmha.errors import DiscoveryError, DiscoveryUnavailable
from tests.support.helpers import wait_for

TIMEOUT = 5.0


class Answer:
    """kazoo's async result, answered by the test."""

    def __init__(self) -> None:
        self._callbacks: list[Any] = []
        self._value: Any = None
        self._error: BaseException | None = None

    def rawlink(self, callback: Any) -> None:
        self._callbacks.append(callback)

    def get_nowait(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value

    def answer(self, value: Any = None, error: BaseException | None = None) -> None:
        self._value, self._error = value, error
        for callback in self._callbacks:
            callback(self)


class Conn:
    def __init__(self) -> None:
        self.sent: list[Answer] = []
        self.inline: list[str] = []

    def send(self, what: str, fn: Any, session: Any = None) -> Answer:
        answer = Answer()
        self.sent.append(answer)
        return answer

    def op(self, what: str, fn: Any, session: Any = None) -> Any:
        self.inline.append(what)
        return f"{what}-inline"

    def translate(self, what: str, error: BaseException, session: Any = None) -> BaseException:
        return error


@pytest.fixture
def timer() -> Iterator[Timer]:
    t = Timer("test-zk-timer")
    yield t
    t.stop()


def two_reads(conn: Conn) -> Operation[tuple[Any, Any]]:
    first = yield Request(conn, "a", lambda c: None)  # type: ignore[arg-type]
    try:
        second = yield Request(conn, "b", lambda c: None)  # type: ignore[arg-type]
    except NoNodeError:
        second = None
    return first, second


def test_answers_arriving_later_resume_the_operation_and_errors_are_thrown_into_it(timer: Timer) -> None:
    conn = Conn()
    future = drive(two_reads(conn), timer, TIMEOUT)
    assert len(conn.sent) == 1 and not future.done()
    threading.Thread(target=conn.sent[0].answer, args=("one",)).start()
    wait_for(lambda: len(conn.sent) == 2, TIMEOUT, "the second request")
    conn.sent[1].answer(error=NoNodeError())
    assert future.result(TIMEOUT) == ("one", None)


def test_an_operation_without_an_answer_fails_unavailable_after_the_timeout(timer: Timer) -> None:
    conn = Conn()
    future = drive(two_reads(conn), timer, 0.1)
    assert isinstance(future.exception(TIMEOUT), DiscoveryUnavailable)
    conn.sent[0].answer("too late")  # ignored


def test_a_lone_operation_runs_inline_and_one_beside_it_is_pipelined_until_the_close_fails_it(timer: Timer) -> None:
    conn = Conn()
    pipeline = Pipeline(timer, TIMEOUT)
    assert pipeline.run(two_reads(conn)).result(0) == ("a-inline", "b-inline")

    class Busy:
        """An inline operation that starts a second one while it runs."""

        def __init__(self) -> None:
            self.second: Any = None

        def op(self, what: str, fn: Any, session: Any = None) -> Any:
            self.second = pipeline.run(two_reads(conn))
            return "x"

    busy = Busy()

    def outer() -> Operation[Any]:
        return (yield Request(busy, "outer", lambda c: None))  # type: ignore[arg-type]

    assert pipeline.run(outer()).result(0) == "x"
    assert len(conn.sent) == 1 and not busy.second.done()  # pipelined: waiting for its answer
    pipeline.close()
    assert isinstance(busy.second.exception(0), DiscoveryError)


def test_an_answered_operation_is_not_kept_alive_by_its_timeout(timer: Timer) -> None:
    # The timeout's call stays in the timer's heap until its time; a cancelled call must drop the operation
    # (its generator, frame and future), or every answered operation lives on for the whole timeout.
    timer.call_at(time.monotonic() + 30.0, lambda: None)  # heads the heap: the timeout's call stays in it
    conn = Conn()
    operation = two_reads(conn)
    alive = weakref.ref(operation)
    future = drive(operation, timer, 60.0)
    del operation
    conn.sent[0].answer("one")
    conn.sent[1].answer("two")
    assert future.result(TIMEOUT) == ("one", "two")
    del future
    conn.sent.clear()  # answered results are dropped (kazoo's too)
    gc.collect()
    assert alive() is None
