"""kazoo's threading handler with named threads, a cheaper ``select``, and lighter results and work queues.

kazoo runs three threads per client: the connection loop (``zk_loop``: socket I/O, pings, reconnects) and two
queue workers (request completions, watch callbacks). It starts them unnamed (``Thread-N (zk_loop)``); this
handler names them ``<prefix>-io``, ``<prefix>-completions`` and ``<prefix>-callbacks``.

``select``: kazoo's connection loop calls the handler's ``select`` about five times per request and answer (the
loop's wait, then one before each ``send`` and each ``recv``), and kazoo's own builds a new epoll selector every
time (``epoll_create``, ``epoll_ctl``, ``epoll_wait``, ``close`` and the ``selectors`` module's bookkeeping).
Here it is one ``poll(2)`` on a throwaway ``select.poll`` object: the same answer (any descriptor number, so no
``select(2)`` limit of 1024; readable on any event but POLLOUT, writable on any but POLLIN, as ``selectors``
reads them), and the same errors. Measured on 2 cores against ZooKeeper 3.8 on loopback: kazoo alone, 20,000
``exists`` with 32 in flight, 8,100 a second (113 µs of CPU each) against 4,300 (192 µs) with kazoo's ``select``;
one process electing 3,000 keys on one Lease, 8.3 s against 10.4 s (kazoo's io thread had been 37 % of the
process's samples, two thirds of them in ``selectors``); 10,000 keys x 3 processes (``python -m benchmarks
scale``), every key led in 22 s against 31-34 s. When every descriptor is below 1024 (the usual case) the same
question goes to ``select(2)`` in C, which costs less Python than building a poll object.

Results (:class:`LightResult`): kazoo makes an ``AsyncResult`` for every request (two for a ``create``), each with
its own ``threading.Condition`` (a lock, a deque and three bound methods). Nothing ever waits on most of them: the
pipelined operations (:mod:`._async`) are resumed by a callback. Here a result takes one lock shared by the
handler, and makes a Condition on it only for a caller that blocks in ``get`` or ``wait``: same methods, same
answers, callbacks still run on the completion thread. Work queues: ``queue.SimpleQueue`` (C) instead of
``queue.Queue`` (a Condition round per put and get); kazoo only puts and gets. With :mod:`._queue`'s known heads
and creates, 10,000 keys x 3 processes were led in 13.6-16.0 s against 18.4-19.9 s, and the worst process spent
3.8-4.6 s in the garbage collector against 6.3 s (``python -m benchmarks scale --keys 10000 --backends zk
--systems swarmha-lease --base DIR``, docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import math
import queue
import select
import threading
from collections.abc import Callable, Sequence
from typing import Any

from kazoo.handlers.threading import KazooTimeoutError, SequentialThreadingHandler
from kazoo.handlers.utils import AsyncResult

__all__ = ["LightResult", "NamedThreadingHandler"]

_NONE = object()  # no answer yet (None is a valid exception slot: "succeeded")
#: Descriptors ``select(2)`` takes (FD_SETSIZE); above it, ``poll(2)``.
_SELECT_LIMIT = 1024


class _WorkQueue(queue.SimpleQueue):  # type: ignore[type-arg]
    """kazoo's worker loop calls ``task_done`` after each item; nothing joins the queue, so it does nothing here."""

    def task_done(self) -> None:
        pass


class LightResult(AsyncResult):  # type: ignore[misc]  # kazoo has no type hints
    """kazoo's ``IAsyncResult`` without a Condition of its own (see the module docstring). Thread-safe: every
    result of one handler shares the handler's lock, held only to read or set a result's state (never while a
    callback runs). A callback linked after the answer runs once, at once; kazoo's also runs every callback
    linked before it a second time (each result here gets one callback)."""

    __slots__ = ("_callbacks", "_exception", "_handler", "_lock", "_waiters", "value")

    def __init__(self, handler: NamedThreadingHandler) -> None:  # no super(): it would make the Condition
        self._handler = handler
        self._lock = handler.results_lock
        self._exception: Any = _NONE
        self._callbacks: list[Callable[[Any], None]] | None = None
        self._waiters: threading.Condition | None = None
        self.value: Any = None

    def ready(self) -> bool:
        return self._exception is not _NONE

    def successful(self) -> bool:
        return self._exception is None

    @property
    def exception(self) -> BaseException | None:
        exception = self._exception
        return None if exception is _NONE else exception

    def set(self, value: Any = None) -> None:
        self._settle(value, None)

    def set_exception(self, exception: BaseException) -> None:
        self._settle(None, exception)

    def _settle(self, value: Any, exception: BaseException | None) -> None:
        with self._lock:
            self.value = value
            self._exception = exception
            callbacks, self._callbacks = self._callbacks, None
            if self._waiters is not None:
                self._waiters.notify_all()
        if callbacks:
            for callback in callbacks:
                self._dispatch(callback)

    def _dispatch(self, callback: Callable[[Any], None]) -> None:
        """As kazoo's: on the completion thread while the handler runs, else at once."""
        if self._handler.running:
            self._handler.completion_queue.put(functools.partial(callback, self))
        else:
            callback(self)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        with self._lock:
            if self._exception is _NONE and block:
                if self._waiters is None:
                    self._waiters = threading.Condition(self._lock)
                self._waiters.wait(timeout)
            exception = self._exception
        if exception is _NONE:
            raise KazooTimeoutError()
        if exception is not None:
            raise exception
        return self.value

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def wait(self, timeout: float | None = None) -> bool:
        with self._lock:
            if self._exception is _NONE:
                if self._waiters is None:
                    self._waiters = threading.Condition(self._lock)
                self._waiters.wait(timeout)
            return self._exception is not _NONE

    def rawlink(self, callback: Callable[[Any], None]) -> None:
        with self._lock:
            ready = self._exception is not _NONE
            if not ready:
                if self._callbacks is None:
                    self._callbacks = [callback]
                elif callback not in self._callbacks:
                    self._callbacks.append(callback)
        if ready:
            self._dispatch(callback)

    def unlink(self, callback: Callable[[Any], None]) -> None:
        with self._lock:
            if self._callbacks is not None and callback in self._callbacks:
                self._callbacks.remove(callback)


class NamedThreadingHandler(SequentialThreadingHandler):  # type: ignore[misc]  # kazoo has no type hints
    """kazoo's threading handler with named threads, one-``poll`` select, :class:`LightResult` and C work queues."""

    queue_impl = _WorkQueue

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix
        self._role = "io"
        self.results_lock = threading.Lock()

    def async_result(self) -> LightResult:
        return LightResult(self)

    def _create_thread_worker(self, work_queue: Any) -> threading.Thread:
        self._role = "completions" if work_queue is self.completion_queue else "callbacks"
        try:
            thread: threading.Thread = super()._create_thread_worker(work_queue)
        finally:
            self._role = "io"
        return thread

    def spawn(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> threading.Thread:
        thread = threading.Thread(
            target=func, args=args, kwargs=kwargs, name=f"{self.prefix}-{self._role}", daemon=True
        )
        thread.start()
        return thread

    def select(
        self, rlist: Sequence[Any], wlist: Sequence[Any], xlist: Sequence[Any], timeout: float | None = None
    ) -> tuple[list[Any], list[Any], list[Any]]:
        """kazoo's ``select`` (lists of sockets or descriptors ready to read, to write; never exceptional) with one
        ``poll(2)`` (see the module docstring). Raises ValueError for a bad timeout or a closed descriptor."""
        if timeout is not None:
            if not isinstance(timeout, (int, float)):
                raise TypeError("timeout must be a number")
            if timeout < 0:
                raise ValueError("timeout must be non-negative")
        if len(rlist) + len(wlist) <= 2:
            fds = [item if isinstance(item, int) else item.fileno() for items in (rlist, wlist) for item in items]
            if fds and all(0 <= fd < _SELECT_LIMIT for fd in fds):
                ready = select.select(rlist, wlist, (), timeout)
                return ready[0], ready[1], []
        masks: dict[int, int] = {}
        objects: dict[int, list[Any]] = {}
        for mask, items in ((select.POLLIN, rlist), (select.POLLOUT, wlist)):
            for item in items:
                fd = item if isinstance(item, int) else item.fileno()
                if fd < 0:
                    raise ValueError("Invalid event mask or fd")
                masks[fd] = masks.get(fd, 0) | mask
                objects.setdefault(fd, []).append((mask, item))
        poller = select.poll()
        for fd, mask in masks.items():
            poller.register(fd, mask)
        wait = None if timeout is None else math.ceil(timeout * 1000)
        readable: list[Any] = []
        writable: list[Any] = []
        for fd, events in poller.poll(wait):
            for mask, item in objects[fd]:
                if mask == select.POLLIN and events & ~select.POLLOUT:
                    readable.append(item)
                elif mask == select.POLLOUT and events & ~select.POLLIN:
                    writable.append(item)
        return readable, writable, []
