"""One manager process: the HTTP front, its role in the election, and the cluster of engines.

Roles. With replication, a :class:`swarmha.aio.Candidate` campaigns for ``docker/swarm/leader`` and a
:class:`swarmha.aio.Follower` tells who leads. The manager is *primary* exactly while ``Candidate.is_leader``
(checked per request, so a deposed primary stops serving as one at its renew deadline). Without replication it
is always primary.

Requests. ``/_ping`` and ``/info`` are answered locally by every manager (``/info`` shows Role/Primary and this
manager's view of the engines). Everything else is served by the primary's :class:`~swarmha.manager.api.PrimaryAPI`
or, on a replica, forwarded per request to the current primary:

* no primary known (or it is this manager's stale key) → wait up to ``primary_wait`` for an election, then
  ``503 No elected primary cluster manager``;
* the primary refuses the connection → wait for the next leader (up to ``primary_wait``) and send it there;
* the primary breaks before answering an idempotent, body-less request → sent once more to the next leader;
* a request that was already forwarded once is never forwarded again (no ping-pong between two managers
  that disagree for a moment about who leads): it waits to become primary itself or answers 503.

Shutdown (:meth:`Manager.shutdown`, run on SIGINT/SIGTERM): stop accepting, stop the candidate at once
(it deletes the leader key, so a replica takes over within one watch round trip), drain in-flight requests for
at most ``drain_timeout`` seconds, then close everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import attrs

from swarmha import Discovery, Leader, aio
from swarmha.manager.api import PrimaryAPI
from swarmha.manager.cluster import Cluster
from swarmha.manager.forward import Pool, Upstream, UpstreamBroken, UpstreamUnreachable, forward
from swarmha.manager.http import Exchange, Server
from swarmha.manager.info import cluster_info
from swarmha.manager.reschedule import Watchdog
from swarmha.manager.tls import TLSConfig

__all__ = ["FORWARDED", "LEADER_KEY", "Manager", "ManagerConfig", "loop_factory"]

log = logging.getLogger("swarmha.manager")

LEADER_KEY = "docker/swarm/leader"
FORWARDED = "x-swarmha-forwarded"
NO_PRIMARY = "No elected primary cluster manager"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``swarmha manage`` runs on: uvloop's when it is installed, else asyncio's (None).

    uvloop does the socket work of every transport in C (the manager's CPU per forwarded request was mostly
    asyncio's selector and transport code, see docs/manager.md); everything the manager relies on is the
    same on both (TCP_NODELAY on every TCP socket, ``write_eof`` half-close on plain TCP, TLS, signal
    handlers, ``asyncio.timeout``), and the tests run the manager processes on uvloop and the in-process
    front and pool tests on both. ``SWARMHA_LOOP=asyncio`` in the environment forces asyncio's loop.
    """
    if os.environ.get("SWARMHA_LOOP", "") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


@attrs.frozen
class ManagerConfig:
    """Everything ``swarmha manage`` was given, already checked (see :mod:`swarmha.manager.cli`)."""

    listen: tuple[str, int]
    discovery_url: str
    replication: bool = False
    advertise: str | None = None
    ttl: float = 20.0
    strategy: str = "spread"
    #: The active placement filters (None: Swarm's default set).
    filters: tuple[str, ...] | None = None
    static_engines: tuple[str, ...] = ()
    tls: TLSConfig = attrs.field(factory=TLSConfig)
    refresh: float = 5.0
    primary_wait: float = 5.0
    drain_timeout: float = 5.0


class Manager:
    """A running manager; create it inside the event loop, then ``await run()``."""

    def __init__(self, config: ManagerConfig, discovery: Discovery | None) -> None:
        self.config = config
        self.id = str(uuid.uuid4())
        self._discovery = discovery
        server_ssl = config.tls.server_context()
        self._client_ssl = config.tls.client_context()
        self._server_ssl = server_ssl
        # as in Swarm, the --tls flags also apply to the engines: with TLS on, engines are reached over TLS
        self.cluster = Cluster(
            discovery,
            config.static_engines,
            strategy=config.strategy,
            engine_ssl=self._client_ssl,
            filters=config.filters,
        )
        self.api = PrimaryAPI(self.cluster, self._info)
        #: Rescheduling on node failure (``com.docker.swarm.reschedule-policies``), acted on by the primary only.
        self.watchdog = Watchdog(self.cluster)
        self.server = Server(self.handle)
        self._candidate: aio.Candidate | None = None
        self._follower: aio.Follower | None = None
        if config.replication:
            assert discovery is not None and config.advertise
            self._candidate = aio.Candidate(discovery, LEADER_KEY, config.advertise, ttl=config.ttl)
            self._follower = aio.Follower(discovery, LEADER_KEY)
        self._leader: Leader | None = None
        #: Kept-alive connections to the primary; the upstream is chosen per request, never per connection.
        self._pool = Pool()
        self._upstreams: dict[str, Upstream] = {}
        self._forwarded_header = (FORWARDED.encode(), (config.advertise or "1").encode())
        self._leader_changed = asyncio.Event()
        self._announced = False
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- roles -------------------------------------------------------------------------------------------

    @property
    def is_primary(self) -> bool:
        return self._candidate is None or self._candidate.is_leader

    @property
    def primary(self) -> str:
        """The primary's address as this manager sees it ("" when none is known)."""
        if self._candidate is None:
            return self.config.advertise or f"{self.config.listen[0] or socket.gethostname()}:{self.config.listen[1]}"
        if self.is_primary:
            return self.config.advertise or ""
        leader = self._leader
        if leader is None or leader.node == self.config.advertise:
            return ""
        return leader.node

    def _info(self) -> dict[str, Any]:
        role = "primary" if self.is_primary else "replica"
        return cluster_info(self.cluster, role.capitalize(), self.primary, self.id)

    async def _wait_leader_change(self, timeout: float) -> None:
        event = self._leader_changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def _set_leader(self, leader: Leader | None) -> None:
        self._leader = leader
        current = self.primary
        self._pool.keep_only(self._upstreams.get(current))  # connections to a deposed primary are dropped
        self._leader_changed.set()
        self._leader_changed = asyncio.Event()

    async def _campaign(self) -> None:
        assert self._candidate is not None
        async for elected in self._candidate.run_for_election():
            self._announced = True
            log.info("Cluster leadership acquired" if elected else "Cluster leadership lost")
            self._set_leader(self._leader)  # wake waiters: our role changed

    async def _follow(self) -> None:
        assert self._follower is not None
        async for leader in self._follower.follow_election():
            if leader is not None:
                if not self._announced and leader.node != self.config.advertise:
                    self._announced = True
                    log.info("Cluster leadership lost")  # Swarm's first word on a replica
                log.info("New leader elected: %s", leader.node)
            self._set_leader(leader)

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await self.cluster.refresh()
                await self.watchdog.check(act=self.is_primary)
            except Exception:
                log.exception("refreshing the engines failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.config.refresh)
                return

    # -- requests ----------------------------------------------------------------------------------------

    async def handle(self, ex: Exchange) -> None:
        """Answer /_ping and /info here; serve the rest as primary or forward it to the primary."""
        if ex.path == "/_ping" and ex.method in ("GET", "HEAD"):
            return await self.api.ping(ex)
        if ex.path == "/info" and ex.method == "GET":
            return await ex.json(200, self._info())
        if self.is_primary:
            return await self.api.handle(ex)
        await self._forward(ex)

    async def _forward(self, ex: Exchange) -> None:
        deadline = time.monotonic() + self.config.primary_wait
        dead: str | None = None
        retried = False
        forwarded = bool(ex.header(FORWARDED))
        ex.headers.append(self._forwarded_header)
        while True:
            if self.is_primary:
                return await self.api.handle(ex)
            target = "" if forwarded else self.primary
            remaining = deadline - time.monotonic()
            if not target or target == dead:
                if remaining <= 0 or self._stopping.is_set():
                    return await ex.error(503, NO_PRIMARY)
                await self._wait_leader_change(remaining)
                continue
            up = self._upstream(target)
            try:
                return await forward(ex, up, pool=self._pool, connect_timeout=max(0.5, min(3.0, remaining)))
            except UpstreamUnreachable as e:
                log.warning("primary %s unreachable: %s", target, e)
                dead = target
            except UpstreamBroken as e:
                if ex.started:
                    return
                if not e.retryable or retried:
                    return await ex.error(502, f"swarmha: the primary {target} failed: {e}")
                log.warning("primary %s failed, retrying with the next one: %s", target, e)
                retried, dead = True, target

    def _upstream(self, target: str) -> Upstream:
        up = self._upstreams.get(target)
        if up is None:
            host, _, port = target.rpartition(":")
            up = self._upstreams[target] = Upstream(host.strip("[]"), int(port), self._client_ssl)
        return up

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> list[tuple[str, int]]:
        """Bind, log ``Listening for HTTP``, start the election and the engine refresh. Raises OSError on bind."""
        host, port = self.config.listen
        bound = await self.server.listen(host, port, self._server_ssl)
        proto = "tcp"
        log.info("Listening for HTTP addr=%s:%d proto=%s", host, port, proto)
        self._tasks.append(asyncio.ensure_future(self._refresh_loop()))
        if self._follower is not None:
            self._tasks.append(asyncio.ensure_future(self._follow()))
        if self._candidate is not None:
            self._tasks.append(asyncio.ensure_future(self._campaign()))
        return bound

    async def shutdown(self) -> None:
        """Stop accepting, hand leadership over at once, drain (bounded), close. Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        began = time.monotonic()
        self.server.close()
        if self._candidate is not None:
            await self._candidate.stop()
            log.info("leadership released in %.0f ms", (time.monotonic() - began) * 1000)
        await self.server.drain(self.config.drain_timeout)
        if self._follower is not None:
            await self._follower.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pool.close()
        await self.cluster.close()
        if self._discovery is not None:
            await asyncio.to_thread(self._discovery.close)

    async def run(self) -> None:
        """Start, serve until SIGINT/SIGTERM, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            await stop.wait()
            log.info("signal received: shutting down")
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await self.shutdown()
