"""A :class:`Lease`: one TTL session that any number of candidates share (etcd's ``concurrency.Session``).

    d = swarmha.connect("etcd://10.0.0.5:2379/jobs")
    lease = swarmha.Lease(d, ttl=10.0)
    candidates = [swarmha.Candidate(d, f"shard/{i}", node="10.0.0.1", lease=lease).start() for i in range(1000)]

Guarantees:

* One store session for every candidate that shares the lease: one keepalive per ``ttl/3``, sent by the lease
  itself on a ``swarmha-lease[ID]`` thread while the session is open (so candidates that only wait keep it too);
  one lease in etcd, one logical session on ZooKeeper, one session in Consul or sqlite, however many keys. A
  leader sends no renewal of its own: its term is valid until the lease's last successful renewal (*sent*
  time) plus its ``renew_deadline``, checked on every read as without a lease.
* The price on ZooKeeper and etcd: candidates of a lease take no ticket (``Discovery.prepare`` gives each its
  own session), so a handover costs the winner a create and a read instead of none.
* Each key still has its own term and its own fencing token, strictly increasing per key, as without a lease;
  a leader demotes itself when no renewal of the lease succeeded within its ``renew_deadline``, and a
  graceful stop/resign removes only its own key (compare-and-delete), never the lease.
* When the shared session is lost (the store expired it: the process was cut off or frozen longer than ``ttl``),
  **every term it carried ends at once**: the store removes all its keys together, each leader's watch sees its
  key go and demotes (or its next renewal is refused), and the candidates campaign again with a new session
  that the lease opens on first use. A per-candidate session (no ``lease``) is what to use where keys must fail
  independently.
* :meth:`Lease.close` ends the session: every key still held through it goes (stop the candidates first for an
  orderly hand-over: each deletes its own key). Idempotent.

Failure modes: opening the session may raise :class:`~swarmha.errors.DiscoveryError` (the candidate retries);
:meth:`renew` raises :class:`~swarmha.errors.SessionExpired` once the session is gone and
:class:`~swarmha.errors.DiscoveryUnavailable` when the store did not answer.
"""

from __future__ import annotations

import threading
import time

from swarmha._context import ClosesOnExit
from swarmha.discovery import Discovery, Session
from swarmha.discovery._base import check_ttl
from swarmha.errors import ConfigurationError, DiscoveryError, SessionExpired

__all__ = ["Lease"]


class Lease(ClosesOnExit):
    """See the module docstring. Thread-safe; a context manager (closes on exit)."""

    def __init__(self, discovery: Discovery, ttl: float = 10.0) -> None:
        self.discovery = discovery
        self.ttl = check_ttl(ttl)
        discovery.check_ttl(self.ttl)
        self._lock = threading.Lock()
        self._session: Session | None = None
        self._ok_sent = 0.0  # when the last successful renewal of the current session was sent (or it was opened)
        self._inflight: threading.Event | None = None
        self._result: float | BaseException = 0.0
        self._closed = False
        self._keeper: threading.Thread | None = None
        self._wake = threading.Event()  # set by close(): the keeper ends

    @property
    def id(self) -> str | None:
        """The store's id of the current session, or None when none is open."""
        session = self._session
        return None if session is None else session.id

    def session(self) -> Session:
        """The current shared session, opened now if there is none (the first use, or the last one was lost)."""
        with self._lock:
            if self._closed:
                raise ConfigurationError("the lease is closed")
            if self._session is None:
                sent = time.monotonic()
                self._session = self.discovery.session(self.ttl)
                self._ok_sent = sent
                if self._keeper is None or not self._keeper.is_alive():
                    self._keeper = threading.Thread(
                        target=self._keep, args=(self._session,), name=f"swarmha-lease[{self._session.id}]", daemon=True
                    )
                    self._keeper.start()
            return self._session

    def _keep(self, session: Session) -> None:
        """Renew ``session`` every ttl/3 until it is lost or the lease closed.

        On a thread of its own (one per lease, not per candidate): the renewal that keeps every key of the lease
        must never wait behind the campaigns' store calls on the engine's workers.
        """
        retry = self.ttl / 6.0
        while not self._closed:
            with self._lock:
                if session is not self._session:
                    return
                due = self._ok_sent + self.ttl / 3.0
            if self._wake.wait(max(0.0, due - time.monotonic())) or self._closed:
                return
            try:
                self.renew(session)
            except SessionExpired:
                return
            except DiscoveryError:
                if self._wake.wait(retry):
                    return

    def renew(self, session: Session) -> float:
        """Renew ``session`` (the lease's current one) and return when the renewal that succeeded was *sent*.

        A renewal sent no more than ``ttl/6`` ago counts: the callers of one lease share one round trip.
        Raises SessionExpired if ``session`` is no longer the lease's session (it was lost or closed).
        """
        while True:
            with self._lock:
                if session is not self._session:
                    raise SessionExpired(f"the lease's session {session.id} ended")
                if self._ok_sent >= time.monotonic() - self.ttl / 6.0:
                    return self._ok_sent
                inflight = self._inflight
                if inflight is None:
                    inflight = self._inflight = threading.Event()
                    owner = True
                else:
                    owner = False
            if not owner:
                inflight.wait(self.ttl)
                with self._lock:
                    result = self._result
                if isinstance(result, BaseException):
                    raise result
                continue  # look again: the shared renewal's sent time is in _ok_sent now
            sent = time.monotonic()
            outcome: float | BaseException
            try:
                session.keepalive()
                outcome = sent
            except DiscoveryError as e:
                outcome = e
            with self._lock:
                self._result = outcome
                self._inflight = None
                if isinstance(outcome, float):
                    self._ok_sent = max(self._ok_sent, outcome)
                elif isinstance(outcome, SessionExpired) and self._session is session:
                    self._session = None  # every term it carried is over; the next session() opens a new one
            inflight.set()
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

    def valid_until(self, session: Session, renew_deadline: float) -> float:
        """Monotonic time until which a term held through ``session`` is valid: the lease's last successful
        renewal plus ``renew_deadline``; 0 when ``session`` is not the lease's current one. Lock-free."""
        if session is not self._session:
            return 0.0
        return self._ok_sent + renew_deadline

    def lost(self, session: Session) -> None:
        """A user of the lease saw ``session`` gone (its keys vanished with it): open a new one on next use."""
        with self._lock:
            if self._session is session:
                self._session = None
        session.close()

    def close(self) -> None:
        """End the shared session (every key still held through it goes). Idempotent, never raises."""
        with self._lock:
            self._closed = True
            session, self._session = self._session, None
            keeper = self._keeper
        self._wake.set()
        if keeper is not None and keeper is not threading.current_thread():
            keeper.join(self.ttl)
        if session is not None:
            session.close()

    def __repr__(self) -> str:
        return f"Lease(ttl={self.ttl:g}, session={self.id!r})"
