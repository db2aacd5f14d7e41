"""A waiting ticket watches the prefix its claim lists after a win, so that the listing costs no request.

A candidate that wins a key lists its steering prefix (``K.election/``: a transfer marker, the registry of
preferred candidates; :mod:`swarmha.election._control`) before its term begins. On ZooKeeper that listing was a
round trip on the handover's path: a graceful handover between two processes took 1.30x as long as kazoo's
``Lock`` with it, 0.95x without it (``python -m benchmarks election --parts handover handover-procs --backends
zk --systems swarmha kazoo-lock``, 2 cores, ZooKeeper 3.8 on loopback). So a ticket one entry behind the holder
(the next to win) sets an exists-watch on the prefix's znode through its own connection, beside its turn check;
the entry's :attr:`~._entry.Entry.steer_state` is then

* QUIET: the znode is absent (nobody ever steered the key: the usual case) and no event came since;
* STALE: it exists, an event came (created, deleted; or kazoo's ``NONE`` when the connection dropped: the server
  forgets a connection's watches), or the request failed: the claim lists, as it always did. A STALE watch is
  not set again for that entry.

Why the claim may skip the listing: ZooKeeper delivers the events of one connection in the order of the changes,
and kazoo runs them on one thread in that order. When the deletion event of the entry ahead runs
(:meth:`~._session.ZkSession.predecessor_gone`), the event of any change to the prefix's znode made before
that deletion has run already; a transfer marker is written before the old holder's entry is deleted, so its
parent's creation has made the entry STALE by then. That callback notes whether the watch was QUIET
(``steer_clear``), and only a claim that found its entry first through that event (no read of the queue, whose
answer comes on another kazoo thread) uses the note. The answer is the prefix as it was when the ticket's turn
came: a key written after that is a race a listing a moment later could lose as well. A QUIET answer that
arrives after the deletion event (its request was served after the deletion) is still right: the znode was
absent after the deletion, and nothing removes a prefix's znode once made, so nothing was written there before.

Cost: one ``exists`` per ticket that becomes next in line, pipelined (nothing waits for it), and one
server-side watch per (connection, key) until the prefix's znode is created.
"""

from __future__ import annotations

import functools
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from swarmha.discovery.zookeeper._async import Operation, Request, drive
from swarmha.discovery.zookeeper._core import Core
from swarmha.discovery.zookeeper._entry import ARMING, OFF, QUIET, STALE, Entry

if TYPE_CHECKING:
    from swarmha.discovery.zookeeper._session import ZkSession

__all__ = ["arm"]


def arm(core: Core, session: ZkSession, entry: Entry) -> None:
    """Set the steering watch of ``entry`` (a ticket's) unless it has none or it is set already. Never blocks,
    never raises: the answer sets the entry's state on kazoo's completion thread."""
    with session.lock:
        if entry.steer is None or entry.steer_state != OFF or entry.claimed or not session.alive:
            return
        entry.steer_state = ARMING
        path = entry.steer
        # Under the session's lock, as the unsubscribe of a claim or a withdraw: none can come in between.
        watcher = core.hub.subscribe(session.conn, path, session.steering_changed)

    def armed(future: Future[Any]) -> None:
        quiet = future.exception() is None and future.result() is None
        with session.lock:
            if entry.steer_state == ARMING:  # not STALE by an event meanwhile, nor disarmed
                entry.steer_state = QUIET if quiet else STALE

    # Always pipelined (the core's pipeline would send a lone request inline and wait for its answer).
    drive(_exists_steps(session, path, watcher), core.timer, core.timeout).add_done_callback(armed)


def _exists_steps(session: ZkSession, path: str, watcher: Any) -> Operation[Any]:
    return (yield Request(session.conn, "watch", functools.partial(_exists, path=path, watch=watcher), session))


def _exists(client: Any, path: str, watch: Any) -> Any:
    return client.exists_async(path, watch=watch)
