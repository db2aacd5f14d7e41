"""One kazoo client and what is tracked of it: connected now, which ZooKeeper session, requests bounded in time.

:class:`Connection` wraps a ``KazooClient`` with: a ``connected`` event; a ``generation`` that changes whenever
kazoo establishes a *new* ZooKeeper session (the old one expired: every ephemeral of it is gone); listeners for
"connected again" and "session replaced"; :meth:`Connection.op` (one request, bounded by the Discovery's
timeout, kazoo errors translated into :mod:`swarmha.errors`); :meth:`Connection.confirm` (a round trip that many
callers share, so N sessions renewed together cost one request); and :meth:`Connection.delete_later`, deletes
that must reach the server once it answers again (a session closed while the connection was down): they are
sent asynchronously from kazoo's own threads when the connection comes back, nothing waits for them.

Failure modes: connection loss, timeouts, a closed client → ``DiscoveryUnavailable``; a request refused because
the session expired → ``SessionExpired`` when a session was named, else ``DiscoveryUnavailable``; auth/ACL and
other server errors → ``DiscoveryError``. No kazoo exception escapes :meth:`Connection.op`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    KazooException,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    OperationTimeoutError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KeeperState
from kazoo.retry import KazooRetry

from swarmha.discovery.zookeeper._handler import NamedThreadingHandler
from swarmha.errors import DiscoveryError, DiscoveryUnavailable, SessionExpired

__all__ = ["ANSWERS", "Connection", "Settings"]

log = logging.getLogger("swarmha.discovery.zookeeper")


class _Repeats(logging.Filter):
    """Drop a record whose message passed less than ``window`` seconds ago.

    kazoo's reconnect loop logs the same two lines ("Connecting to …", "Connection dropped: … refused") at every
    attempt, on every connection; with the hosts listed k times over (:func:`handshake_hosts`) that is k times
    per pass: 155 warnings in 3 s of outage for one Session and the read connection (``timeout=1``, ttl 10 s),
    against 32 before the hosts were repeated. Once a second per distinct message says the same.
    """

    def __init__(self, window: float = 1.0) -> None:
        super().__init__()
        self.window = window
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a bad format string is not ours to judge
            return True
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(text, -math.inf) < self.window:
                return False
            if len(self._last) > 256:
                self._last.clear()
            self._last[text] = now
        return True


_KAZOO_LOG = logging.getLogger("swarmha.discovery.zookeeper.kazoo")
_KAZOO_LOG.addFilter(_Repeats())

# Answers, not failures: callers handle them.
ANSWERS = (NoNodeError, NodeExistsError, BadVersionError, NotEmptyError)
_UNAVAILABLE = (ConnectionLoss, ConnectionClosedError, OperationTimeoutError, KazooTimeoutError)
#: Most deletes waiting for the connection to come back (more: the oldest are left to the session's expiry).
_PENDING_LIMIT = 100_000


class Settings(Protocol):
    """What a connection needs of its Discovery."""

    url: Any
    timeout: float
    hosts: str
    auth_data: list[tuple[str, str]] | None
    acl: list[Any] | None

    @property
    def closed(self) -> bool: ...


class Checkable(Protocol):
    id: str

    def check(self) -> None: ...


def handshake_hosts(hosts: str, session_timeout: float, timeout: float) -> str:
    """``hosts`` (``h:p,h:p``) listed as many times over as makes kazoo wait at most ``timeout`` for a handshake.

    kazoo waits ``session timeout / number of hosts`` for the answer to a connection handshake and has no option
    for it. A restarted server can leave a handshake sent into its start-up window unanswered: with one host and
    a 10 s session the connection then stayed away 10 s, long enough for the restarted server to expire the
    session (tests/test_zookeeper.py::test_a_handshake_the_server_never_answers_is_retried_within_the_url_timeout:
    9.97 s before, within the 1 s timeout after). Listing the hosts k times over divides that wait by k; kazoo
    tries the next entry (the same server again) after it, with the same session. Nothing else kazoo does per
    host changes: it still cycles through the hosts in order, and a refused connect costs microseconds.
    """
    count = len([h for h in hosts.split(",") if h])
    copies = max(1, math.ceil(session_timeout / (count * timeout) - 1e-9))
    return ",".join([hosts] * copies)


class Connection:
    """A KazooClient with session timeout ``session_timeout``; see the module docstring."""

    def __init__(self, owner: Settings, session_timeout: float, what: str) -> None:
        self.what = what
        self.session_timeout = session_timeout
        self._owner = owner
        self.connected = threading.Event()
        self.session_id: int | None = None
        #: Increases whenever the ZooKeeper session is replaced (the previous one expired or was never there).
        self.generation = 0
        self._lock = threading.Lock()
        self._stopping = False
        self._revived = False  # the client was started again: its watchers are gone even if the session is not
        self._listeners: list[Callable[[bool], None]] = []  # called with replaced=True/False on (re)connect
        self._pending: dict[str, tuple[int | None, int]] = {}  # path -> (version or None, generation) to delete
        self._sweeps: dict[tuple[str, str], int] = {}  # (queue path, entry name prefix) -> generation, to sweep
        self._confirm: tuple[float, Any] | None = None  # (sent, async result) of the shared round trip
        self.client = KazooClient(
            hosts=handshake_hosts(owner.hosts, session_timeout, owner.timeout),
            timeout=session_timeout,
            # Reconnect fast and forever (attempts at most 0.2 s apart): after a store outage the connection's
            # return bounds the election's; commands are never retried by kazoo (we bound and retry them).
            connection_retry=KazooRetry(max_tries=-1, delay=0.05, backoff=2, max_delay=0.2),
            command_retry=None,
            randomize_hosts=False,
            auth_data=owner.auth_data,
            default_acl=owner.acl,
            logger=_KAZOO_LOG,
            handler=NamedThreadingHandler(f"swarmha-zk[{what}]"),
        )
        self.client.add_listener(self._listen)

    # -- state ---------------------------------------------------------------------------------------------

    def on_connected(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(replaced)`` on kazoo's thread (must not block) each time the connection is up again;
        ``replaced``: the ZooKeeper session is a new one (the old one's ephemerals and watchers are gone), or the
        client had to be started again (its watchers are gone)."""
        self._listeners.append(callback)

    def _listen(self, state: str) -> None:
        # Runs on kazoo's connection thread: must not block.
        if state == KazooState.CONNECTED:
            client_id = self.client.client_id
            sid = int(client_id[0]) if client_id else None
            replaced = sid != self.session_id or self._revived
            self._revived = False
            if sid != self.session_id:
                self.session_id = sid
                self.generation += 1
            self.connected.set()
            self._flush()
            for callback in list(self._listeners):
                try:
                    callback(replaced)
                except Exception:  # a listener's bug must not kill kazoo's connection thread
                    log.exception("ZooKeeper %s connection listener failed", self.what)
            return
        self.connected.clear()
        if state == KazooState.LOST and self._died():
            # kazoo's connection thread ended without stop(): seen when a link delivered a reply out of order
            # ("xids do not match" escapes kazoo's connect loop). kazoo never reconnects by itself then, and every
            # later request fails, so the client is started again (off this thread).
            threading.Thread(target=self._revive, name="swarmha-zk-revive", daemon=True).start()

    def _died(self) -> bool:
        """True when the client is CLOSED although we did not stop it (its connection thread gave up)."""
        return not self._stopping and self.client.client_state == KeeperState.CLOSED

    def _revive(self) -> None:
        log.warning("ZooKeeper %s client: its connection thread ended unexpectedly; starting it again", self.what)
        time.sleep(0.1)  # let the dying thread finish (start_async joins it too)
        try:
            if not self._stopping:
                self._revived = True
                self.client.start_async()
        except Exception as e:  # the next request fails and is retried; a later LOST revives again
            log.warning("ZooKeeper %s client: could not start it again: %s", self.what, e)

    def start(self) -> None:
        self.client.start_async()

    def stop(self) -> None:
        """Close the ZooKeeper session (its ephemerals go) and free the client; never raises; idempotent."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        self.connected.clear()
        try:
            self.client.stop()
        except Exception as e:
            log.debug("stopping the %s client: %s", self.what, e)
        with contextlib.suppress(Exception):
            self.client.close()

    # -- requests ------------------------------------------------------------------------------------------

    def op(self, what: str, fn: Callable[[Any], Any], session: Checkable | None = None) -> Any:
        """Run ``fn(client).get(...)`` once connected, all within the timeout; translate kazoo errors.

        ``session``: the logical session the request is made for: checked first (SessionExpired if it ended,
        DiscoveryUnavailable if the connection is down), and named in a SessionExpired.
        """
        owner = self._owner
        if owner.closed:
            raise DiscoveryError(f"ZooKeeper discovery {owner.url} is closed")
        deadline = time.monotonic() + owner.timeout
        if session is not None:
            session.check()
        elif not self.connected.wait(owner.timeout):
            raise DiscoveryUnavailable(f"ZooKeeper {what} on {owner.url}: not connected within {owner.timeout}s")
        try:
            return fn(self.client).get(timeout=max(0.01, deadline - time.monotonic()))
        except ANSWERS:
            raise
        except Exception as e:
            raise self.translate(what, e, session) from None

    def send(self, what: str, fn: Callable[[Any], Any], session: Checkable | None = None) -> Any:
        """``fn(client)``: send the request now and return kazoo's async result, without waiting (see
        :mod:`._async`). Raises DiscoveryError (closed), or SessionExpired / DiscoveryUnavailable as ``session``'s
        check does; without a session, DiscoveryUnavailable at once when not connected (no wait)."""
        owner = self._owner
        if owner.closed:
            raise DiscoveryError(f"ZooKeeper discovery {owner.url} is closed")
        if session is not None:
            session.check()
        elif not self.connected.is_set():
            raise DiscoveryUnavailable(f"ZooKeeper {what} on {owner.url}: not connected")
        try:
            return fn(self.client)
        except Exception as e:
            raise self.translate(what, e, session) from None

    def translate(self, what: str, error: BaseException, session: Checkable | None = None) -> BaseException:
        """The error :meth:`op` raises for kazoo's ``error`` (an answer such as NoNodeError as it is)."""
        owner = self._owner
        if isinstance(error, (*ANSWERS, DiscoveryError)):
            return error
        if isinstance(error, SessionExpiredError):
            if session is not None:
                return SessionExpired(f"ZooKeeper session {session.id} expired")
            return DiscoveryUnavailable(f"ZooKeeper {what} on {owner.url}: the session expired")
        if isinstance(error, _UNAVAILABLE):
            return DiscoveryUnavailable(f"ZooKeeper {what} on {owner.url} failed: {type(error).__name__} {error}")
        if isinstance(error, KazooException):
            return DiscoveryError(f"ZooKeeper {what} on {owner.url} failed: {type(error).__name__} {error}")
        return error

    def confirm(self, sent: float, session: Checkable) -> None:
        """Return once a round trip on this connection that was sent no earlier than ``sent`` succeeded.

        Callers that arrive while such a round trip is in flight share it (one ``exists /`` for all of them):
        renewing a thousand sessions of one connection at once costs one request.
        """

        def ping(client: Any) -> Any:
            with self._lock:
                current = self._confirm
                if current is not None and current[0] >= sent:
                    result = current[1]
                    if not result.ready() or result.exception is None:
                        return result
                result = client.exists_async("/")
                self._confirm = (time.monotonic(), result)
                return result

        self.op("keepalive", ping, session=session)

    def delete_later(self, path: str, version: int | None = None) -> None:
        """Delete ``path`` (at ``version`` if given) now if connected, else as soon as the connection is back.

        Never waits and never raises. Gives up silently when the node is gone or changed (someone else's now),
        and when the ZooKeeper session is replaced meanwhile (its expiry removed our ephemerals already): only
        ephemerals of this connection's session are ever deferred.
        """
        with self._lock:
            if len(self._pending) >= _PENDING_LIMIT:
                self._pending.pop(next(iter(self._pending)))
            self._pending[path] = (version, self.generation)
        if self.connected.is_set():
            self._flush()

    def sweep_later(self, parent: str, prefix: str) -> None:
        """Delete every child of ``parent`` whose name starts with ``prefix``, now if connected, else once the
        connection is back: the queue entries of a Session that ended while a create of it may have been applied
        unanswered (see :meth:`~._queue.Queues.enqueue`). Never waits, never raises; given up when the ZooKeeper
        session is replaced meanwhile (its expiry removed our ephemerals already)."""
        with self._lock:
            self._sweeps[(parent, prefix)] = self.generation
        if self.connected.is_set():
            self._flush()

    def _sweep(self, parent: str, prefix: str, generation: int) -> None:
        def listed(result: Any) -> None:  # on kazoo's thread: no blocking request
            try:
                children = result.get_nowait()
            except _UNAVAILABLE:
                if not self._stopping:
                    with self._lock:
                        self._sweeps.setdefault((parent, prefix), generation)
                return
            except Exception:  # the queue is gone: nothing of ours is left in it
                return
            for child in children:
                if child.startswith(prefix):
                    self.delete_later(f"{parent}/{child}")

        try:
            self.client.get_children_async(parent).rawlink(listed)
        except Exception:  # not connected after all: again on reconnect
            with self._lock:
                self._sweeps.setdefault((parent, prefix), generation)

    def delete_all(self, paths: list[str], timeout: float | None) -> None:
        """Delete ``paths`` (by name) and wait up to ``timeout`` for the answers (None: send them and return);
        what the server could not be told (connection down) is deleted once it is back, as with
        :meth:`delete_later`. Never raises."""
        if not paths:
            return
        if timeout is None or not self.connected.is_set():
            for path in paths:
                self.delete_later(path)
            return
        self._delete_and_wait(dict.fromkeys(paths), time.monotonic() + timeout)

    def delete_owned(self, owned: dict[str, int], timeout: float | None) -> None:
        """Delete each ``path`` of ``owned`` if it is still the znode created at that ``czxid``, and wait up to
        ``timeout`` for the answers (two round trips in all: the reads, then the versioned deletes).

        A path that another session re-created meanwhile is left alone. What the server could not be told
        (connection down, or it went down in between) is deleted once it is back, as with :meth:`delete_later`
        (by name if the read never answered: nothing else can own an ephemeral of this session). ``timeout=None``
        sends the same requests without waiting for any answer (a timer thread must not block). Never raises.
        """
        if not owned:
            return
        if not self.connected.is_set():
            for path in owned:
                self.delete_later(path)
            return
        if timeout is None:
            for path, czxid in owned.items():
                self._delete_owned_later(path, czxid)
            return
        deadline = time.monotonic() + timeout
        reads: list[tuple[str, Any]] = []
        for path in owned:
            try:
                reads.append((path, self.client.exists_async(path)))
            except Exception:
                self.delete_later(path)
        versions: dict[str, int | None] = {}
        for path, result in reads:
            try:
                stat = result.get(timeout=max(0.01, deadline - time.monotonic()))
            except Exception:  # unanswered: by name once the connection is back
                self.delete_later(path)
                continue
            if stat is not None and int(stat.czxid) == owned[path]:
                versions[path] = int(stat.version)
        self._delete_and_wait(versions, deadline)

    def _delete_and_wait(self, versions: dict[str, int | None], deadline: float) -> None:
        """Delete each path (at its version if not None) and wait until ``deadline`` for the answers; what the
        connection lost is deleted once it is back; a path gone or changed already is left alone."""
        generation = self.generation
        sent: list[tuple[str, int | None, Any]] = []
        for path, version in versions.items():
            try:
                sent.append((path, version, self.client.delete_async(path, version=-1 if version is None else version)))
            except Exception:
                self.delete_later(path, version)
        for path, version, result in sent:
            try:
                result.get(timeout=max(0.01, deadline - time.monotonic()))
            except _UNAVAILABLE:
                with self._lock:
                    self._pending.setdefault(path, (version, generation))
            except Exception:  # gone or changed already, or the session expired (then it is gone too)
                pass
        if self.connected.is_set():
            self._flush()

    def _delete_owned_later(self, path: str, czxid: int) -> None:
        def check(result: Any) -> None:  # on kazoo's thread: no blocking request
            try:
                stat = result.get_nowait()
            except Exception:
                self.delete_later(path)
                return
            if stat is not None and int(stat.czxid) == czxid:
                self.delete_later(path, int(stat.version))

        try:
            self.client.exists_async(path).rawlink(check)
        except Exception:
            self.delete_later(path)

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            sweeps, self._sweeps = self._sweeps, {}
        for (parent, prefix), generation in sweeps.items():
            if generation == self.generation:  # else that session expired: its ephemerals are gone
                self._sweep(parent, prefix, generation)
        for path, (version, generation) in pending.items():
            if generation != self.generation:
                continue  # that session expired: its ephemerals are gone
            try:
                result = self.client.delete_async(path, version=-1 if version is None else version)
            except Exception:  # the client is stopping or not connected after all: try again on reconnect
                with self._lock:
                    self._pending.setdefault(path, (version, generation))
                continue
            result.rawlink(lambda r, p=path, v=version, g=generation: self._deleted(r, p, v, g))

    def _deleted(self, result: Any, path: str, version: int | None, generation: int) -> None:
        exc = result.exception
        if exc is None or self._stopping or not isinstance(exc, _UNAVAILABLE):
            return  # done, or gone/changed: nothing of ours to delete
        with self._lock:  # sent again on the next reconnect (a lost connection always comes back or expires)
            self._pending.setdefault(path, (version, generation))
