"""One manager process: the HTTP front, its role in the election, and the cluster of engines.

Roles. With replication, a :class:`swarmha.aio.Candidate` campaigns for ``docker/swarm/leader`` and a
:class:`swarmha.aio.Follower` tells who leads. The manager is *primary* exactly while ``Candidate.is_leader``
(checked per request, so a deposed primary stops serving as one at its renew deadline). Without replication it
is always primary.

Requests. ``/_ping`` and ``/info`` are answered locally by every manager (``/info`` shows Role/Primary and this
manager's view of the engines). Everything else is served by the primary's :class:`~swarmha.manager.api.PrimaryAPI`
or, on a replica, forwarded per request to the current primary:

* the request goes to whichever manager is primary *when it is sent*: a request waiting for a primary goes to
  the one elected meanwhile, and to none other; if this manager became primary meanwhile it serves it itself;
* no primary known (or it is this manager's stale key) → wait for an election, then
  ``503 No elected primary cluster manager``; the wait is ``primary_wait``, by default the replication TTL plus
  :data:`HOLD_MARGIN` (the longest a crashed primary's key can linger, plus one election), so a request sent
  during a crash failover or a store outage shorter than that is answered late instead of failing;
* the primary refuses the connection → wait for the next leader (same bound) and send it there;
* the primary breaks before answering an idempotent, body-less request → sent once more to the next leader;
* a forwarded request carries :data:`FORWARDED`, the fencing token of the term its sender saw the target lead.
  A manager that receives one and is not primary (a primary demoted while the request travelled, or stepped
  down during a store outage) sends it on, but only to a *newer* term: each hop goes to a later primary, so no
  request circles between managers that disagree for a moment about who leads. A claim naming a term this
  manager never led is no manager's view (a client wrote the header): the request is routed as a client's;
* ``logs``, ``events``, ``stats`` and ``wait`` streams survive the primary that serves them:
  :mod:`swarmha.manager.resume` tells a cut from an end and resumes them on the next primary (this manager
  included) from where the client is.

Shutdown (:meth:`Manager.shutdown`, run on SIGINT/SIGTERM): stop accepting, stop the candidate at once
(it deletes the leader key, so a replica takes over within one watch round trip and new requests go there),
then keep serving what is already open — ``docker logs -f``, ``docker events``, attach and exec streams
included, whether they came from a client or through a replica — until each ends or ``drain_timeout``
(``--shutdown-timeout``, 30 s by default) passes; a second SIGINT/SIGTERM cuts them at once. The log says how
many were cut, of which kind, and why. Then close everything. So a graceful failover shows the client no error:
the stream it has goes on, on the old primary; a resumable stream a replica relays then goes on on the new one;
a hijacked one (attach, exec) ends with the old primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

import attrs

from swarmha import Discovery, Leader, Phase, aio
from swarmha.errors import DiscoveryError
from swarmha.manager import hops, resume
from swarmha.manager.api import PrimaryAPI, docker_path
from swarmha.manager.api._docker import DockerError, error_body
from swarmha.manager.cluster import Cluster
from swarmha.manager.engine_list import FileEngines
from swarmha.manager.forward import forward
from swarmha.manager.hops import FORWARDED
from swarmha.manager.http import BODY_TIMEOUT, ClientGone, Exchange, Server
from swarmha.manager.info import cluster_info
from swarmha.manager.leadership import SILENT, why_lost
from swarmha.manager.loop import loop_factory
from swarmha.manager.quick import QuickAnswers
from swarmha.manager.reschedule import Watchdog
from swarmha.manager.store_state import StoreState
from swarmha.manager.switchover import SHORT_DRAIN, Requests, ShortRequests
from swarmha.manager.tls import TLSConfig
from swarmha.manager.upstream import Pool, Upstream, UpstreamBroken, UpstreamUnreachable

if TYPE_CHECKING:
    from swarmha.manager.metrics import ManagerMetrics

__all__ = ["FORWARDED", "HEALTH_PATH", "LEADER_KEY", "Manager", "ManagerConfig", "loop_factory"]

log = logging.getLogger("swarmha.manager")

LEADER_KEY = "docker/swarm/leader"
NO_PRIMARY = "No elected primary cluster manager"
#: Answered by every manager: 200 when healthy, 503 naming the problems (for load balancers and watchdogs).
HEALTH_PATH = "/health"
_LOCAL_PATHS = frozenset({"/_ping", "/info", HEALTH_PATH})
#: Seconds a replica holds a request beyond the replication TTL while no primary answers (one election).
HOLD_MARGIN = 2.0


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
    #: Seconds between engine refreshes: each round waits a random time in [refresh, refresh_max] (Swarm's
    #: ``--engine-refresh-min-interval`` / ``-max-interval``); the engine list is read again at least every
    #: ``heartbeat`` (``--heartbeat``) in between, and only new or Pending engines are read then, as in Swarm.
    refresh: float = 5.0
    refresh_max: float | None = None
    heartbeat: float = 60.0
    #: Consecutive failed refreshes before an engine is marked unhealthy (``--engine-failure-retry``).
    failure_retry: int = 1
    #: ``file:///path`` discovery: the file listing the engines (read again on every refresh).
    engines_file: str | None = None
    #: How long a replica holds a request while no primary answers; None: ``ttl`` + :data:`HOLD_MARGIN`.
    primary_wait: float | None = None
    #: How long open requests and streams may go on after SIGTERM (``--shutdown-timeout``).
    drain_timeout: float = 30.0
    #: ``--metrics ADDR``: where Prometheus scrapes ``/metrics`` (None: no metrics listener).
    metrics: tuple[str, int] | None = None
    #: ``--cluster-opt swarm.overcommit``: placement may reserve this fraction more CPU and memory than an engine has.
    overcommit: float = 0.0
    #: ``--cluster-opt swarm.createretry``: a create the chosen engine fails is tried on this many other engines.
    create_retry: int = 0
    #: ``--priority``: the preference of this manager to be primary (see :mod:`swarmha.manager.switchover`).
    priority: int = 0
    #: ``--body-timeout``: seconds a request body may send nothing before its exchange ends with 408.
    body_timeout: float = BODY_TIMEOUT

    @property
    def hold(self) -> float:
        """The effective bound of a replica's wait for a primary, in seconds."""
        return self.primary_wait if self.primary_wait is not None else self.ttl + HOLD_MARGIN


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
        static: tuple[str, ...] | FileEngines = config.static_engines
        if config.engines_file is not None:
            static = FileEngines(config.engines_file)
        self.cluster = Cluster(
            discovery,
            static,
            strategy=config.strategy,
            engine_ssl=self._client_ssl,
            failure_retry=config.failure_retry,
            filters=config.filters,
            overcommit=config.overcommit,
            create_retry=config.create_retry,
        )
        self.api = PrimaryAPI(self.cluster, self._info)
        #: Rescheduling on node failure (``com.docker.swarm.reschedule-policies``), acted on by the primary only.
        self.watchdog = Watchdog(self.cluster, acts=lambda: self.is_primary)
        #: Whether the discovery store answers (None: a static engine list, no store).
        self.store = StoreState(str(discovery.url)) if discovery is not None else None
        self.metrics: ManagerMetrics | None = None
        self._metrics_server: Server | None = None
        if config.metrics is not None:
            from swarmha.manager.metrics import ManagerMetrics

            self.metrics = ManagerMetrics(
                is_primary=lambda: self.is_primary,
                term=self.term_token,
                engine_statuses=lambda: [e.status for e in self.cluster.engines],
                store=self.store,
                priority=config.priority,
            )
            self._metrics_server = Server(self._serve_metrics, error_body=error_body)
        # Without metrics the server calls _handle itself: no measuring frame around every request.
        quick = QuickAnswers(self.api, lambda: self.is_primary, lambda: self._stopping.is_set(), self.metrics)
        handler = self._measured if self.metrics is not None else self._handle
        self.server = Server(handler, error_body=error_body, body_timeout=config.body_timeout, quick=quick)
        self._candidate: aio.Candidate | None = None
        self._follower: aio.Follower | None = None
        if config.replication:
            assert discovery is not None and config.advertise
            self._candidate = aio.Candidate(
                discovery, LEADER_KEY, config.advertise, ttl=config.ttl, priority=config.priority, drain=SHORT_DRAIN
            )
            self._follower = aio.Follower(discovery, LEADER_KEY)
        self._requests = Requests(discovery, self._candidate) if discovery and self._candidate else None
        #: What a graceful end of this manager's term waits for (bounded by SHORT_DRAIN).
        self._short = ShortRequests()
        self._leader: Leader | None = None
        #: Kept-alive connections to the primary; the upstream is chosen per request, never per connection.
        self._pool = Pool()
        self._upstreams: dict[str, Upstream] = {}
        #: The tokens of the terms this manager led lately: a forwarded claim is believed only if it names one.
        self._led: set[int] = set()
        self._leader_changed = asyncio.Event()
        self._announced = False
        self._stopping = asyncio.Event()
        #: The exchanges inside the handler (what a shutdown drains, and cuts at its end).
        self._open: set[Exchange] = set()
        self._none_open = asyncio.Event()
        self._none_open.set()
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

    def term_token(self) -> int:
        """The fencing token of the primary's term as this manager sees it (0: none known)."""
        term = self._candidate.term if self._candidate is not None else None
        if term is not None:
            return term.token
        return self._leader.token if self._leader is not None else 0

    def _info(self) -> dict[str, Any]:
        role = "primary" if self.is_primary else "replica"
        store = self.store.describe() if self.store is not None else None
        priority = self.config.priority if self._candidate is not None else None
        return cluster_info(self.cluster, role.capitalize(), self.primary, self.id, store=store, priority=priority)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, details) for ``/health``: unhealthy while the store is unreachable or no primary is known."""
        problems = []
        if self.store is not None and not self.store.reachable:
            problems.append(f"discovery store {self.store.describe()}")
        if not self.primary:
            problems.append("no elected primary cluster manager")
        if self._stopping.is_set():
            problems.append("shutting down")
        details: dict[str, Any] = {
            "Status": "unhealthy" if problems else "healthy",
            "Role": "Primary" if self.is_primary else "Replica",
            "Primary": self.primary,
            "Store": self.store.describe() if self.store is not None else "none (static engine list)",
            "Problems": problems,
        }
        return not problems, details

    @property
    def _probe_period(self) -> float:
        return min(1.0, self.config.ttl / 3)

    async def _watch_store(self) -> None:
        """Probe the store every ``min(1s, ttl/3)``: feeds :attr:`store` (one WARN when lost, one INFO when back),
        and notes how late the loop woke up (a process that was stopped or starved)."""
        assert self._discovery is not None and self.store is not None
        period = self._probe_period
        while not self._stopping.is_set():
            self.store.sending()
            try:
                await asyncio.to_thread(self._discovery.get, LEADER_KEY)
            except DiscoveryError as e:
                self.store.failed(e)
            else:
                self.store.succeeded()
            self.store.sleeping(period)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), period)
            self.store.woke()

    async def _say_lost(self) -> None:
        """Log ``Cluster leadership lost: <why>`` (see :mod:`swarmha.manager.leadership`)."""
        assert self._candidate is not None
        store = self.store
        if store is not None and store.reachable and store.waiting_for > SILENT:
            # the probe in flight has not failed yet (the store's timeout is longer): say the store is gone first
            store.failed(TimeoutError(f"a request has waited {store.waiting_for:.1f}s for an answer"))
        why = await why_lost(
            stopping=self._stopping.is_set(),
            store=self.store,
            discovery=self._discovery,
            key=LEADER_KEY,
            node=self.config.advertise or "",
            renew_deadline=self._candidate.renew_deadline,
            probe_period=self._probe_period,
            stalled=self.store.stalled() if self.store is not None else 0.0,
        )
        log.info("Cluster leadership lost: %s", why)

    async def _wait_leader_change(self, timeout: float) -> None:
        event = self._leader_changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def _set_leader(self, leader: Leader | None) -> None:
        self._leader = leader
        own = self._candidate.term if self._candidate is not None else None
        mine = leader is not None and leader.node == self.config.advertise  # our own key, as the store shows it
        for token in (own.token if own is not None else 0, leader.token if leader is not None and mine else 0):
            if token:
                self._led.add(token)
                if len(self._led) > 64:
                    self._led.discard(min(self._led))
        current = self.primary
        self._pool.keep_only(self._upstreams.get(current))  # connections to a deposed primary are dropped
        self._leader_changed.set()
        self._leader_changed = asyncio.Event()

    async def _campaign(self) -> None:
        assert self._candidate is not None
        async for elected in self._candidate.run_for_election():
            self._announced = True
            self._set_leader(self._leader)  # wake waiters first: our role changed
            if self.metrics is not None:
                self.metrics.leadership_changed(elected)
            if elected:
                log.info("Cluster leadership acquired")
                continue
            if self._candidate.phase is Phase.DRAINING:  # a graceful end: the key goes once we come back for more
                await self._short.finished(SHORT_DRAIN)
            if not (self._candidate.lost_reason or "").startswith("transferred to "):  # switchover.py says it
                await self._say_lost()

    async def _follow(self) -> None:
        assert self._follower is not None
        async for leader in self._follower.follow_election():
            if leader is not None:
                if not self._announced and leader.node != self.config.advertise:
                    self._announced = True
                    log.info("Cluster leadership lost: %s is the primary", leader.node)  # Swarm's first word
                log.info("New leader elected: %s", leader.node)
            if self.metrics is not None:
                self.metrics.primary_seen(leader is not None)
            self._set_leader(leader)

    async def _refresh_loop(self) -> None:
        due = 0.0  # every engine's state is read each refresh interval; the engine list each --heartbeat too
        while True:
            try:
                if every := time.monotonic() >= due:
                    lo = self.config.refresh
                    due = time.monotonic() + random.uniform(lo, max(lo, self.config.refresh_max or lo))
                await self.cluster.refresh(every)
                await self.watchdog.check()
            except Exception:
                log.exception("refreshing the engines failed")
            wait = min(self.config.heartbeat, max(0.0, due - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait)
                return

    # -- requests ----------------------------------------------------------------------------------------

    async def _measured(self, ex: Exchange) -> None:
        """:meth:`_handle`, the request counted in the metrics (the server's handler under ``--metrics``)."""
        assert self.metrics is not None
        began = time.monotonic()
        path = docker_path(ex)[1]
        via = "local" if path in _LOCAL_PATHS else "primary" if self.is_primary else "replica"
        try:
            await self._handle(ex)
        finally:
            self.metrics.observe_request(path, via, ex.status, time.monotonic() - began)

    async def _serve_metrics(self, ex: Exchange) -> None:
        """The ``--metrics`` listener: ``/metrics`` and ``/health``; anything else 404."""
        assert self.metrics is not None
        if ex.method not in ("GET", "HEAD"):
            return await ex.error(405, "only GET /metrics and GET /health here")
        if ex.path == "/metrics":
            body, content_type = self.metrics.render()
            return await ex.respond(200, body, content_type)
        if ex.path == HEALTH_PATH:
            healthy, details = self.health()
            return await ex.json(200 if healthy else 503, details)
        await ex.error(404, "this is the metrics listener: GET /metrics or /health")

    async def _handle(self, ex: Exchange) -> None:
        """Answer /_ping, /info and /health here; serve the rest as primary or forward it to the primary."""
        self._open.add(ex)
        self._none_open.clear()
        try:
            await self._dispatch(ex)
        finally:
            self._open.discard(ex)
            if not self._open:
                self._none_open.set()

    async def _dispatch(self, ex: Exchange) -> None:
        version, path = docker_path(ex)
        if path in _LOCAL_PATHS:
            try:
                self.api.check_version(version)
            except DockerError as e:
                return await ex.error(e.status, str(e))
            if path == "/_ping" and ex.method in ("GET", "HEAD"):
                return await self.api.ping(ex)
            if path == "/info" and ex.method == "GET":
                await self.cluster.recount()  # the counts as they are now, as the engines answer them
                return await ex.json(200, self._info())
            if path == HEALTH_PATH and ex.method in ("GET", "HEAD"):
                healthy, details = self.health()
                return await ex.json(200 if healthy else 503, details)
        forwarded = hops.take(ex)
        if self.is_primary:
            with self._short.serving(ex, path):
                return await self.api.handle(ex, version, path)
        if (body := await self.api.local_answer(ex, version, path)) is not None:  # list, inspect: from the view
            return await ex.respond(200, body, "application/json")
        await self._forward(ex, version, path, hops.claim(forwarded, self._led))

    def _route(self, claim: int | None, dead: tuple[str, int] | None) -> tuple[str, int]:
        """(address, term token) of the primary to send a request to now; ("", 0) while there is none to send
        it to: none known, or a term not newer than ``claim`` (the term the request was already sent to), or
        ``dead`` (the term whose primary refused the connection)."""
        if self.is_primary:  # a stream resumed on this manager: through its own listener
            term = self._candidate.term if self._candidate is not None else None
            own = (self.config.advertise or "", term.token if term is not None else 0)
            return ("", 0) if own == dead else own
        leader = self._leader
        target = self.primary
        if not target or leader is None or (claim is not None and leader.token <= claim):
            return "", 0
        if (target, leader.token) == dead:
            return "", 0
        return target, leader.token

    async def _forward(self, ex: Exchange, version: str | None, path: str, claim: int | None) -> None:
        """Send ``ex`` to the primary, waiting for one (see the module docstring); a stream :mod:`resume` knows
        goes on on the next primary when the one serving it goes."""
        deadline = time.monotonic() + self.config.hold
        dead: tuple[str, int] | None = None
        retried = False
        cursor = resume.plan(ex, path)
        fruitless = 0
        while True:
            if self.is_primary and not ex.started:
                hops.take(ex)  # our own mark: not for the engines
                return await self.api.handle(ex, version, path)
            target, token = self._route(claim, dead)
            remaining = deadline - time.monotonic()
            if not target:
                if remaining <= 0 or self._stopping.is_set():
                    if ex.started:
                        raise ClientGone(f"no primary to resume the stream on within {self.config.hold:g}s")
                    return await ex.error(503, NO_PRIMARY)
                await self._wait_leader_change(remaining)
                continue
            up = self._upstream(target)
            hops.mark(ex, token)
            timeout = max(0.5, min(3.0, remaining))
            try:
                if cursor is None:
                    on_head = self.api.view.forwarded(ex.method, ex.target)  # marks what a write changed, for the view
                    return await forward(ex, up, pool=self._pool, connect_timeout=timeout, on_head=on_head)
                return await resume.relay(ex, up, cursor, connect_timeout=timeout)
            except resume.StreamCut as e:
                assert cursor is not None
                fruitless = 0 if cursor.delivered else fruitless + 1
                if fruitless > 2 or self._stopping.is_set():
                    raise ClientGone(f"giving up the stream: {e}") from e
                log.info("resuming %s %s on the next primary: %s", ex.method, path, e)
                deadline, dead, claim = time.monotonic() + self.config.hold, (target, token), None
            except UpstreamUnreachable as e:
                log.warning("primary %s unreachable: %s", target, e)
                if self.metrics is not None:
                    self.metrics.upstream_error("unreachable")
                dead = (target, token)
            except UpstreamBroken as e:
                if self.metrics is not None:
                    self.metrics.upstream_error("broken")
                if ex.started:
                    return
                if not (e.retryable or cursor is not None) or retried:
                    return await ex.error(502, f"swarmha: the primary {target} failed: {e}")
                log.warning("primary %s failed, retrying with the next one: %s", target, e)
                retried, dead = True, (target, token)

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
        if self._metrics_server is not None and self.config.metrics is not None:
            mhost, mport = self.config.metrics
            await self._metrics_server.listen(mhost, mport)
            log.info("Serving metrics on http://%s:%d/metrics", mhost or "0.0.0.0", mport)
        self._tasks.append(asyncio.ensure_future(self._refresh_loop()))
        if self._discovery is not None:
            self._tasks.append(asyncio.ensure_future(self._watch_store()))
        if self._follower is not None:
            self._tasks.append(asyncio.ensure_future(self._follow()))
        if self._candidate is not None:
            self._tasks.append(asyncio.ensure_future(self._campaign()))
        if self._requests is not None:
            self._tasks.append(asyncio.ensure_future(self._requests.run()))
        return bound

    async def shutdown(self, force: asyncio.Event | None = None) -> None:
        """Stop accepting, hand leadership over at once, drain (bounded), close. Idempotent.

        ``force``: when set during the drain, the open requests are cut at once (a second signal).
        """
        if self._stopping.is_set():
            return
        self._stopping.set()
        began = time.monotonic()
        self.server.close()
        if self._candidate is not None:
            led = self._candidate.is_leader
            await self._candidate.stop()
            if led:
                log.info("leadership released in %.0f ms", (time.monotonic() - began) * 1000)
        await self._drain(force)
        if self._follower is not None:
            await self._follower.stop()
        if self._requests is not None:
            await self._requests.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pool.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
            await self._metrics_server.drain(1.0)
        await self.cluster.close()
        if self._discovery is not None:
            await asyncio.to_thread(self._discovery.close)

    async def _drain(self, force: asyncio.Event | None) -> None:
        """Let the open exchanges finish for at most ``drain_timeout`` (less if ``force`` is set), then cut the
        rest, saying how many and of which kind."""
        timeout = self.config.drain_timeout
        if self._open:
            log.info(
                "serving %d open request(s) until they end, for at most %s (--shutdown-timeout); "
                "signal again to stop now",
                len(self._open),
                f"{timeout:g}s",
            )
        waits = {asyncio.ensure_future(self._none_open.wait())}
        if force is not None:
            waits.add(asyncio.ensure_future(force.wait()))
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        if self._open:
            forced = force is not None and force.is_set()
            why = "a second signal" if forced else f"--shutdown-timeout {timeout:g}s passed"
            hijacked = sum(1 for ex in self._open if ex.upgrade)
            others = sorted(f"{ex.method} {ex.path}" for ex in self._open if not ex.upgrade)
            log.warning(
                "%s: cutting %d open request(s): %d hijacked (attach/exec), %d other%s",
                why,
                len(self._open),
                hijacked,
                len(others),
                f" ({', '.join(others[:5])}{', ...' if len(others) > 5 else ''})" if others else "",
            )
        await self.server.drain(0 if self._open else 1.0)

    async def run(self) -> None:
        """Start, serve until SIGINT/SIGTERM, then shut down gracefully (a second signal cuts the drain)."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        force = asyncio.Event()

        def on_signal() -> None:
            (force if stop.is_set() else stop).set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            await self.start()
            await stop.wait()
            log.info("signal received: shutting down")
            await self.shutdown(force)
        finally:
            try:
                await self.shutdown(force)
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
