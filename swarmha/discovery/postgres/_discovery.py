"""The PostgreSQL Discovery and its sessions (see the package docstring for the design and its guarantees)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors

from swarmha.discovery._base import Discovery, Record, Session, Watch, check_key, check_ttl
from swarmha.discovery._url import DiscoveryURL
from swarmha.discovery.postgres import _conn
from swarmha.discovery.postgres._sql import SCHEMA_VERSION, SQL_FILE, Statements
from swarmha.discovery.postgres._watch import Feed, PgWatch, Row
from swarmha.errors import ConfigurationError, DiscoveryError, DiscoveryUnavailable, InvalidDiscoveryURL, SessionExpired

__all__ = ["DEFAULT_POLL", "DEFAULT_POOLED_POLL", "DEFAULT_TIMEOUT", "PostgresDiscovery"]

log = logging.getLogger("swarmha.discovery.postgres")

DEFAULT_TIMEOUT = 5.0
#: Seconds between full re-reads of the watched keys while notifications arrive (a safety net only).
DEFAULT_POLL = 5.0
#: The same behind a pooler, where the poll is how changes are seen.
DEFAULT_POOLED_POLL = 0.1
_T = TypeVar("_T")
_Conn = psycopg.Connection[Any]


class _PgSession(Session):
    """A row of ``swarmha_sessions``; its expiry is the server's ``clock_timestamp() + ttl``."""

    def __init__(self, owner: PostgresDiscovery, ttl: float, *, ticket: bool = False) -> None:
        self._owner = owner
        self.ttl = ttl
        self.id = uuid.uuid4().hex
        self.closed = False
        #: A ticket (:meth:`PostgresDiscovery.prepare`) whose row does not exist yet: the claim creates it.
        self.pending = ticket
        if not ticket:
            self.open()

    def open(self) -> None:
        """Insert the session's row (its ttl clock starts on the server now)."""
        owner = self._owner
        owner._run("session", lambda c: c.execute(owner._sql.session_open, {"id": self.id, "ttl": self.ttl}))
        self.pending = False

    def keepalive(self) -> None:
        if self.closed:
            raise SessionExpired(f"session {self.id} was closed")
        if self.pending:
            raise SessionExpired(f"session {self.id} is a ticket that never claimed a key")
        timeout = min(self._owner.timeout, max(0.5, 2.0 * self.ttl / 3.0))
        cur = self._owner._run(
            "keepalive", lambda c: c.execute(self._owner._sql.keepalive, {"id": self.id}), timeout=timeout
        )
        if cur.rowcount == 0:
            raise SessionExpired(f"session {self.id} has expired")

    def end(self) -> None:
        """Delete the session and clear its keys in one statement; raise if the server was not reached."""
        self.closed = True
        owner = self._owner
        owner._run("session close", lambda c: c.execute(owner._sql.session_close, owner._args(id=self.id)))

    def close(self) -> None:
        if self.closed:
            return
        if self.pending:  # a ticket that never claimed: nothing in the database
            self.closed = True
            return
        try:
            self.end()
        except DiscoveryError as e:
            log.debug("session %s not closed (it expires with its ttl): %s", self.id, e)


class PostgresDiscovery(Discovery):
    """Discovery over a PostgreSQL database (see the package docstring for the URL, options and guarantees)."""

    def __init__(self, url: DiscoveryURL) -> None:
        if url.scheme not in ("postgresql", "postgres"):
            raise InvalidDiscoveryURL(f"discovery URL {str(url)!r} is not a postgresql:// URL")
        self.url = url
        self.timeout = url.seconds("timeout", DEFAULT_TIMEOUT)
        poll = url.seconds("poll", 0.0) if "poll" in url.params else None
        listen = url.params.get("listen", "auto")
        if listen not in ("auto", "0", "1"):
            raise InvalidDiscoveryURL(f"postgresql URL {str(url)!r}: listen must be auto, 0 or 1, not {listen!r}")
        self._listen = listen
        schema = url.params.get("schema", "public")
        if not schema or len(schema.encode()) > 63 or "'" in schema:
            raise InvalidDiscoveryURL(
                f"postgresql URL {str(url)!r}: schema must be a name of 1 to 63 bytes without a single quote"
            )
        prefix = url.params.get("prefix", "").strip("/")
        self._prefix = prefix + "/" if prefix else ""
        self._conninfo = _conn.make_conninfo(url)
        self._sql = Statements(schema)
        self.channel = f"swarmha:{schema}"
        self._lock = threading.Lock()
        self._conn: _Conn | None = None
        self._closed = False
        self._schema_ready = False
        self._feed = Feed(
            self._feed_connect,
            self._read_many,
            self.channel,
            poll=poll or DEFAULT_POLL,
            pooled_poll=poll or DEFAULT_POOLED_POLL,
            timeout=self.timeout,
        )

    # -- connections and requests ------------------------------------------------------------------------------

    def _args(self, **kw: Any) -> dict[str, Any]:
        kw["channel"] = self.channel
        return kw

    def _open(self, deadline: float) -> _Conn:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DiscoveryUnavailable(f"postgresql at {str(self.url)!r}: no time left to connect")
        return _conn.connect(self.url, self._conninfo, left)

    def _run(self, what: str, fn: Callable[[_Conn], _T], timeout: float | None = None) -> _T:
        """Run ``fn`` on the request connection within ``timeout`` (default: the URL's); translate errors.

        A request that failed on a connection opened earlier (the server may have restarted since) is tried once
        more on a new connection: every request here is safe to repeat (a claim recognises its own key).
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise DiscoveryUnavailable(f"postgresql {what} at {str(self.url)!r}: the connection stayed busy")
        try:
            if not self._schema_ready:
                self._ensure_schema(deadline)
            for attempt in (0, 1):
                if self._closed:
                    raise DiscoveryError(f"postgresql discovery {str(self.url)!r} is closed")
                fresh = self._conn is None
                conn = self._conn if self._conn is not None else self._open(deadline)
                self._conn = conn
                assert isinstance(conn, _conn.BoundedConnection)
                conn.deadline = deadline
                try:
                    return fn(conn)
                except psycopg.Error as e:
                    error = _conn.translate(self.url, e, what)
                    if isinstance(error, DiscoveryUnavailable) or conn.closed or conn.broken:
                        self._drop()
                        if attempt == 0 and not fresh and time.monotonic() < deadline:
                            log.debug("postgresql %s failed on an old connection (%s); trying a new one", what, e)
                            continue
                    raise error from None
                finally:
                    conn.deadline = None
            raise AssertionError("unreachable")
        finally:
            self._lock.release()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _ensure_schema(self, deadline: float) -> None:
        """Check (and on first use create) the tables and functions. Caller holds ``_lock``."""
        if self._conn is None:
            self._conn = self._open(deadline)
        conn = self._conn
        assert isinstance(conn, _conn.BoundedConnection)
        conn.deadline = deadline
        try:
            try:
                row = conn.execute(self._sql.version).fetchone()
                if row is not None and row[0] == SCHEMA_VERSION:
                    self._schema_ready = True
                    return
            except (pg_errors.UndefinedFunction, pg_errors.InvalidSchemaName, pg_errors.UndefinedTable):
                pass
            self._create_schema(conn)
            self._schema_ready = True
        except psycopg.Error as e:
            error = _conn.translate(self.url, e, "schema check")
            if isinstance(error, DiscoveryUnavailable):
                self._drop()
            raise error from None
        finally:
            conn.deadline = None

    def _create_schema(self, conn: _Conn) -> None:
        """Create the schema's objects in one transaction under a transaction-level advisory lock (several
        processes may race here; the lock is released at commit, so a transaction pooler is fine)."""
        schema = self._sql.schema
        try:
            with conn.transaction():
                conn.execute(self._sql.lock)
                if schema != "public":
                    conn.execute(self._sql.create_schema)
                for statement in self._sql.ddl:
                    conn.execute(statement)
        except pg_errors.InsufficientPrivilege as e:
            raise DiscoveryError(
                f"postgresql URL {str(self.url)!r}: the role {self.url.username or '(default)'} may not create "
                f"swarmha's tables in schema {schema!r} ({_conn._first_line(e)}). Have them created once with "
                f"the SQL file {str(SQL_FILE)!r} (psql -f swarmha-postgres.sql, as a role that may), then grant "
                "this role SELECT, INSERT, UPDATE, DELETE on them, USAGE on the sequence swarmha_token and EXECUTE on "
                "their functions"
            ) from None
        log.info("created swarmha's tables in schema %r", schema)

    def _feed_connect(self) -> tuple[_Conn, bool]:
        """The watch thread's connection, and whether it may LISTEN (not behind a pooler)."""
        conn = self._open(time.monotonic() + self.timeout)
        if self._listen != "auto":
            return conn, self._listen == "1"
        assert isinstance(conn, _conn.BoundedConnection)
        conn.deadline = time.monotonic() + self.timeout
        try:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
        finally:
            conn.deadline = None
        # A pooler answers the startup with a backend key of its own: the pid differs from the server's.
        pooled = row is None or row[0] != conn.info.backend_pid
        if pooled:
            log.info("postgresql at %s is behind a pooler: watches poll instead of LISTEN", self.url)
        return conn, not pooled

    def _read_many(self, conn: _Conn, keys: list[str]) -> dict[str, Row]:
        assert isinstance(conn, _conn.BoundedConnection)
        conn.deadline = time.monotonic() + self.timeout
        try:
            rows = conn.execute(self._sql.get_many, {"keys": keys}).fetchall()
        finally:
            conn.deadline = None
        return {str(r[0]): (_record(r), None if r[4] is None else float(r[4])) for r in rows}

    def _k(self, key: str) -> str:
        return self._prefix + check_key(key)

    @staticmethod
    def _own(session: Session) -> _PgSession:
        if not isinstance(session, _PgSession):
            raise ConfigurationError(f"{session!r} is not a session of a postgresql discovery")
        if session.closed:
            raise SessionExpired(f"session {session.id} was closed")
        return session

    # -- the Discovery contract ------------------------------------------------------------------------------

    def session(self, ttl: float) -> Session:
        return _PgSession(self, check_ttl(ttl))

    def prepare(self, key: str, value: str, ttl: float, *, listing: str | None = None) -> Session | None:
        """A ticket that costs nothing until used: its session row is created by the claim that uses it, in the
        same transaction, and only if the claim succeeds. So a candidate that waited claims in one round trip
        instead of two (a session, then the claim), and its ttl clock starts at the claim (``clock`` is None).
        A claim that fails leaves nothing in the database; the ticket can be used again."""
        try:
            return _PgSession(self, check_ttl(ttl), ticket=True)
        except DiscoveryError:
            return None

    def create(self, key: str, value: str, session: Session) -> Record | None:
        """Claim ``key`` in one call of ``swarmha_claim`` (one transaction); token = the key's counter + 1."""
        own = self._own(session)
        new_ttl = own.ttl if own.pending else None
        args = self._args(key=self._k(key), value=value, id=own.id, new_ttl=new_ttl)
        row = self._run("create", lambda c: c.execute(self._sql.claim, args).fetchone())
        if row is None or not row[0]:
            return None
        own.pending = False
        return Record(str(row[1]), int(row[2]), str(row[3]))

    def put(self, key: str, value: str, session: Session | None = None) -> Record:
        if isinstance(session, _PgSession) and session.pending and not session.closed:
            session.open()
        sid = None if session is None else self._own(session).id
        args = self._args(key=self._k(key), value=value, id=sid)
        row = self._run("put", lambda c: c.execute(self._sql.put, args).fetchone())
        assert row is not None
        return Record(value, int(row[0]), sid)

    def get(self, key: str) -> Record | None:
        row = self._run("get", lambda c: c.execute(self._sql.get, {"key": self._k(key)}).fetchone())
        return None if row is None else _record(row)

    def delete(self, key: str, token: int) -> bool:
        args = self._args(key=self._k(key), token=int(token))
        cur = self._run("delete", lambda c: c.execute(self._sql.delete, args))
        return cur.rowcount > 0

    def release(self, key: str, token: int, session: Session) -> None:
        """End the session in one statement that also clears its keys (``key`` among them while it is still the
        session's: a successor's key has a session of its own). Raises when the server was not reached."""
        if not isinstance(session, _PgSession):
            raise ConfigurationError(f"{session!r} is not a session of a postgresql discovery")
        if session.pending:
            session.closed = True
        elif not session.closed:
            session.end()

    def list(self, prefix: str) -> Mapping[str, Record]:
        p = self._k(prefix) + "/"
        rows = self._run("list", lambda c: c.execute(self._sql.list, {"prefix": p}).fetchall())
        skip = len(self._prefix)
        return {str(r[0])[skip:]: _record(r) for r in rows}

    def watch(self, key: str, seen: Record | None) -> Watch:
        watch = PgWatch(self._feed, self._k(key), seen)
        self._feed.add(watch)
        return watch

    def close(self) -> None:
        """Close every watch (and the watch thread) and the connection. Sessions are left to expire. Idempotent."""
        self._feed.close()
        with self._lock:
            self._closed = True
            self._drop()


def _record(row: Any) -> Record:
    return Record(str(row[1]), int(row[2]), None if row[3] is None else str(row[3]))
