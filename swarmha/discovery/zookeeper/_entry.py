"""Election keys as queues of entries: the layout and the value types (kazoo ``Lock``'s layout).

An election key is a persistent znode whose data is :data:`QUEUE_MARK`; its children are *entries*, ephemeral
sequential znodes ``lead-<session name>-<sequence>`` holding each candidate's value. The first entry holds the key;
its token is its ``czxid`` (entries come first in creation order and zxids strictly increase, so each holder's
token exceeds every earlier holder's). The Session that owns an entry is named in it, so :attr:`Record.session`
tells the Sessions of one connection apart. :class:`Entry` is a Session's place in one queue.
"""

from __future__ import annotations

from typing import Any

import attrs

from swarmha.discovery._base import Record

__all__ = ["ARMING", "ENTRY", "OFF", "QUEUE_MARK", "QUIET", "RACE_LIMIT", "STALE", "Entry", "queue_order", "record"]

#: Data of a key's queue znode. Not valid UTF-8, so no put() value can equal it.
QUEUE_MARK = b"\xffswarmha-election-queue"
#: Name prefix of a queue entry: ``lead-<session name>-`` and the 10-digit sequence number ZooKeeper appends.
ENTRY = "lead-"
#: Bound of the read-again loops when a queue changes between two reads.
RACE_LIMIT = 10
#: States of an entry's steering watch (:attr:`Entry.steer_state`).
OFF, ARMING, QUIET, STALE = "off", "arming", "quiet", "stale"


def record(data: bytes, stat: Any, path: str = "") -> Record:
    """The Record of a znode; an entry's session is the name in it, a plain ephemeral's its owner's id."""
    name = path.rsplit("/", 1)[-1]
    if name.startswith(ENTRY) and len(name) > len(ENTRY) + 11:
        return Record(data.decode(), int(stat.czxid), name[len(ENTRY) : -11])
    owner = int(stat.ephemeralOwner)
    return Record(data.decode(), int(stat.czxid), f"{owner:x}" if owner else None)


def queue_order(children: Any) -> list[str]:
    """The entry names among ``children``, holder first (by the sequence number ZooKeeper appended)."""
    return sorted((c for c in children if c.startswith(ENTRY)), key=lambda c: c[-10:])


@attrs.define
class Entry:
    """A session's place in a key's queue: its sequential ephemeral znode and whether a create claimed it."""

    parent: str  # the key's znode (the queue)
    path: str  # the entry's znode
    record: Record
    mzxid: int
    claimed: bool = False
    #: The entry right before this one and how many were before it, in the last read of the queue through
    #: the owning session's connection (entries before this one can only leave, never arrive).
    predecessor: str | None = None
    ahead: int = -1
    #: The only entry ahead was seen deleted (through the owning connection): this one holds the key now.
    first: bool = False
    #: A ticket's steering watch (see :mod:`._steering`): the znode of the prefix its claim lists after a win,
    #: the watch's state (:data:`OFF`, :data:`ARMING`, :data:`QUIET`: armed and the znode absent, :data:`STALE`:
    #: it exists, changed, or the watch failed), and whether it was QUIET when the entry became ``first`` by its
    #: predecessor's deletion event (then the claim lists nothing: the prefix was empty at that moment).
    steer: str | None = None
    steer_state: str = OFF
    steer_clear: bool = False

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[1]

    def saw(self, names: list[str]) -> None:
        """Note this entry's place in ``names`` (a read of its queue through the owning session's connection)."""
        if self.name in names:
            at = names.index(self.name)
            self.ahead = at
            self.predecessor = f"{self.parent}/{names[at - 1]}" if at else None
            self.first = self.first or at == 0
