"""Why a manager's term ended, as far as the manager can tell: the words after ``Cluster leadership lost:``.

The election library ends a term for one of four reasons (its renew deadline passed without a successful
renewal, the session expired in the store, the key was deleted or taken, or the candidate released it), but its
public face yields only ``False``. The manager tells them apart from what it sees itself, in this order:

1. it is shutting down → ``released (shutting down)``;
2. the store is unreachable, or the manager's own probe (:class:`~swarmha.manager.store_state.StoreState`) has
   waited more than :data:`SILENT` for its answer → ``renew deadline passed: the discovery store has not answered
   since T (X s ago ...)``, T being its last answer: with the store silent no renewal could succeed, and the
   term ends at its renew deadline;
3. the manager's event loop did not run for a while (the process was stopped or starved) → ``renew deadline
   passed: this manager did not run for X s``;
4. else the leader key is read (bounded by :data:`LOOKUP_TIMEOUT`): gone → ``the leader key is gone (its
   session expired or it was deleted)``; held by another → ``the leader key was taken by NODE (term N)``; still
   ours → ``renew deadline passed: no renewal succeeded in time (the store answered too slowly)``; no answer →
   as in 2 (and the store is marked unreachable, so its WARN comes first).
"""

from __future__ import annotations

import asyncio

from swarmha import Discovery
from swarmha.errors import DiscoveryError
from swarmha.manager.store_state import StoreState

__all__ = ["LOOKUP_TIMEOUT", "SILENT", "why_lost"]

#: The longest the manager waits for the leader key to say why a term ended.
LOOKUP_TIMEOUT = 1.0
#: A store request unanswered this long (seconds) when the term ends means the store is silent (a read takes ms).
SILENT = 0.5


async def why_lost(
    *,
    stopping: bool,
    store: StoreState | None,
    discovery: Discovery | None,
    key: str,
    node: str,
    renew_deadline: float,
    probe_period: float,
    stalled: float,
) -> str:
    """The reason a term of ``node`` on ``key`` ended (see the module docstring).

    ``probe_period``: how often :class:`StoreState` is fed; ``stalled``: the longest the event loop did not run
    lately (seconds)."""
    if stopping:
        return "released (shutting down)"
    if store is not None and (not store.reachable or store.waiting_for > SILENT):
        return _silent(store, renew_deadline)
    if stalled > renew_deadline / 2:
        return f"renew deadline passed: this manager did not run for {stalled:.1f}s (stopped or starved)"
    if discovery is None:
        return "the term ended"
    try:
        record = await asyncio.wait_for(asyncio.to_thread(discovery.get, key), LOOKUP_TIMEOUT)
    except (DiscoveryError, TimeoutError) as e:
        if store is None:
            return f"renew deadline passed: the discovery store does not answer ({str(e) or type(e).__name__})"
        store.failed(e if str(e) else TimeoutError(f"no answer within {LOOKUP_TIMEOUT:g}s"))
        return _silent(store, renew_deadline)
    if record is None:
        return "the leader key is gone (its session expired or it was deleted)"
    if record.value != node:
        return f"the leader key was taken by {record.value} (term {record.token})"
    return (
        f"renew deadline passed: no renewal succeeded within {renew_deadline:g}s "
        "(the discovery store answered too slowly)"
    )


def _silent(store: StoreState, renew_deadline: float) -> str:
    return (
        f"renew deadline passed: the discovery store has not answered since {store.since()} "
        f"({store.quiet_for:.1f}s ago; renew deadline {renew_deadline:g}s)"
    )
