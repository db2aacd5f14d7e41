"""Pipelined requests on ZooKeeper: a multi-request operation written as a generator, driven by kazoo's callbacks.

A Discovery operation on ZooKeeper is several requests in a row (a key's ``get`` reads its queue, then the
holder's entry). :func:`drive` runs such an operation without blocking any thread: the generator yields a
:class:`Request` (a connection, what it is for, and a function sending it with one of kazoo's ``*_async``
calls); the request goes out at once, and kazoo's completion callback resumes the generator with the answer, or
throws the translated error into it (:meth:`~._connection.Connection.translate`: the same errors
:meth:`~._connection.Connection.op` raises; ``NoNodeError`` and the other answers as they are). The generator's
return value completes the future :func:`drive` returned.

So thousands of operations of one process are in flight together on its one connection (kazoo writes them in
order on its connection thread), where blocking calls would queue behind the election engine's four workers.

Guarantees and failure modes: the future completes within the Discovery's ``timeout`` (a timer fails it with
:class:`~swarmha.errors.DiscoveryUnavailable` otherwise; a reply arriving later is ignored). A request on a
connection that is not connected fails at once with ``DiscoveryUnavailable`` (the blocking call would wait up to
``timeout`` for it to come back: callers of the pipelined form retry with backoff instead). The generator runs
on the calling thread up to its first request, then on kazoo's callback thread: between requests it must only
do bookkeeping (no blocking call).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future, InvalidStateError
from typing import Any, TypeVar

import attrs

from swarmha.discovery.zookeeper._connection import Checkable, Connection
from swarmha.discovery.zookeeper._timer import Timer
from swarmha.errors import DiscoveryError, DiscoveryUnavailable

__all__ = ["Operation", "Request", "drive"]

_T = TypeVar("_T")


@attrs.frozen
class Request:
    """One request of an operation: ``send(client)`` returns kazoo's async result, on ``conn``, for ``session``."""

    conn: Connection
    what: str
    send: Callable[[Any], Any]
    session: Checkable | None = None


#: An operation: yields Requests, is sent their answers, returns its result.
Operation = Generator[Request, Any, _T]


def drive(operation: Operation[_T], timer: Timer, timeout: float) -> Future[_T]:
    """Run ``operation`` (see the module docstring); its result or error as a future, within ``timeout``."""
    return _Driven(operation, timer, timeout).result


class _Driven:
    """One pipelined operation in flight: :func:`drive`'s state, in one object.

    An object with slots and bound methods rather than closures: thousands are in flight at once, each lives a
    round trip or more (long enough to outlive young garbage collections), and closures made four functions and
    about eight cells per operation, each one more object for every full collection to walk. 10,000 keys x 3
    processes (``python -m benchmarks scale --keys 10000 --backends zk --systems swarmha-lease --base DIR``, the
    closures' build as base, two runs): every key led in 10.0 and 12.0 s against 11.3 and 13.6 s; the busiest
    process's full collections 1.1 and 1.9 s against 2.1 and 3.3 s.
    """

    __slots__ = ("_call", "_operation", "_request", "_timeout", "result")

    def __init__(self, operation: Operation[Any], timer: Timer, timeout: float) -> None:
        self.result: Future[Any] = Future()
        self._operation = operation
        self._timeout = timeout
        self._request: Request | None = None  # the one in flight
        self._call = timer.call_at(time.monotonic() + timeout, self._expire)
        self._step(None, None)

    def _finish(self, value: Any = None, error: BaseException | None = None) -> bool:
        """Complete the future; False if it was done already (timed out, or failed by Pipeline.close)."""
        try:
            if error is None:
                self.result.set_result(value)
            else:
                self.result.set_exception(error)
        except InvalidStateError:
            return False
        return True

    def _expire(self) -> None:
        if self._finish(error=DiscoveryUnavailable(f"ZooKeeper: no answer within {self._timeout:g}s")):
            self._operation.close()

    def _step(self, value: Any, error: BaseException | None) -> None:
        operation = self._operation
        while True:
            if self.result.done():
                return
            try:
                request = operation.send(value) if error is None else operation.throw(error)
            except StopIteration as stop:
                self._call.cancel()
                self._finish(stop.value)
                return
            except Exception as e:
                self._call.cancel()
                self._finish(error=e)
                return
            value, error = None, None
            try:
                sent = request.conn.send(request.what, request.send, request.session)
            except DiscoveryError as e:
                error = e
                continue
            self._request = request
            sent.rawlink(self._answered)
            return

    def _answered(self, answer: Any) -> None:
        request = self._request
        assert request is not None  # set before the request's callback was linked
        try:
            value = answer.get_nowait()
        except Exception as e:
            self._step(None, request.conn.translate(request.what, e, request.session))
            return
        self._step(value, None)


def block(operation: Operation[_T]) -> _T:
    """Run ``operation`` on this thread, each request with :meth:`~._connection.Connection.op` (waits for the
    connection, bounded by the timeout): the blocking form of the same code :func:`drive` pipelines."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = operation.send(value) if error is None else operation.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        value, error = None, None
        try:
            value = request.conn.op(request.what, request.send, request.session)
        except Exception as e:
            error = e


class Pipeline:
    """Runs a Discovery's operations: pipelined (:func:`drive`) while others are in flight, inline (:func:`block`)
    when it is the only one.

    A lone operation gains nothing from pipelining and pays for it: its answer reaches the caller through kazoo's
    completion thread and then the election engine's worker, where a blocked caller is woken by the connection
    thread itself (measured: a single-key ZooKeeper handover, p50 4.4 ms blocking, 5.0 ms pipelined). With
    thousands of keys, operations overlap and go pipelined. Thread-safe."""

    def __init__(self, timer: Timer, timeout: float) -> None:
        self._timer = timer
        self._timeout = timeout
        self._lock = threading.Lock()
        self._busy = 0  # operations running now, inline or pipelined
        self._pending: set[Future[Any]] = set()  # pipelined and not answered
        self._closed = False

    def run(self, operation: Operation[_T]) -> Future[_T]:
        with self._lock:
            alone = self._busy == 0
            self._busy += 1
        if not alone:
            future = drive(operation, self._timer, self._timeout)
            with self._lock:
                if self._closed:
                    _fail(future)
                self._pending.add(future)
            future.add_done_callback(self._done)
            return future
        result: Future[_T] = Future()
        try:
            result.set_result(block(operation))
        except Exception as e:
            result.set_exception(e)
        finally:
            self._done(result)
        return result

    def _done(self, future: Future[Any]) -> None:
        with self._lock:
            self._busy -= 1
            self._pending.discard(future)

    def close(self) -> None:
        """Fail every pipelined operation still waiting (the Discovery closes: their answers may never come, and
        the timer that bounds them stops), and every later one. Idempotent."""
        with self._lock:
            self._closed = True
            pending = list(self._pending)
        for future in pending:
            _fail(future)


def _fail(future: Future[Any]) -> None:
    with contextlib.suppress(InvalidStateError):
        future.set_exception(DiscoveryError("the ZooKeeper discovery was closed"))
