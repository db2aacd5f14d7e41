"""The Discovery contract over Redis: sessions, the scripts of :mod:`._scripts`, and watches from :mod:`._watch`."""

from __future__ import annotations

import contextlib
import math
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import attrs

from swarmha.discovery._base import Discovery, Record, Session, Watch, check_key, check_ttl
from swarmha.discovery._url import DiscoveryURL
from swarmha.discovery.redis import _scripts
from swarmha.discovery.redis._client import Link, Target
from swarmha.discovery.redis._watch import Hub, RedisWatch, glob_escape
from swarmha.errors import ConfigurationError, DiscoveryError, SessionExpired

__all__ = ["RedisDiscovery"]

_CACHE_LIMIT = 1024


@attrs.frozen
class _Read:
    """What a read (or a create) saw: the record, when its session expires by the server, the hub's event count."""

    record: Record | None
    deadline: float | None
    seq: int


def _ms(ttl: float) -> int:
    return max(1, math.ceil(ttl * 1000.0))


class RedisSession(Session):
    """A key ``<ns>session/<id>`` with a server-side expiry of ``ttl``; see the package docstring.

    A *ticket* (:meth:`RedisDiscovery.prepare`) is not stored until a ``create`` claims a key with it: that script
    writes the session key with its full ttl in the same step, so the claim is one round trip and the ttl clock
    starts on the server after the call was sent.
    """

    def __init__(self, discovery: RedisDiscovery, ttl: float, *, ticket: bool = False) -> None:
        self._d = discovery
        self.ttl = ttl
        self.ms = _ms(ttl)
        self.id = uuid.uuid4().hex
        self.ticket = ticket
        self._closed = False
        if not ticket:
            discovery._run("session", _scripts.OPEN, [], [self.id, self.ms])

    def keepalive(self) -> None:
        if self._closed or self.ticket:
            raise SessionExpired(
                f"redis session {self.id} was closed" if self._closed else f"ticket {self.id} holds no key"
            )
        if not int(self._d._run("keepalive", _scripts.KEEPALIVE, [], [self.id, self.ms])):
            raise SessionExpired(f"redis session {self.id} expired")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.ticket:
            return  # never stored
        with contextlib.suppress(DiscoveryError):  # not reached: it expires with its ttl
            self._d._run("close session", _scripts.CLOSE, [], [self.id])

    def release(self) -> None:
        """Close now, raising a DiscoveryError when the server was not reached (the keys then expire with it)."""
        self._closed = True
        if not self.ticket:
            self._d._run("release", _scripts.CLOSE, [], [self.id])


class RedisDiscovery(Discovery):
    """Discovery over one Redis server (or a Sentinel-managed primary); see the package docstring."""

    def __init__(self, url: DiscoveryURL) -> None:
        self.url = url
        self.target = Target.parse(url)
        prefix = self.target.prefix
        self._data_prefix = prefix + "/" if prefix else ""
        self._ns = prefix + "//"
        self._index = self._ns + "index"
        self._link = Link(self.target)
        self._scripts: dict[str, Any] = {}
        pattern = f"__keyspace@{self.target.db}__:" + (glob_escape(prefix) + "/*" if prefix else "*")
        self._hub = Hub(self._link, self._ns, pattern, self._read_many, self._check)
        self._lock = threading.Lock()
        self._reads: dict[str, _Read] = {}
        self._closed = False

    # -- plumbing ------------------------------------------------------------------------------------------

    def _run(self, what: str, source: str, keys: list[str], args: list[object]) -> Any:
        """Run a script (EVALSHA, loading it on NOSCRIPT) with the namespace as ARGV[1]."""
        if self._closed:
            raise DiscoveryError(f"redis discovery {self.url} is closed")

        def run(client: Any) -> Any:
            script = self._scripts.get(source)
            if script is None:
                script = self._scripts[source] = client.register_script(source)
            return script(keys=keys, args=[self._ns, *args], client=client)

        return self._link.call(what, run)

    def _k(self, key: str) -> str:
        return self._data_prefix + check_key(key)

    def _record(self, row: Any) -> tuple[Record | None, int]:
        """(Record, session pttl in ms) from a GET/READ_MANY row."""
        if not row:
            return None, -1
        value, token, session, pttl = row[:4]
        return Record(str(value), int(token), str(session) or None), int(pttl)

    def _remember(self, key: str, read: _Read) -> None:
        with self._lock:
            if key not in self._reads and len(self._reads) >= _CACHE_LIMIT:
                self._reads.pop(next(iter(self._reads)))
            self._reads[key] = read

    def _read(self, key: str) -> _Read:
        seq = self._hub.seq
        sent = time.monotonic()
        row = self._run("get", _scripts.GET, [key], [])
        record, pttl = self._record(row)
        deadline = sent + pttl / 1000.0 if record is not None and record.session is not None and pttl >= 0 else None
        read = _Read(record, deadline, seq)
        self._remember(key, read)
        if record is not None and record.session is not None and deadline is not None:
            ttl = str(row[4])
            self._hub.note_session(record.session, deadline, int(ttl) if ttl.isdigit() else None)
        return read

    def _read_many(self, keys: list[str]) -> list[Record | None]:
        rows = self._run("poll", _scripts.READ_MANY, keys, [])
        return [self._record(row)[0] for row in rows]

    def _check(self, sid: str) -> tuple[int, int | None]:
        """(PTTL of session ``sid`` in ms, -2 if gone; its ttl in ms if known)."""
        pttl, ttl = self._run("session check", _scripts.CHECK, [], [sid])
        return int(pttl), int(ttl) if ttl is not None and str(ttl).isdigit() else None

    @staticmethod
    def _own(session: Session) -> RedisSession:
        if not isinstance(session, RedisSession):
            raise ConfigurationError(f"{session!r} is not a session of a redis discovery")
        return session

    # -- the Discovery contract ----------------------------------------------------------------------------

    def session(self, ttl: float) -> Session:
        """A new session: ``SET <ns>session/<id> PX ttl``."""
        return RedisSession(self, check_ttl(ttl))

    def prepare(self, key: str, value: str, ttl: float, *, listing: str | None = None) -> Session | None:
        """A ticket: a session stored only by the ``create`` that claims with it (one round trip instead of two)."""
        return RedisSession(self, check_ttl(ttl), ticket=True)

    def create(self, key: str, value: str, session: Session) -> Record | None:
        own = self._own(session)
        if own._closed:
            raise SessionExpired(f"redis session {own.id} was closed")
        k = self._k(key)
        seq = self._hub.seq
        sent = time.monotonic()
        result = self._run(
            "create",
            _scripts.CREATE,
            [k, self._ns + "token/" + k, self._index],
            [own.id, value, own.ms if own.ticket else ""],
        )
        status = int(result[0])
        if status < 0:
            raise SessionExpired(f"redis session {own.id} expired")
        if status == 0:
            return None
        own.ticket = False  # stored now
        record = Record(value, int(result[1]), own.id)
        self._remember(k, _Read(record, sent + own.ttl, seq))
        return record

    def put(self, key: str, value: str, session: Session | None = None) -> Record:
        k = self._k(key)
        own = None if session is None else self._own(session)
        if own is not None and (own._closed or own.ticket):
            raise SessionExpired(
                f"redis session {own.id} was closed" if own._closed else f"ticket {own.id} holds no key"
            )
        result = self._run(
            "put", _scripts.PUT, [k, self._ns + "token/" + k, self._index], [value, "" if own is None else own.id]
        )
        if int(result[0]) < 0:
            assert own is not None
            raise SessionExpired(f"redis session {own.id} expired")
        return Record(value, int(result[1]), None if own is None else own.id)

    def get(self, key: str) -> Record | None:
        return self._read(self._k(key)).record

    def delete(self, key: str, token: int) -> bool:
        k = self._k(key)
        seq = self._hub.seq
        deleted = bool(int(self._run("delete", _scripts.DELETE, [k, self._index], [str(token)])))
        if deleted:
            self._remember(k, _Read(None, None, seq))
        return deleted

    def release(self, key: str, token: int, session: Session) -> None:
        """Hand over ``key`` by closing the session: one script deletes the session and every key still bound to
        it (``key`` among them while it is the one the session created; a successor's key has its own session)."""
        own = self._own(session)
        if not own._closed:
            own.release()

    def list(self, prefix: str) -> Mapping[str, Record]:
        p = self._k(prefix)
        flat = self._run("list", _scripts.LIST, [self._index], [p + "/", p + "0"])  # "0" follows "/"
        skip = len(self._data_prefix)
        out: dict[str, Record] = {}
        for i in range(0, len(flat), 4):
            key, value, token, session = flat[i : i + 4]
            out[str(key)[skip:]] = Record(str(value), int(token), str(session) or None)
        return out

    def watch(self, key: str, seen: Record | None) -> Watch:
        """A watch from the state the caller read (read again if that read is not known to predate no event)."""
        k = self._k(key)
        self._hub.ready()
        with self._lock:
            known = self._reads.get(k)
        if known is not None and known.record == seen and known.seq >= self._hub.floor:
            read, changed = known, False
        else:
            read = self._read(k)
            changed = read.record != seen
        watch = RedisWatch(self._hub, k, seen, changed, read.deadline if not changed else None)
        if not self._hub.add(watch, read.seq):
            try:
                watch.observe(self._read(k).record)
            except BaseException:
                watch.close()
                raise
        return watch

    def close(self) -> None:
        """Close every watch (and the hub's thread) and the connections. Sessions are left to expire. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._hub.close()
        self._link.close()
