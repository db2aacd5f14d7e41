"""Steerable leadership for the managers: the primary's drained hand-over and ``swarmha switchover``.

Mechanism (store-based: no TLS, no manager address needed by the operator's command):

* ``swarmha switchover [--to ADDR] [--timeout D]`` writes :data:`SWITCHOVER_KEY` = ``{"to": ADDR, "timeout": T}``
  bound to a session of ``D`` seconds (a command that dies leaves no request behind for longer than ``D``).
  Without ``--to`` the command picks the most preferred replica itself: the highest ``--priority`` among the
  managers registered in the election's registry (``docker/swarm/leader.election/candidates/``; a manager
  registers there when its ``--priority`` is not 0), earliest arrival on ties; none registered (other than the
  primary) → the command says so and exits 1 without asking anything.
* Every manager follows that key (:class:`Requests`); the primary that sees a request it has not seen yet (a new
  token) calls :meth:`swarmha.aio.Candidate.transfer` with ``T`` (half the command's timeout, so a failed
  transfer leaves the old primary leading again, in a new term, before the command gives up). A request naming
  the manager that sees it, or seen while not primary, is ignored.
* The command follows the leader key and ends as soon as it is decided: ``ADDR`` leads with a newer term (exit
  0), or another manager leads with a newer term (the transfer failed: the old primary leads again; exit 1), or
  ``D`` passed (exit 1). It prints ``Primary: <who leads>`` in every case, and deletes its request.

Drain. A primary's term ends gracefully (switchover, preemption) only once the short requests it is serving
(creates, starts, lists: everything that is not a stream) have finished, or :data:`SHORT_DRAIN` seconds passed:
the manager's candidate has ``drain`` set, and the consumer of its elections comes back for the next value
only after :meth:`ShortRequests.finished`. Streams (``logs -f``, ``events``, ``stats``, ``wait``, attach, exec)
never hold the key: they go on on the old primary, and the ones a replica relays are resumed on the new primary
if the old one goes (:mod:`swarmha.manager.resume`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator

import attrs

from swarmha import Discovery, Follower, Leader, aio
from swarmha.election._control import registrants, registry_prefix
from swarmha.errors import ConfigurationError, SwarmHAError
from swarmha.manager import resume
from swarmha.manager.http import Exchange

__all__ = ["SHORT_DRAIN", "SWITCHOVER_KEY", "Outcome", "Requests", "ShortRequests", "most_preferred", "switchover"]

log = logging.getLogger("swarmha.manager")

#: The operator's switchover request (see the module docstring).
SWITCHOVER_KEY = "docker/swarm/switchover"
#: Seconds a primary ending its term gracefully waits for the short requests it is serving.
SHORT_DRAIN = 1.0
#: Seconds ``swarmha switchover`` waits for a change after another manager than the target began a term.
SETTLE = 1.0


def is_stream(ex: Exchange, path: str) -> bool:
    """True for a request that may last as long as the client likes (it never holds a hand-over back)."""
    return ex.upgrade or resume.plan(ex, path) is not None


class ShortRequests:
    """The short (non-stream) requests this manager is serving as primary."""

    def __init__(self) -> None:
        self._open: set[Exchange] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._open)

    @contextlib.contextmanager
    def serving(self, ex: Exchange, path: str) -> Iterator[None]:
        """Count ``ex`` while the block runs, unless it is a stream."""
        if is_stream(ex, path):
            yield
            return
        self._open.add(ex)
        self._idle.clear()
        try:
            yield
        finally:
            self._open.discard(ex)
            if not self._open:
                self._idle.set()

    async def finished(self, limit: float = SHORT_DRAIN) -> bool:
        """Wait until none is open, for at most ``limit`` seconds; True if none is open."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), limit)
        return not self._open


@attrs.frozen
class Request:
    """One switchover request as a manager reads it."""

    to: str
    timeout: float
    token: int

    @classmethod
    def parse(cls, leader: Leader) -> Request | None:
        try:
            body = json.loads(leader.node)
            return cls(str(body["to"]), float(body["timeout"]), leader.token)
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed switchover request %r", leader.node)
            return None


class Requests:
    """A manager's side: follow :data:`SWITCHOVER_KEY`; as primary, hand the lead over as asked."""

    def __init__(self, discovery: Discovery, candidate: aio.Candidate) -> None:
        self._candidate = candidate
        self._follower = aio.Follower(discovery, SWITCHOVER_KEY)
        self._seen: set[int] = set()
        self._task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Follow the requests until :meth:`stop`."""
        async for seen in self._follower.follow_election():
            if seen is None or seen.token in self._seen:
                continue
            self._seen.add(seen.token)
            request = Request.parse(seen)
            if request is None or request.to == self._candidate.node or not self._candidate.is_leader:
                continue
            if self._task is not None and not self._task.done():
                log.warning("switchover to %s refused: another one is under way", request.to)
                continue
            self._task = asyncio.ensure_future(self._transfer(request))

    async def _transfer(self, request: Request) -> None:
        log.info("switchover asked: handing the cluster leadership to %s", request.to)
        began = time.monotonic()
        try:
            done = await self._candidate.transfer(request.to, request.timeout)
        except ConfigurationError as e:
            log.warning("switchover to %s refused: %s", request.to, e)
            return
        if done:
            log.info("Cluster leadership transferred to %s in %.0f ms", request.to, (time.monotonic() - began) * 1000)
        else:
            log.warning(
                "switchover to %s failed: it did not take the lead within %gs (is it a manager campaigning with "
                "--replication?)",
                request.to,
                request.timeout,
            )

    async def stop(self) -> None:
        await self._follower.stop()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


# -- the operator's command -------------------------------------------------------------------------------


def most_preferred(discovery: Discovery, leader_key: str, primary: str) -> tuple[str, int] | None:
    """(node, priority) of the most preferred registered manager other than ``primary``, or None."""
    found = [r for r in registrants(discovery.list(registry_prefix(leader_key)), leader_key) if r.node != primary]
    if not found:
        return None
    best = max(found, key=lambda r: (r.priority, -r.arrival))
    return best.node, best.priority


@attrs.frozen
class Outcome:
    """What ``swarmha switchover`` saw: who leads at the end (None: nobody), and whether the switch happened."""

    primary: Leader | None
    switched: bool
    message: str


def switchover(
    discovery: Discovery, leader_key: str, to: str | None, timeout: float, say: Callable[[str], None]
) -> Outcome:
    """Ask the primary to hand over to ``to`` (None: the most preferred replica); follow the leader key until
    decided or ``timeout`` passed. Raises SwarmHAError when there is nothing to do (no primary, no replica
    known) and DiscoveryError when the store does not answer."""
    old = Follower(discovery, leader_key).leader
    if old is None:
        raise SwarmHAError("No elected primary cluster manager: nothing to switch over")
    if to is None:
        best = most_preferred(discovery, leader_key, old.node)
        if best is None:
            raise SwarmHAError(
                f"no replica to switch over to: none is registered with a --priority (the primary is {old.node}); "
                "name one with --to ADDR"
            )
        to = best[0]
        say(f"Switching over to {to} (priority {best[1]}, the most preferred replica)")
    if to == old.node:
        return Outcome(old, True, f"{to} is the primary already")
    session = discovery.session(max(timeout, 1.0))
    record = discovery.put(SWITCHOVER_KEY, json.dumps({"to": to, "timeout": timeout / 2}), session)
    try:
        now = asyncio.run(_decided(discovery, leader_key, to, old.token, timeout))
    finally:
        with contextlib.suppress(SwarmHAError):
            discovery.delete(SWITCHOVER_KEY, record.token)
        with contextlib.suppress(SwarmHAError):
            session.close()
    if now is not None and now.node == to and now.token > old.token:
        return Outcome(now, True, f"{to} leads now (term {now.token})")
    who = now.node if now is not None else "nobody"
    return Outcome(
        now,
        False,
        f"{to} did not take over within {timeout:g}s (is it a manager of this cluster, campaigning with "
        f"--replication?); {who} leads",
    )


async def _decided(discovery: Discovery, leader_key: str, to: str, token: int, timeout: float) -> Leader | None:
    """The leader once decided: ``to`` leads in a term newer than ``token``, or another manager has led a newer
    term for :data:`SETTLE` seconds with no change (a candidate that defers to a transfer holds the key for a
    moment only), or ``timeout`` passed (the last one seen)."""
    follower = aio.Follower(discovery, leader_key)
    leaders = follower.follow_election()
    deadline = time.monotonic() + timeout
    last: Leader | None = None
    try:
        while (left := deadline - time.monotonic()) > 0:
            settling = last is not None and last.token > token
            try:
                last = await asyncio.wait_for(anext(leaders), min(left, SETTLE) if settling else left)
            except TimeoutError:
                if settling:
                    return last
                break
            except StopAsyncIteration:
                break
            if last is not None and last.node == to and last.token > token:
                return last
    finally:
        await follower.stop()
    return last
