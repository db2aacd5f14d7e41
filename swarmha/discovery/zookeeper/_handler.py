"""kazoo's threading handler with named threads, so a thread dump says which connection each thread serves.

kazoo runs three threads per client: the connection loop (``zk_loop``: socket I/O, pings, reconnects) and two
queue workers (request completions, watch callbacks). It starts them unnamed (``Thread-N (zk_loop)``); this
handler names them ``<prefix>-io``, ``<prefix>-completions`` and ``<prefix>-callbacks``. Nothing else changes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
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
