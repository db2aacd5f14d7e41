"""``sqlite:///path/to/file.db[?prefix=P&timeout=S&poll=S]``: the embedded default, one host, no server.

Several processes on one host elect a leader through one file. What makes that safe and fast:

* WAL journal; every write is one ``BEGIN IMMEDIATE`` transaction, so create-if-absent is atomic across
  processes, and the fencing token is a counter stored in the same file (strictly increasing forever).
* Sessions carry an expiry on ``CLOCK_MONOTONIC``, which Linux shares between all processes of one boot and
  which keeps running while a process is stopped. The boot id is stored with the data: a file opened after
  a reboot drops every session of the previous boot (their clock readings mean nothing any more).
* A key bound to an expired session is invisible to every read at once, before any write purges it; the
  next write transaction purges it. So expiry needs no reaper process.
* Change detection: every committed write touches a companion file ``<db>-notify``; on Linux one thread
  per :class:`SqliteDiscovery` waits on it with inotify while at least one watch is open, checks
  ``PRAGMA data_version`` (a shared-memory read) and wakes the watches. The touch comes after the commit,
  so the change is visible when the event arrives: a graceful handover is noticed within a millisecond or
  so, with no periodic work. ``data_version`` is also polled every ``poll`` seconds as a safety net
  (default 0.1 s with inotify, 5 ms without it, e.g. off Linux). A watch also wakes by itself at the
  expiry of the session that holds its key, so a crash is noticed at the expiry, not a poll later.
  No fixed sleep decides failover time. With no watch open, no thread runs.

Paths: ``sqlite:///var/lib/x.db`` is absolute, ``sqlite://x.db`` relative to the working directory.
The directory must exist; the file is created on first use. ``timeout`` (default 5 s) bounds how long one
operation waits for the file lock; past it the operation raises
:class:`~swarmha.errors.DiscoveryUnavailable`. A network file system voids the guarantees (SQLite's
locking and shared memory do not work there): keep the file on a local disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from swarmha.discovery._base import Discovery, Record, Session, Watch, check_key, check_ttl
from swarmha.discovery._url import DiscoveryURL
from swarmha.errors import DiscoveryError, DiscoveryUnavailable, InvalidDiscoveryURL, SessionExpired

__all__ = ["SqliteDiscovery"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, ttl REAL NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    token INTEGER NOT NULL,
    session TEXT
);
CREATE INDEX IF NOT EXISTS kv_session ON kv (session);
"""

# A row is live if it has no session or its session has not expired by the caller's clock reading.
_LIVE_SELECT = """
SELECT kv.key, kv.value, kv.token, kv.session, s.expires FROM kv LEFT JOIN sessions s ON s.id = kv.session
"""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:  # not Linux: monotonic readings cannot be compared across processes reliably
        return "unknown"


def _float_param(url: DiscoveryURL, name: str, default: float) -> float:
    raw = url.params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise InvalidDiscoveryURL(f"sqlite URL {str(url)!r}: {name}={raw!r} must be a positive number of seconds")
    return value


class _Inotify:
    """A minimal inotify watch on one file (Linux only), for the change-detection thread."""

    _IN_MODIFY, _IN_ATTRIB, _IN_CLOEXEC, _IN_NONBLOCK = 0x2, 0x4, 0o2000000, 0o4000

    def __init__(self, path: str) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(self._IN_CLOEXEC | self._IN_NONBLOCK)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if libc.inotify_add_watch(fd, os.fsencode(path), self._IN_MODIFY | self._IN_ATTRIB) < 0:
            os.close(fd)
            raise OSError(ctypes.get_errno(), f"inotify_add_watch({path!r}) failed")
        self.fd = fd

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 65536):
                pass

    def close(self) -> None:
        os.close(self.fd)


def _open_inotify(path: str) -> _Inotify | None:
    try:
        return _Inotify(path)
    except (OSError, AttributeError):  # not Linux, or inotify limits reached: fall back to polling
        return None


class _SqliteSession(Session):
    def __init__(self, owner: SqliteDiscovery, ttl: float) -> None:
        self._owner = owner
        self.ttl = ttl
        self.id = uuid.uuid4().hex
        with owner._write() as conn:
            conn.execute(
                "INSERT INTO sessions (id, ttl, expires) VALUES (?, ?, ?)", (self.id, ttl, time.monotonic() + ttl)
            )

    def keepalive(self) -> None:
        with self._owner._write() as conn:
            cur = conn.execute("UPDATE sessions SET expires = ? WHERE id = ?", (time.monotonic() + self.ttl, self.id))
            if cur.rowcount == 0:
                raise SessionExpired(f"session {self.id} expired")

    def close(self) -> None:
        with contextlib.suppress(DiscoveryError), self._owner._write() as conn:
            conn.execute("DELETE FROM kv WHERE session = ?", (self.id,))
            conn.execute("DELETE FROM sessions WHERE id = ?", (self.id,))


class _SqliteWatch(Watch):
    def __init__(self, owner: SqliteDiscovery, key: str, seen: Record | None) -> None:
        self._owner = owner
        self._key = key
        self._seen = seen
        self._closed = False
        owner._watch_opened()

    def wait(self, timeout: float | None = None) -> bool:
        owner = self._owner
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with owner._changed:
                generation = owner._generation
                if self._closed:
                    return False
            current, expires = owner._read(self._key)
            if current != self._seen:
                self._seen = current
                return True
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            wake = [t for t in (deadline, expires) if t is not None]
            with owner._changed:
                if owner._generation == generation and not self._closed:
                    owner._changed.wait(max(0.0, min(wake) - now) if wake else None)

    def close(self) -> None:
        with self._owner._changed:
            if self._closed:
                return
            self._closed = True
            self._owner._changed.notify_all()
        self._owner._watch_closed()


class SqliteDiscovery(Discovery):
    """Discovery over one SQLite file shared by the processes of one host (see the module docstring)."""

    def __init__(self, url: DiscoveryURL) -> None:
        path = url.raw[len(url.scheme) + 3 :].split("?", 1)[0]
        if not path or path.endswith("/"):
            raise InvalidDiscoveryURL(f"sqlite URL {str(url)!r} names no file: expected sqlite:///path/to/file.db")
        self.url = url
        self.path = path
        prefix = url.params.get("prefix", "").strip("/")
        self._prefix = prefix + "/" if prefix else ""
        self._timeout = _float_param(url, "timeout", 5.0)
        self._notify_path = path + "-notify"
        self._inotify_ok = sys.platform.startswith("linux")
        self._poll = _float_param(url, "poll", 0.1 if self._inotify_ok else 0.005)
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._generation = 0
        self._watchers = 0
        self._poller: threading.Thread | None = None
        self._closed = False
        if not Path(path).parent.is_dir():
            raise InvalidDiscoveryURL(f"sqlite URL {str(url)!r}: directory {str(Path(path).parent)!r} does not exist")
        self._conn = self._connect()
        self._schema_ready = False
        # A file locked by another writer right now is a store error like any other: the first operation
        # creates the schema instead (and raises DiscoveryUnavailable, which a campaign retries), so a
        # process started during an outage does not die in connect().
        with contextlib.suppress(DiscoveryUnavailable):
            self._init_schema()
        self._wake_r, self._wake_w = os.pipe()

    # -- connections and transactions ----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as e:
            raise DiscoveryUnavailable(f"cannot open sqlite file {self.path!r}: {e}") from e
        return conn

    def _ready(self) -> None:
        """Create the schema now if the constructor could not (the file was locked then)."""
        if not self._schema_ready:
            self._init_schema()

    def _init_schema(self) -> None:
        with self._write(purge=False) as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('token', '0')")
            boot = _boot_id()
            row = conn.execute("SELECT value FROM meta WHERE name = 'boot_id'").fetchone()
            if row is None or row[0] != boot:
                # Sessions of another boot carry readings of another monotonic clock: they are all dead.
                conn.execute("DELETE FROM kv WHERE session IS NOT NULL")
                conn.execute("DELETE FROM sessions")
                conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('boot_id', ?)", (boot,))
        self._schema_ready = True

    @contextlib.contextmanager
    def _write(self, purge: bool = True) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction that first purges expired sessions and their keys."""
        if purge:
            self._ready()
        with self._lock:
            if self._closed:
                raise DiscoveryError(f"sqlite discovery {self.path!r} is closed")
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise DiscoveryUnavailable(f"sqlite file {self.path!r} is locked or unreadable: {e}") from e
            try:
                if purge:
                    now = time.monotonic()
                    conn.execute("DELETE FROM kv WHERE session IN (SELECT id FROM sessions WHERE expires <= ?)", (now,))
                    conn.execute("DELETE FROM sessions WHERE expires <= ?", (now,))
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise DiscoveryUnavailable(f"sqlite commit to {self.path!r} failed: {e}") from e
            self._touch_notify()

    def _touch_notify(self) -> None:
        """Tell the change-detection threads of every process that a commit is visible now."""
        try:
            os.utime(self._notify_path)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                Path(self._notify_path).touch()
        except OSError:
            pass

    def _query(self, sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        self._ready()
        with self._lock:
            if self._closed:
                raise DiscoveryError(f"sqlite discovery {self.path!r} is closed")
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise DiscoveryUnavailable(f"sqlite read from {self.path!r} failed: {e}") from e

    @staticmethod
    def _record(row: tuple[object, ...], now: float) -> Record | None:
        _, value, token, session, expires = row
        if session is not None and (expires is None or float(expires) <= now):  # type: ignore[arg-type]
            return None
        return Record(str(value), int(token), None if session is None else str(session))  # type: ignore[call-overload]

    def _read(self, full_key: str) -> tuple[Record | None, float | None]:
        """The live record of ``full_key`` and the monotonic time its session expires (None: never)."""
        rows = self._query(_LIVE_SELECT + " WHERE kv.key = ?", (full_key,))
        if not rows:
            return None, None
        record = self._record(rows[0], time.monotonic())
        expires = rows[0][4]
        return record, None if record is None or expires is None else float(expires)  # type: ignore[arg-type]

    def _k(self, key: str) -> str:
        return self._prefix + check_key(key)

    # -- the Discovery contract --------------------------------------------------------------------------

    def session(self, ttl: float) -> Session:
        return _SqliteSession(self, check_ttl(ttl))

    def create(self, key: str, value: str, session: Session) -> Record | None:
        k = self._k(key)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session.id,)).fetchone() is None:
                raise SessionExpired(f"session {session.id} expired")
            if conn.execute("SELECT 1 FROM kv WHERE key = ?", (k,)).fetchone() is not None:
                return None
            token = self._next_token(conn)
            conn.execute(
                "INSERT INTO kv (key, value, token, session) VALUES (?, ?, ?, ?)", (k, value, token, session.id)
            )
        return Record(value, token, session.id)

    @staticmethod
    def _next_token(conn: sqlite3.Connection) -> int:
        row = conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'token' RETURNING value").fetchone()
        return int(row[0])

    def put(self, key: str, value: str, session: Session | None = None) -> Record:
        k = self._k(key)
        sid = None if session is None else session.id
        with self._write() as conn:
            if sid is not None and conn.execute("SELECT 1 FROM sessions WHERE id = ?", (sid,)).fetchone() is None:
                raise SessionExpired(f"session {sid} expired")
            row = conn.execute("SELECT token FROM kv WHERE key = ?", (k,)).fetchone()
            token = int(row[0]) if row is not None else self._next_token(conn)
            conn.execute(
                "INSERT OR REPLACE INTO kv (key, value, token, session) VALUES (?, ?, ?, ?)", (k, value, token, sid)
            )
        return Record(value, token, sid)

    def get(self, key: str) -> Record | None:
        return self._read(self._k(key))[0]

    def delete(self, key: str, token: int) -> bool:
        k = self._k(key)
        with self._write() as conn:
            return conn.execute("DELETE FROM kv WHERE key = ? AND token = ?", (k, token)).rowcount > 0

    def list(self, prefix: str) -> Mapping[str, Record]:
        p = self._k(prefix) + "/"
        pattern = p.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._query(_LIVE_SELECT + " WHERE kv.key LIKE ? ESCAPE '\\'", (pattern,))
        now = time.monotonic()
        out: dict[str, Record] = {}
        for row in rows:
            record = self._record(row, now)
            if record is not None:
                out[str(row[0])[len(self._prefix) :]] = record
        return out

    def watch(self, key: str, seen: Record | None) -> Watch:
        return _SqliteWatch(self, self._k(key), seen)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            poller = self._poller
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if poller is not None and poller is not threading.current_thread():
            poller.join()
        with self._lock:
            self._conn.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- change detection ----------------------------------------------------------------------------------

    def _watch_opened(self) -> None:
        with self._changed:
            self._watchers += 1
            if self._poller is None and not self._closed:
                self._poller = threading.Thread(target=self._poll_loop, name="swarmha-sqlite-poller", daemon=True)
                self._poller.start()

    def _watch_closed(self) -> None:
        with self._changed:
            self._watchers -= 1

    def _poll_loop(self) -> None:
        """Wake the watches on every commit until no watch is open. Never dies of a transient error."""
        conn: sqlite3.Connection | None = None
        inotify: _Inotify | None = None
        version = None
        try:
            while True:
                with self._changed:
                    if self._closed or self._watchers <= 0:
                        self._poller = None
                        return
                try:
                    if conn is None:
                        conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
                        Path(self._notify_path).touch(exist_ok=True)
                        inotify = _open_inotify(self._notify_path) if self._inotify_ok else None
                    current = conn.execute("PRAGMA data_version").fetchone()[0]
                except (sqlite3.Error, OSError):
                    current = None  # treated as a change below: the watches re-read and see for themselves
                if current is None or current != version:
                    version = current
                    with self._changed:
                        self._generation += 1
                        self._changed.notify_all()
                waitables = [self._wake_r] + ([inotify.fd] if inotify is not None else [])
                ready, _, _ = select.select(waitables, [], [], self._poll)
                if inotify is not None and inotify.fd in ready:
                    inotify.drain()
        finally:
            with self._changed:
                if self._poller is threading.current_thread():
                    self._poller = None
            if inotify is not None:
                inotify.close()
            if conn is not None:
                conn.close()
