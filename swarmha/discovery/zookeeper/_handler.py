"""kazoo's threading handler with named threads and a cheaper ``select``.

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
scale``), every key led in 22 s against 31-34 s.
"""

from __future__ import annotations

import math
import select
import threading
from collections.abc import Callable, Sequence
from typing import Any

from kazoo.handlers.threading import SequentialThreadingHandler

__all__ = ["NamedThreadingHandler"]


class NamedThreadingHandler(SequentialThreadingHandler):  # type: ignore[misc]  # kazoo has no type hints
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix
        self._role = "io"

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
