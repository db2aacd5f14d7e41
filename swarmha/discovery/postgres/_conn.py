"""Connections of the PostgreSQL backend: the libpq connection string a URL makes, opening a connection with
every refusal translated into an error naming its cause, and a deadline on every round trip.

psycopg blocks in :meth:`psycopg.Connection.wait` for a server that does not answer (paused, partitioned) with no
bound of its own; :class:`BoundedConnection` gives every wait the request's deadline, and a request that misses
it leaves the connection mid-protocol, so the caller closes it (:func:`translate` says so) and opens a new one.
"""

from __future__ import annotations

import math
import time
from typing import Any

import psycopg
from psycopg import conninfo as pq_conninfo
from psycopg import errors as pg_errors

from swarmha.discovery._url import DiscoveryURL
from swarmha.errors import DiscoveryError, DiscoveryUnavailable, InvalidDiscoveryURL, SessionExpired

__all__ = ["DEFAULT_PORT", "OWN_OPTIONS", "BoundedConnection", "connect", "make_conninfo", "translate"]

DEFAULT_PORT = 5432
#: Query options swarmha reads itself; every other one goes to libpq (which refuses what it does not know).
OWN_OPTIONS = {"prefix", "schema", "timeout", "poll", "listen"}


class BoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait on the server ends at :attr:`deadline` (a monotonic time)."""

    deadline: float | None = None

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        if self.deadline is not None:
            left = max(0.0, self.deadline - time.monotonic())
            timeout = left if timeout is None else min(timeout, left)
        return super().wait(gen, interval, timeout)


def make_conninfo(url: DiscoveryURL) -> str:
    """The libpq connection string for ``url``: its hosts, database (the path), user, password, and every query
    option swarmha does not read itself. ``target_session_attrs`` defaults to ``read-write``.

    Raises :class:`~swarmha.errors.InvalidDiscoveryURL` naming an option libpq does not know.
    """
    params: dict[str, Any] = {k: v for k, v in url.params.items() if k not in OWN_OPTIONS}
    if url.hosts:
        endpoints = url.endpoints(DEFAULT_PORT)
        params["host"] = ",".join(h for h, _ in endpoints)
        params["port"] = ",".join(str(p) for _, p in endpoints)
    if url.path:
        params["dbname"] = url.path
    if url.username:
        params["user"] = url.username
    if url.password is not None:
        params["password"] = url.password
    params.setdefault("target_session_attrs", "read-write")
    try:
        return pq_conninfo.make_conninfo("", **params)
    except psycopg.ProgrammingError as e:
        raise InvalidDiscoveryURL(f"postgresql URL {str(url)!r}: {_first_line(e)}") from None


def connect(url: DiscoveryURL, conninfo: str, timeout: float, *, autocommit: bool = True) -> BoundedConnection:
    """Open a connection (within ``timeout``) to a server that takes writes.

    Raises :class:`~swarmha.errors.DiscoveryUnavailable` when no host answered or every host that did is a
    read-only standby (a failover may be under way), :class:`~swarmha.errors.DiscoveryError` for a wrong password,
    a missing database or role, naming the cause.
    """
    try:
        conn = BoundedConnection.connect(
            conninfo, autocommit=autocommit, prepare_threshold=None, connect_timeout=max(2, math.ceil(timeout))
        )
    except psycopg.Error as e:
        raise _connect_error(url, e) from None
    conn.deadline = time.monotonic() + timeout
    try:
        in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.Error as e:
        conn.close()
        raise translate(url, e, "the first query") from None
    finally:
        conn.deadline = None
    if in_recovery and in_recovery[0]:
        conn.close()
        raise DiscoveryUnavailable(_read_only(url))
    return conn


def _read_only(url: DiscoveryURL) -> str:
    return (
        f"postgresql URL {str(url)!r}: the server is a read-only standby (hot standby); swarmha writes, so it "
        "needs the primary: list the primary's host (with several hosts, libpq picks the one that takes writes)"
    )


def _connect_error(url: DiscoveryURL, error: psycopg.Error) -> DiscoveryError:
    text = _first_line(error)
    lowered = str(error).lower()
    where = f"postgresql URL {str(url)!r}"
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        return DiscoveryError(f"{where}: the server refused the password of user {url.username!r}: {text}")
    if "database" in lowered and "does not exist" in lowered:
        return DiscoveryError(f"{where}: database {url.path!r} does not exist on the server: {text}")
    if "role" in lowered and "does not exist" in lowered:
        return DiscoveryError(f"{where}: user {url.username!r} does not exist on the server: {text}")
    if "read-only" in lowered or "hot standby" in lowered or "is in recovery" in lowered:
        return DiscoveryUnavailable(_read_only(url) + f" ({text})")
    if "no pg_hba.conf entry" in lowered:
        return DiscoveryError(f"{where}: the server's pg_hba.conf does not admit this client: {text}")
    return DiscoveryUnavailable(f"{where}: cannot connect: {text}")


def translate(url: DiscoveryURL, error: psycopg.Error, what: str) -> DiscoveryError:
    """The swarmha error for ``error`` raised by ``what``. An :class:`~swarmha.errors.DiscoveryUnavailable`
    means the connection is unusable (closed, broken, or left mid-request by the deadline): drop it."""
    text = _first_line(error)
    where = f"postgresql {what} at {str(url)!r}"
    state = getattr(error, "sqlstate", None)
    if state == "SWSE1":
        return SessionExpired(text)
    if isinstance(error, pg_errors.ReadOnlySqlTransaction):
        return DiscoveryUnavailable(_read_only(url) + f" ({text})")
    if isinstance(error, pg_errors.InsufficientPrivilege):
        return DiscoveryError(f"{where}: permission denied: {text}")
    if isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError)) or state is None:
        if isinstance(error, pg_errors._WaitTimeout):
            text = "no answer in time"
        return DiscoveryUnavailable(f"{where} failed: {text}")
    return DiscoveryError(f"{where} failed: {text}")


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
