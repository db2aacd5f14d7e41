"""The election engine's request path: a state machine parked on a store request's future, and the Discovery's
non-blocking defaults that give a backend without pipelined requests a future that is done already."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Any

import pytest

import swarmha
from swarmha.discovery.memory import MemoryDiscovery
from swarmha.election._engine import WINDOW, Engine, Park, Steps, Task
from swarmha.errors import DiscoveryError, DiscoveryUnavailable

TIMEOUT = 5.0


class Machine:
    """A generator on an engine that parks on what the test hands it and reports what it was resumed with."""

    def __init__(self, engine: Engine | None = None) -> None:
        self.parks: queue.SimpleQueue[Park] = queue.SimpleQueue()
        self.seen: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.stop = False
        self.task = Task(engine or Engine(), "test", self._steps(), lambda: self.stop)

    def _steps(self) -> Steps:
        while True:
            while self.parks.empty():  # parked (no worker held) until the test hands it the next park
                yield Park(None, time.monotonic() + 0.005)
            park = self.parks.get_nowait()
            if park.watch is None and park.until is None and park.request is None:
                return
            try:
                value = yield park
            except Exception as e:
                value = e
            self.seen.put(value)

    def park(self, park: Park) -> Any:
        self.parks.put(park)
        return self

    def next(self) -> Any:
        return self.seen.get(timeout=TIMEOUT)

    def end(self) -> None:
        self.parks.put(Park())
        assert self.task.wait_finished(TIMEOUT)


def test_a_future_answered_later_resumes_the_machine_with_its_result() -> None:
    future: Future[str] = Future()
    m = Machine().park(Park(request=lambda: future))
    m.task.start()
    time.sleep(0.05)  # parked: no worker waits for the answer
    assert m.seen.empty()
    threading.Thread(target=future.set_result, args=("answer",)).start()
    assert m.next() == "answer"
    m.end()


def test_a_future_that_failed_throws_its_error_into_the_machine() -> None:
    future: Future[str] = Future()
    m = Machine().park(Park(request=lambda: future))
    m.task.start()
    future.set_exception(DiscoveryError("the store said no"))
    error = m.next()
    assert isinstance(error, DiscoveryError) and "said no" in str(error)
    m.end()


def test_a_future_done_already_resumes_the_machine_at_once() -> None:
    future: Future[int] = Future()
    future.set_result(7)
    m = Machine().park(Park(request=lambda: future))
    m.task.start()
    assert m.next() == 7
    m.end()


def test_an_interrupt_does_not_cut_a_wait_for_a_future_short_and_the_next_park_sees_it() -> None:
    future: Future[str] = Future()
    m = Machine().park(Park(request=lambda: future))
    m.task.start()
    time.sleep(0.05)
    m.stop = True
    m.task.interrupt()
    time.sleep(0.05)
    assert m.seen.empty()  # still waiting for the request's answer
    future.set_result("late")
    assert m.next() == "late"
    m.park(Park(None, time.monotonic() + 60.0))
    assert m.next() is False  # interrupted: this park ends at once
    m.end()


def test_a_future_without_an_answer_by_its_deadline_throws_unavailable() -> None:
    future: Future[str] = Future()
    m = Machine().park(Park(request=lambda: future, until=time.monotonic() + 0.1))
    m.task.start()
    assert isinstance(m.next(), DiscoveryUnavailable)
    future.set_result("too late")  # ignored: the machine moved on
    m.park(Park(None, time.monotonic() + 0.01))
    assert m.next() is False
    m.end()


def test_a_request_beyond_the_window_is_sent_once_one_in_flight_answered() -> None:
    engine = Engine()
    futures: list[Future[int]] = [Future() for _ in range(WINDOW + 1)]
    sent: list[int] = []

    def request(i: int) -> Future[int]:
        sent.append(i)
        return futures[i]

    machines = [Machine(engine).park(Park(request=lambda i=i: request(i))) for i in range(WINDOW + 1)]
    for m in machines:
        m.task.start()
    deadline = time.monotonic() + TIMEOUT
    while len(sent) < WINDOW and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert len(sent) == WINDOW  # the last one waits for room
    first = sent[0]
    futures[first].set_result(first)
    assert machines[first].next() == first
    waiting = next(i for i in range(WINDOW + 1) if i not in sent[:WINDOW])
    while waiting not in sent and time.monotonic() < deadline:
        time.sleep(0.01)
    assert waiting in sent
    for i in range(WINDOW + 1):
        if i != first:
            futures[i].set_result(i)
            assert machines[i].next() == i
    for m in machines:
        m.end()


@pytest.fixture
def discovery() -> MemoryDiscovery:
    d = swarmha.connect("memory://engine-defaults/p")
    assert isinstance(d, MemoryDiscovery)
    return d


def test_the_discovery_defaults_run_the_blocking_call_and_return_a_done_future(discovery: MemoryDiscovery) -> None:
    session = discovery.session(30.0)
    created = discovery.create_async("k", "a", session)
    assert created.done()
    record = created.result()
    assert record is not None and record.value == "a"
    assert discovery.get_async("k").result(0) == record
    assert discovery.list_async("k.election").result(0) == {}
    assert discovery.delete_async("k", record.token).result(0) is True
    closed = discovery.session(30.0)
    closed.close()
    failed = discovery.create_async("k", "b", closed)
    assert failed.done() and isinstance(failed.exception(), swarmha.errors.SessionExpired)
    discovery.release_async("k", 1, session).result(0)


def test_a_backend_overriding_only_the_blocking_calls_is_used_through_them(discovery: MemoryDiscovery) -> None:
    calls: list[str] = []

    class Counting(MemoryDiscovery):
        def get(self, key: str) -> swarmha.discovery.Record | None:
            calls.append(key)
            return super().get(key)

    d = Counting(discovery.url)
    assert d.get_async("x").result(0) is None
    assert calls == ["x"]
