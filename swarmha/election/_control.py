"""The keys an operator steers an election with: who may win the next term, and who prefers to lead.

Beside an election key ``K`` (``svc/leader``) the candidates keep two kinds of key, both under ``K.election/`` so
that nothing listing another prefix (the manager's ``docker/swarm/nodes``) ever sees them, and a Follower of ``K``
is not disturbed:

* ``K.election/candidates/<node>`` (the node quoted into one path segment): a candidate that set a ``priority``
  or ``preempt`` registers itself there, value ``"<priority>"``, bound to a session that the candidate keeps
  alive while it campaigns (its shared lease's, or a presence session of its own). The registration's token
  (store-wide counter on every built-in backend) is its arrival order. A crashed candidate's registration goes
  with its session, within ``ttl``.
* ``K.election/transfer``: while a leader hands the key to a named candidate, value ``"<node>"``, bound to the old
  leader's session (a dead leader's marker expires within ``ttl``) and deleted once the transfer is decided.

A candidate that wins the key reads these (one list request) before its term begins: if a transfer names
another node, or a live registrant is preferred to it (higher priority; equal priority and earlier arrival), it
gives the key back at once (no ELECTED, no term) and does not claim again for a short hold-off, so the preferred
one wins within a handover or two. Deference is bounded: a registrant that does not claim (a dead one whose
session has not expired yet) holds the key vacant for at most its ``ttl``, a transfer marker for at most the
transfer's timeout (or ``ttl`` after its leader died).
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Mapping

import attrs

from swarmha.discovery import Discovery, Record, Session
from swarmha.election._phases import Signal
from swarmha.election._worker import Transitions

__all__ = ["Drain", "Handoff", "Registrant", "Steering", "control_prefix", "registry_prefix", "transfer_key"]


@attrs.define(eq=False)
class Drain:
    """A graceful end waiting for the consumers (DRAINING): the end it is (a Signal), and until when it waits
    for whom (the iterators' Transitions that were told True and have not come back)."""

    ending: Signal
    reason: str
    until: float
    owing: set[Transitions]


@attrs.define(eq=False)
class Handoff:
    """One transfer under way: to whom, until when, from which term; decided once (``done``, ``result``)."""

    to: str
    deadline: float
    from_token: int
    back: int | None = None  # the thread that asked (it waits for the outcome: it counts as a consumer come back)
    session: Session | None = None  # the old term's session: it carries the marker
    marker: Record | None = None
    result: bool = False
    done: threading.Event = attrs.field(factory=threading.Event)


def control_prefix(key: str) -> str:
    return f"{key}.election"


def registry_prefix(key: str) -> str:
    return f"{control_prefix(key)}/candidates"


def transfer_key(key: str) -> str:
    return f"{control_prefix(key)}/transfer"


def registration_key(key: str, node: str) -> str:
    return f"{registry_prefix(key)}/{urllib.parse.quote(node, safe='')}"


@attrs.frozen
class Registrant:
    """One registered candidate: its node, priority, and arrival (the registration's token)."""

    node: str
    priority: int
    arrival: int

    def preferred_to(self, other: Registrant) -> bool:
        """True if this one should win a free key before ``other``: higher priority; equal and earlier."""
        return (self.priority, -self.arrival) > (other.priority, -other.arrival)


def registrants(records: Mapping[str, Record], key: str) -> list[Registrant]:
    """The registrations under ``key``'s registry (malformed ones are skipped)."""
    prefix = registry_prefix(key) + "/"
    found = []
    for name, record in records.items():
        if not name.startswith(prefix):
            continue
        try:
            priority = int(record.value)
        except ValueError:
            continue
        found.append(Registrant(urllib.parse.unquote(name[len(prefix) :]), priority, record.token))
    return found


class Steering:
    """One candidate's side of the control keys of ``key`` (see the module docstring). Not thread-safe: used by
    the candidate's state machine only."""

    def __init__(self, discovery: Discovery, key: str, node: str, priority: int, registers: bool) -> None:
        self._d = discovery
        self.key = key
        self.node = node
        self.priority = priority
        self.registers = registers
        self.registration: Record | None = None
        self._session_id: str | None = None
        self._first_seen: dict[str, float] = {}  # a leader with preempt: registration -> when it first saw it

    def forget_seen(self) -> None:
        """A new term: every registrant's grace starts anew (no preemption carried over from an older term)."""
        self._first_seen.clear()

    # -- registration ------------------------------------------------------------------------------------

    def register(self, session: Session) -> None:
        """(Re-)register through ``session`` if not registered through it yet (a presence session that was lost
        and opened anew registers again)."""
        if not self.registers or (self.registration is not None and self._session_id == session.id):
            return
        self.registration = self._d.put(registration_key(self.key, self.node), str(self.priority), session)
        self._session_id = session.id

    def deregister(self) -> None:
        """Remove the registration (a leader ending its term gracefully, a candidate stopping). Raises
        DiscoveryError when the store was not reached (the registration then goes with its session)."""
        record, self.registration, self._session_id = self.registration, None, None
        if record is not None:
            self._d.delete(registration_key(self.key, self.node), record.token)

    def is_registered(self, node: str) -> bool:
        """True if ``node`` has a live registration (it campaigns with a priority or preempt)."""
        return self._d.get(registration_key(self.key, node)) is not None

    # -- deference ---------------------------------------------------------------------------------------

    def defer_to(self, records: Mapping[str, Record]) -> str | None:
        """After winning the key: why this candidate must give it back, or None to lead. ``records``: the list
        of ``K.election/`` (one request, made by the caller without blocking a worker; empty unless someone
        steers), whoever the candidate is: a candidate with the default priority counts as priority 0, arriving
        after every registrant."""
        marker = records.get(transfer_key(self.key))
        if marker is not None and marker.value != self.node:
            return f"a transfer to {marker.value} is under way"
        if marker is not None:
            return None  # the transfer names us: no preference overrides it
        others = [r for r in registrants(records, self.key) if r.node != self.node]
        me = Registrant(self.node, self.priority, self.registration.token if self.registration else 1 << 62)
        best = max(others, key=lambda r: (r.priority, -r.arrival), default=None)
        if best is not None and best.preferred_to(me):
            return f"{best.node} is preferred (priority {best.priority})"
        return None

    def preferred_waiter(self, grace: float) -> str | None:
        """For a leader with ``preempt``: a registrant of strictly higher priority that this leader has seen
        registered (the same registration: same arrival) for ``grace`` seconds, or None."""
        older_than = self._first_seen
        now = time.monotonic()
        seen = {f"{r.node}#{r.arrival}": r for r in registrants(self._d.list(registry_prefix(self.key)), self.key)}
        for name in list(older_than):
            if name not in seen:
                del older_than[name]
        best: tuple[int, str] | None = None
        for name, r in seen.items():
            if r.node == self.node or r.priority <= self.priority:
                continue
            first = older_than.setdefault(name, now)
            if now - first >= grace and (best is None or r.priority > best[0]):
                best = (r.priority, r.node)
        return None if best is None else best[1]

    # -- transfer ------------------------------------------------------------------------------------------

    def mark(self, to: str, session: Session) -> Record:
        """Write the transfer marker naming ``to``, bound to the leader's ``session``."""
        return self._d.put(transfer_key(self.key), to, session)

    def unmark(self, record: Record) -> None:
        """Delete the transfer marker ``record`` (compare-and-delete). Raises DiscoveryError like ``delete``."""
        self._d.delete(transfer_key(self.key), record.token)
