"""The phases of a campaign and the one table that moves between them.

A :class:`~swarmha.election._campaign.Campaign` is always in one :class:`Phase`; the phase decides what its
machine does next (campaign for the key, lead it, release it, end). Something that happens to the campaign is a
:class:`Signal`; :data:`TABLE` says, for each phase and signal, the next phase and the :class:`Action` list to
carry out, in order::

    LATENT ─START─> WAITING ⇄ QUEUED ──WIN──> LEADING ──STOP──> STOPPING ──END──> STOPPED
                       ^                         │  │                 ^
                       ├─ DEMOTE / RESIGN / ─────┘  DRAIN             │
                       │  TRANSFER                  v                 │
                       └──── RESIGN / TRANSFER ── DRAINING ── STOP ───┘

WAITING and QUEUED differ only in whether the campaign holds a ticket in the key's queue
(``Discovery.prepare``). DRAINING is a graceful end with ``drain``: the term is over (LOST delivered) but the
key stays until the consumer of the elections came back for its next value; then the end it was (STOP, RESIGN,
TRANSFER) releases it. A pair missing from the table is a signal the phase ignores (a DEMOTE of a campaign
that no longer leads, a RESIGN while waiting): :func:`step` answers None for it.

Guarantees of the table (pinned by a test that walks it): ELECTED is emitted exactly on entering LEADING, LOST
exactly on leaving it and always before the key is released (the key is held only in LEADING and DRAINING, and
released only on leaving them gracefully); STOPPED is the only phase with no way out, and
every phase reaches it on STOP (then END).
"""

from __future__ import annotations

import enum

__all__ = ["TABLE", "Action", "Phase", "Signal", "step"]


class Phase(enum.Enum):
    """Where a campaign is (Curator's ``LeaderLatch`` states, with the waiting split by whether a ticket is held)."""

    LATENT = "latent"  # built, not started
    WAITING = "waiting"  # campaigning or waiting for the key, with no ticket
    QUEUED = "queued"  # waiting with a ticket in the key's queue (Discovery.prepare)
    LEADING = "leading"
    DRAINING = "draining"  # the term ended gracefully; the key goes once the consumer took the False
    STOPPING = "stopping"  # stop() was called; releasing
    STOPPED = "stopped"


class Signal(enum.Enum):
    """What happened to a campaign."""

    START = "start"  # the machine started
    QUEUE = "queue"  # waiting, and holding a ticket now
    UNQUEUE = "unqueue"  # waiting, and holding no ticket now
    WIN = "win"  # a create() won the key
    DEMOTE = "demote"  # the term was lost to the store (deadline, session expired, key taken)
    RESIGN = "resign"  # resign(): release the key, let a waiting candidate win first, campaign again
    TRANSFER = "transfer"  # transfer(): release the key for the named candidate (marked), wait for it to win
    DRAIN = "drain"  # a graceful end with drain: end the term now, release the key once the consumer is done
    STOP = "stop"  # stop(): release the key if held, end
    END = "end"  # the machine ran its last step


class Action(enum.Enum):
    """What the campaign does on a transition, in the order listed."""

    ELECTED = "elected"  # emit ELECTED for the term just won
    LOST = "lost"  # emit LOST for the term that just ended (it ends here: ``term`` reads None from now on)
    RELEASE = "release"  # remove the key of the ended term through its session (compare-and-delete)
    HOLDOFF = "holdoff"  # do not campaign for ``resign_holdoff`` seconds unless the key's queue says it is ours
    ENDED = "ended"  # emit END


_WAITERS = (Phase.WAITING, Phase.QUEUED)

#: (phase, signal) -> (next phase, actions in order).
TABLE: dict[tuple[Phase, Signal], tuple[Phase, tuple[Action, ...]]] = {
    (Phase.LATENT, Signal.START): (Phase.WAITING, ()),
    (Phase.LATENT, Signal.STOP): (Phase.STOPPING, ()),
    **{(phase, Signal.QUEUE): (Phase.QUEUED, ()) for phase in _WAITERS},
    **{(phase, Signal.UNQUEUE): (Phase.WAITING, ()) for phase in _WAITERS},
    **{(phase, Signal.WIN): (Phase.LEADING, (Action.ELECTED,)) for phase in _WAITERS},
    **{(phase, Signal.STOP): (Phase.STOPPING, ()) for phase in _WAITERS},
    (Phase.LEADING, Signal.DEMOTE): (Phase.WAITING, (Action.LOST,)),
    (Phase.LEADING, Signal.RESIGN): (Phase.WAITING, (Action.LOST, Action.RELEASE, Action.HOLDOFF)),
    (Phase.LEADING, Signal.TRANSFER): (Phase.WAITING, (Action.LOST, Action.RELEASE, Action.HOLDOFF)),
    (Phase.LEADING, Signal.STOP): (Phase.STOPPING, (Action.LOST, Action.RELEASE)),
    (Phase.LEADING, Signal.DRAIN): (Phase.DRAINING, (Action.LOST,)),
    # draining: the term is over already; the key goes with the end that was asked for, or with the store
    (Phase.DRAINING, Signal.DEMOTE): (Phase.WAITING, ()),
    (Phase.DRAINING, Signal.RESIGN): (Phase.WAITING, (Action.RELEASE, Action.HOLDOFF)),
    (Phase.DRAINING, Signal.TRANSFER): (Phase.WAITING, (Action.RELEASE, Action.HOLDOFF)),
    (Phase.DRAINING, Signal.STOP): (Phase.STOPPING, (Action.RELEASE,)),
    **{(phase, Signal.END): (Phase.STOPPED, (Action.ENDED,)) for phase in (Phase.LATENT, *_WAITERS, Phase.STOPPING)},
    (Phase.LEADING, Signal.END): (Phase.STOPPED, (Action.LOST, Action.RELEASE, Action.ENDED)),
    (Phase.DRAINING, Signal.END): (Phase.STOPPED, (Action.RELEASE, Action.ENDED)),
}


def step(phase: Phase, signal: Signal) -> tuple[Phase, tuple[Action, ...]] | None:
    """The next phase and the actions for ``signal`` in ``phase``, or None if the phase ignores the signal."""
    return TABLE.get((phase, signal))
