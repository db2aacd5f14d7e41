"""``memory://NAME[/prefix]``: an in-process store shared by every Discovery opened with the same NAME.

For tests and examples. It keeps the full Discovery contract (TTL sessions that really expire, atomic
create, a strictly increasing token counter, watches that never miss a change) inside one process.
Expiry is driven by whoever looks: any operation or waiting watch expires sessions whose TTL has passed,
so a waiting candidate sees a crashed leader's key vanish exactly at its expiry, with no reaper thread.

:attr:`MemoryStore.available` can be set to False to make every operation raise
:class:`~swarmha.errors.DiscoveryUnavailable`: the in-process way to rehearse a store outage.
:meth:`MemoryStore.stall` makes every operation block until :meth:`MemoryStore.resume`: a store that hangs.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Mapping

from swarmha.discovery._base import Discovery, Record, Session, Watch, check_key, check_ttl
from swarmha.discovery._url import DiscoveryURL
from swarmha.errors import DiscoveryUnavailable, InvalidDiscoveryURL, SessionExpired

__all__ = ["MemoryDiscovery", "MemoryStore", "store"]

_stores: dict[str, MemoryStore] = {}
_stores_lock = threading.Lock()


def store(name: str) -> MemoryStore:
    """The shared store called ``name`` (created on first use)."""
    with _stores_lock:
        return _stores.setdefault(name, MemoryStore())


class MemoryStore:
    """The state behind ``memory://NAME``; all access holds :attr:`cond`."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.kv: dict[str, Record] = {}
        self.sessions: dict[str, float] = {}  # id -> expiry on the monotonic clock
        self.available = True
        self._stalled = False
        self._tokens = itertools.count(1)
        self._ids = itertools.count(1)
        self.wakers: set[Callable[[], None]] = set()  # Watch.notify callbacks: called on every change

    def changed(self) -> None:
        """Wake every waiter: blocked ``wait`` calls and notified watches. Caller holds :attr:`cond`."""
        self.cond.notify_all()
        for waker in list(self.wakers):
            waker()

    def stall(self) -> None:
        """Make every operation block (as on a hung server) until :meth:`resume`."""
        with self.cond:
            self._stalled = True

    def resume(self) -> None:
        with self.cond:
            self._stalled = False
            self.changed()

    def check(self) -> None:
        """Raise if the store is marked unavailable; expire what is due. Caller holds :attr:`cond`."""
        while self._stalled:
            self.cond.wait()
        if not self.available:
            raise DiscoveryUnavailable("memory store is marked unavailable")
        now = time.monotonic()
        dead = [sid for sid, exp in self.sessions.items() if exp <= now]
        for sid in dead:
            self._drop_session(sid)

    def _drop_session(self, sid: str) -> None:
        self.sessions.pop(sid, None)
        for k in [k for k, r in self.kv.items() if r.session == sid]:
            del self.kv[k]
        self.changed()

    def new_session(self, ttl: float) -> str:
        sid = f"mem-{next(self._ids)}"
        self.sessions[sid] = time.monotonic() + ttl
        return sid

    def next_token(self) -> int:
        return next(self._tokens)

    def next_expiry(self) -> float | None:
        return min(self.sessions.values(), default=None)


def _nothing() -> None:
    pass


class _MemorySession(Session):
    def __init__(self, st: MemoryStore, ttl: float) -> None:
        self._store = st
        self.ttl = ttl
        with st.cond:
            st.check()
            self.id = st.new_session(ttl)

    def keepalive(self) -> None:
        with self._store.cond:
            self._store.check()
            if self.id not in self._store.sessions:
                raise SessionExpired(f"session {self.id} expired")
            self._store.sessions[self.id] = time.monotonic() + self.ttl

    def close(self) -> None:
        with self._store.cond:
            if self._store.available:
                self._store._drop_session(self.id)


class _MemoryWatch(Watch):
    def __init__(self, st: MemoryStore, key: str, seen: Record | None) -> None:
        self._store = st
        self._key = key
        self._seen = seen
        self._closed = False
        self._waker: Callable[[], None] = _nothing

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        st = self._store
        with st.cond:
            while True:
                if self._closed:
                    return False
                st.check()
                current = st.kv.get(self._key)
                if current != self._seen:
                    self._seen = current
                    return True
                now = time.monotonic()
                wake = [t for t in (deadline, st.next_expiry()) if t is not None]
                if deadline is not None and now >= deadline:
                    return False
                st.cond.wait(max(0.0, min(wake) - now) if wake else None)

    def notify(self, callback: Callable[[], None]) -> bool:
        with self._store.cond:
            self._waker = callback
            if not self._closed:
                self._store.wakers.add(callback)
        return True

    def recheck_at(self) -> float | None:
        return self._store.next_expiry()  # sessions expire by the clock: look again then

    def close(self) -> None:
        with self._store.cond:
            self._closed = True
            self._store.wakers.discard(self._waker)
            self._store.changed()


class MemoryDiscovery(Discovery):
    """Discovery over the in-process store ``memory://NAME``; the URL path is the key prefix."""

    def __init__(self, url: DiscoveryURL) -> None:
        if len(url.hosts) != 1 or url.hosts[0][1] is not None:
            raise InvalidDiscoveryURL(f"memory URL {str(url)!r} must name one store: memory://NAME[/prefix]")
        self.url = url
        self._store = store(url.hosts[0][0])
        self._prefix = url.path + "/" if url.path else ""

    @property
    def store(self) -> MemoryStore:
        """The shared store behind this Discovery (set ``available`` to rehearse an outage)."""
        return self._store

    def _k(self, key: str) -> str:
        return self._prefix + check_key(key)

    def session(self, ttl: float) -> Session:
        return _MemorySession(self._store, check_ttl(ttl))

    def create(self, key: str, value: str, session: Session) -> Record | None:
        k = self._k(key)
        with self._store.cond:
            self._store.check()
            if session.id not in self._store.sessions:
                raise SessionExpired(f"session {session.id} expired")
            if k in self._store.kv:
                return None
            rec = Record(value, self._store.next_token(), session.id)
            self._store.kv[k] = rec
            self._store.changed()
            return rec

    def put(self, key: str, value: str, session: Session | None = None) -> Record:
        k = self._k(key)
        with self._store.cond:
            self._store.check()
            if session is not None and session.id not in self._store.sessions:
                raise SessionExpired(f"session {session.id} expired")
            old = self._store.kv.get(k)
            token = old.token if old is not None else self._store.next_token()
            rec = Record(value, token, session.id if session else None)
            self._store.kv[k] = rec
            self._store.changed()
            return rec

    def get(self, key: str) -> Record | None:
        k = self._k(key)
        with self._store.cond:
            self._store.check()
            return self._store.kv.get(k)

    def delete(self, key: str, token: int) -> bool:
        k = self._k(key)
        with self._store.cond:
            self._store.check()
            rec = self._store.kv.get(k)
            if rec is None or rec.token != token:
                return False
            del self._store.kv[k]
            self._store.changed()
            return True

    def list(self, prefix: str) -> Mapping[str, Record]:
        p = self._k(prefix) + "/"
        with self._store.cond:
            self._store.check()
            return {k[len(self._prefix) :]: r for k, r in self._store.kv.items() if k.startswith(p)}

    def watch(self, key: str, seen: Record | None) -> Watch:
        return _MemoryWatch(self._store, self._k(key), seen)

    def close(self) -> None:
        """Nothing to release: the store outlives its connections."""
