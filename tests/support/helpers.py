"""Small helpers for tests: wait for a condition with a deadline, collect iterator output in a thread."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, TypeVar

import pytest

import swarmha
from swarmha.discovery import Record, Session, Watch
from swarmha.errors import InvalidDiscoveryURL

T = TypeVar("T")

#: How long the tests that hold a load or a stream for a while hold it, in seconds, when set
#: (``SWARMHA_LONG_SECONDS=60 python3 -m pytest ...``, a soak's length); 0, the default, keeps each test's own
#: short length, so the suite stays quick.
LONG_SECONDS = float(os.environ.get("SWARMHA_LONG_SECONDS", "0") or 0)


def wait_for(predicate: Callable[[], object], timeout: float, what: str = "condition", poll: float = 0.002) -> float:
    """Poll ``predicate`` until it is truthy; return the seconds it took. Fails the test after ``timeout``."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.2f}s waiting for {what}")
        time.sleep(poll)


#: The name of a :class:`Collector`'s thread (the test's own, not the library's).
COLLECTOR_THREAD = "test-collector"


class Collector(Generic[T]):
    """Consume an iterator on a thread; hand its items out with :meth:`next` (bounded waits)."""

    def __init__(self, iterable: Iterable[T]) -> None:
        self._items: queue.SimpleQueue[tuple[float, T] | None] = queue.SimpleQueue()
        self.done = threading.Event()

        def run() -> None:
            try:
                for item in iterable:
                    self._items.put((time.monotonic(), item))
            finally:
                self._items.put(None)
                self.done.set()

        self._thread = threading.Thread(target=run, name=COLLECTOR_THREAD, daemon=True)
        self._thread.start()

    def next(self, timeout: float = 5.0) -> T:
        return self.next_timed(timeout)[1]

    def next_timed(self, timeout: float = 5.0) -> tuple[float, T]:
        """The next item and the monotonic time it arrived; fails on timeout or end of iteration."""
        try:
            got = self._items.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no item within {timeout:.2f}s") from None
        if got is None:
            raise AssertionError("the iterator ended")
        return got

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the iterator did not end"


class WaitSpy(swarmha.Discovery):
    """Another face of a shared Discovery that records whom its user waits behind (the ``seen`` of each watch).

    Lets a test act only once a candidate is really waiting behind a leader, instead of hoping it got there
    (a resign before the rival waits lets the resigner take the key back after its holdoff). ``close`` does
    not close the shared discovery.
    """

    def __init__(self, inner: swarmha.Discovery) -> None:
        self.inner = inner
        self.url = inner.url
        self._behind: list[str] = []
        self._lock = threading.Lock()

    def waiting_behind(self, node: str) -> bool:
        """True once a watch was opened on a key held by ``node``."""
        with self._lock:
            return node in self._behind

    def session(self, ttl: float) -> Session:
        return self.inner.session(ttl)

    def prepare(self, key: str, value: str, ttl: float, *, listing: str | None = None) -> Session | None:
        return self.inner.prepare(key, value, ttl, listing=listing)

    def create(self, key: str, value: str, session: Session) -> Record | None:
        return self.inner.create(key, value, session)

    def put(self, key: str, value: str, session: Session | None = None) -> Record:
        return self.inner.put(key, value, session)

    def get(self, key: str) -> Record | None:
        return self.inner.get(key)

    def delete(self, key: str, token: int) -> bool:
        return self.inner.delete(key, token)

    def release(self, key: str, token: int, session: Session) -> None:
        self.inner.release(key, token, session)

    def list(self, prefix: str) -> Mapping[str, Record]:
        return self.inner.list(prefix)

    def watch(self, key: str, seen: Record | None) -> Watch:
        watch = self.inner.watch(key, seen)
        if seen is not None:
            with self._lock:
                self._behind.append(seen.value)
        return watch

    def close(self) -> None:
        pass


def outage_demotes_then_recovers(
    url: str, stop: Callable[[], None], start: Callable[[], None], ttl: float, what: str = "store"
) -> None:
    """The outage contract: with the store down (``stop``) the leader demotes within renew_deadline; once it is
    back (``start``) a leader is elected within ttl + 1 s, without restarting anything."""
    d = swarmha.connect(url)
    c = swarmha.Candidate(d, "svc/leader", node="n", ttl=ttl)
    events = Collector(c.run_for_election())
    try:
        assert events.next(10.0) is True
        stopped_at = time.monotonic()
        stop()
        lost_at, value = events.next_timed(ttl + 2.0)
        assert value is False
        assert lost_at - stopped_at <= c.renew_deadline + 0.1, f"demoted {lost_at - stopped_at:.2f}s after the stop"
        start()
        back_at = time.monotonic()
        won_at, value = events.next_timed(ttl + 5.0)
        assert value is True
        assert won_at - back_at <= ttl + 1.0, f"re-elected {won_at - back_at:.2f}s after the {what} came back"
        assert c.is_leader
    finally:
        start()
        c.stop()
        d.close()


def prepare_0_gives_no_ticket(url: str, scheme: str) -> None:
    """``url`` (with ``?prepare=0``) yields a Discovery whose ``prepare`` gives no ticket, and a ``scheme://``
    URL with ``prepare=yes`` is refused with an error that names the option."""
    d = swarmha.connect(url)
    try:
        assert d.prepare("k", "v", 30.0) is None
    finally:
        d.close()
    with pytest.raises(InvalidDiscoveryURL, match="prepare must be 0 or 1"):
        swarmha.connect(f"{scheme}://127.0.0.1/p?prepare=yes")
