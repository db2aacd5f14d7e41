"""The cluster of Docker engines a manager schedules on: who they are, whether they answer, where containers live.

Engines come from the discovery store (``docker/swarm/nodes/<addr>``, written by ``swarmha join``) or from a
static ``nodes://h:p,h:p`` list. :meth:`Cluster.refresh` re-reads the list and asks every engine for its
``/info`` and containers; an engine that fails is kept, marked unhealthy (with the error), and skipped by
placement until it answers again.

Node names: an engine is called by its ``Name`` from ``/info`` (its host name), as Swarm did. When two engines
report the same name (several engines on one host), each of them is called by its address instead, so names
stay unique. ``constraint:node==X`` matches the name, the ID or the address.

Placement is the scheduler's (:mod:`swarmha.manager.scheduler`): :meth:`Cluster.place` gives it a
:class:`~swarmha.manager.scheduler.Node` per engine — built from the last refresh: the containers (with what each
holds: ports, reservations, labels) and the images — plus the containers being created right now.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any
from urllib.parse import quote

import attrs

from swarmha import Discovery
from swarmha.errors import DiscoveryError
from swarmha.manager.engine import AnsweredBadly, Engine, account, describe_error, engine_order, split_addr
from swarmha.manager.json_items import fetch_items
from swarmha.manager.scheduler import FILTERS, STRATEGIES, SWARM_ID, Container, Image, Node, Request, Scheduler
from swarmha.manager.scheduler import SchedulingError as NoEngine
from swarmha.manager.scheduler.records import (
    Inspected,
    from_engine,
    from_inspect,
    from_list,
    from_request,
    reschedulable,
)
from swarmha.manager.upstream import (
    Pool,
    Response,
    Upstream,
    UpstreamBroken,
    UpstreamUnreachable,
    request,
)

__all__ = ["FILTERS", "NODES_KEY", "STRATEGIES", "Cluster", "Engine", "NoEngine", "describe_error"]

log = logging.getLogger("swarmha.manager.cluster")

NODES_KEY = "docker/swarm/nodes"
#: Longest a placed container stays pending without placed()/unplace() (see Cluster._expire_pending).
_PENDING_MAX = 600.0


def _list_item(c: Container, config: Mapping[str, Any]) -> dict[str, Any]:
    """A container just created through this manager as the engine's list would show it (until a refresh does)."""
    cmd = config.get("Cmd")
    return {
        "Id": c.id, "Names": list(c.names), "Image": c.image, "ImageID": "",
        "Command": " ".join(str(x) for x in cmd) if isinstance(cmd, list) else str(cmd or ""),
        "Created": int(time.time()), "Ports": [], "Labels": dict(c.labels), "State": "created", "Status": "Created",
        "HostConfig": {"NetworkMode": c.network_mode or "default"}, "NetworkSettings": {"Networks": {}}, "Mounts": [],
    }  # fmt: skip


def _images(items: Any) -> list[Image]:
    """The scheduler's view of an engine's ``/images/json`` answer."""
    return [
        Image(str(i.get("Id", "")), tuple(str(t) for t in i.get("RepoTags") or [] if t != "<none>:<none>"))
        for i in items
        if isinstance(i, dict)
    ]


class Cluster:
    """Engines from ``discovery`` (under :data:`NODES_KEY`) or from ``static`` addresses."""

    def __init__(
        self,
        discovery: Discovery | None = None,
        static: Iterable[str] | Callable[[], list[str]] = (),
        *,
        strategy: str = "spread",
        engine_ssl: ssl.SSLContext | None = None,
        timeout: float = 5.0,
        failure_retry: int = 1,
        filters: Iterable[str] | None = None,
        overcommit: float = 0.0,
        create_retry: int = 0,
    ) -> None:
        """``static``: engine addresses, or a function giving them (called on every refresh, e.g. a file).

        ``failure_retry``: consecutive failed refreshes before a healthy engine is marked unhealthy (Swarm's
        ``--engine-failure-retry``); an engine that never answered is unhealthy at its first failure.
        ``filters``: the active placement filters by name (Swarm's default set when None).
        ``overcommit``: placement counts an engine's CPUs and memory as this fraction more than it has (Swarm's
        ``swarm.overcommit``; > -1). ``create_retry``: how many other engines a create the chosen one failed is
        tried on (Swarm's ``swarm.createretry``).
        """
        self.overcommit = overcommit
        self.create_retry = max(0, create_retry)
        #: The filters (Swarm's default set when None) and strategy; ValueError names an unknown one.
        self.scheduler = Scheduler(strategy, filters)
        self.strategy = strategy
        self._discovery = discovery
        self._source: Callable[[], list[str]] | None = static if callable(static) else None
        self._static = [] if callable(static) else list(static)
        self.failure_retry = max(1, failure_retry)
        self._failures: dict[str, int] = {}
        self._ssl = engine_ssl
        self._engines: dict[str, Engine] = {}
        self._owner: dict[str, str] = {}  # container or exec id -> engine addr
        self._inspected: dict[str, Inspected] = {}  # container id -> what its inspect taught
        #: Containers placed and being created: swarm id -> (engine addr, record, monotonic time placed).
        self._pending: dict[str, tuple[str, Container, float]] = {}
        #: Containers created (id -> engine addr, record, when) and removed (id -> when) through this manager, so
        #: a refresh whose list was asked for before that does not undo it (see _settle).
        self._fresh: dict[str, tuple[str, Container, float]] = {}
        self._gone: dict[str, tuple[str, float]] = {}
        #: Kept-alive connections to the engines: the one HTTP client (:mod:`swarmha.manager.upstream`) carries the
        #: refresh, the aggregation and the forwarding.
        self.pool = Pool()
        self.timeout = timeout
        self._refreshing: asyncio.Lock = asyncio.Lock()
        #: Called with (engine, "engine_connect" | "engine_disconnect") when an engine's health changes (the
        #: ``/events`` streams turn them into Swarm's events).
        self.listeners: list[Callable[[Engine, str], None]] = []
        #: Awaited with (engine, its containers) when an engine that was unhealthy answers a whole refresh, before
        #: it is marked healthy; returns the containers it still has (the primary's rescheduling watchdog removes
        #: the stale copies of moved containers there).
        self.returning: Callable[[Engine, list[Container]], Awaitable[list[Container]]] | None = None
        #: Called by :meth:`close` (what follows the engines stops with the cluster).
        self.closers: list[Callable[[], None]] = []

    @property
    def engines(self) -> list[Engine]:
        engines = list(self._engines.values())
        if len(engines) > 1:  # asked on every request: one engine (the usual test and demo setup) needs no sort
            engines.sort(key=engine_order)
        return engines

    def healthy(self) -> list[Engine]:
        return [e for e in self.engines if e.healthy]

    async def close(self) -> None:
        for stop in self.closers:
            stop()
        self.pool.close()

    def _notify(self, e: Engine, what: str) -> None:
        for listener in list(self.listeners):
            try:
                listener(e, what)
            except Exception:
                log.exception("an engine event listener failed")

    def call(
        self,
        e: Engine,
        method: str,
        target: str,
        *,
        body: bytes | None = None,
        headers: Iterable[tuple[bytes, bytes]] = (),
        timeout: float | None = None,
    ) -> Coroutine[Any, Any, Response]:
        """One request to engine ``e`` over the pool, to await (raises UpstreamUnreachable / UpstreamBroken).

        A plain function returning :func:`~swarmha.manager.upstream.request`'s coroutine: no frame of its own on
        every request the primary sends."""
        return request(
            self.pool, e.upstream, method, target, body=body, headers=headers, timeout=timeout or self.timeout
        )

    async def addresses(self) -> list[str]:
        """The engine addresses registered now (raises DiscoveryError when the store does not answer)."""
        if self._source is not None:
            return await asyncio.to_thread(self._source)
        if self._discovery is None:
            return list(self._static)
        records: Mapping[str, Any] = await asyncio.to_thread(self._discovery.list, NODES_KEY)
        return sorted({(r.value or k.rpartition("/")[2]) for k, r in records.items()})

    async def refresh(self, every: bool = True) -> None:
        """Re-read the engine list and the state of every engine (failures mark engines unhealthy); ``every=False``:
        only of the engines never validated (new, or Pending), as between two engine refreshes (Swarm's)."""
        async with self._refreshing:
            try:
                addrs = await self.addresses()
            except DiscoveryError as e:  # said once by the manager's StoreState, not on every refresh
                log.debug("cannot list the engines in the discovery store: %s", e)
                addrs = list(self._engines)
            for addr in list(self._engines):
                if addr not in addrs:
                    log.info("engine %s left the cluster", addr)
                    gone = self._engines.pop(addr)
                    if gone.healthy:
                        self._notify(gone, "engine_disconnect")
            for addr in addrs:
                if addr not in self._engines:
                    try:
                        host, port = split_addr(addr)
                    except ValueError:
                        log.warning("ignoring the malformed engine address %r", addr)
                        continue
                    self._engines[addr] = Engine(addr, Upstream(host, port, self._ssl), name=addr)
            chosen = [e for e in self._engines.values() if every or not e.validated]
            await asyncio.gather(*(self._refresh_engine(e) for e in chosen))
            self._name_engines()

    def _name_engines(self) -> None:
        counts: dict[str, int] = {}
        for e in self._engines.values():
            n = str(e.info.get("Name") or "")
            counts[n] = counts.get(n, 0) + 1
        for e in self._engines.values():
            n = str(e.info.get("Name") or "")
            e.name = n if n and counts[n] == 1 else e.addr

    async def _refresh_engine(self, e: Engine) -> None:
        try:
            info = (await self._get(e, "/info")).json()
            if not e.api_version:
                version = (await self._get(e, "/version")).json()
                e.api_version = str(version.get("ApiVersion", ""))
                e.min_api_version = str(version.get("MinAPIVersion", ""))
            asked = time.monotonic()
            listed = await fetch_items(self.pool, e.upstream, "/containers/json?all=1", timeout=self.timeout)
            images = (await self._get(e, "/images/json")).json()
            records = []
            for item in listed:
                cid = item["Id"]
                self._owner[cid] = e.addr
                known = self._inspected.get(cid)
                if known is None or (known.full is None and reschedulable(item)):
                    inspected = await self._inspect(e, cid)
                    if inspected is None:
                        continue  # removed between the list and the inspect
                    known = self._inspected[cid] = inspected
                records.append(from_list(item, known.record))
        except (UpstreamUnreachable, UpstreamBroken, ValueError, KeyError, TypeError) as err:
            self.failed(e, err)
            return
        twin = self._same_id(e, str(info.get("ID", "")))
        if twin is not None:
            error = f"ID duplicated. {info.get('ID')} shared by this node {e.addr} and another node {twin.addr}"
            if e.error != error:
                log.error("ID duplicated. %s shared by %s and %s", info.get("ID"), twin.addr, e.addr)
            was = e.healthy
            e.healthy, e.error, e.info, e.id = False, error, info, ""
            if was:
                self._notify(e, "engine_disconnect")
            return
        if e.validated and not e.healthy and self.returning is not None:
            records = await self.returning(e, records)
            kept = {c.id for c in records}
            listed = [item for item in listed if not isinstance(item, dict) or item.get("Id") in kept]
        self._failures.pop(e.addr, None)
        if not e.healthy and e.error:
            log.info("engine %s is healthy again", e.addr)
        was = e.healthy
        e.info, e.id, e.healthy, e.error, e.validated = info, str(info.get("ID", "")), True, "", True
        e.records = self._settle(e, records, asked)
        items = [item for item in listed if isinstance(item, dict)]
        fresh = {c.id for c in e.records} - {item.get("Id") for item in items}  # created since the list was asked
        e.listed = items + [item for item in e.listed if item.get("Id") in fresh]
        e.images = _images(images)
        account(e)
        e.updated_at = datetime.datetime.now(datetime.UTC)
        present = {c.id for c in records}
        for cid in [cid for cid, addr in self._owner.items() if addr == e.addr and cid not in present]:
            if cid not in self._fresh:  # created after the list was asked for: not gone
                self._inspected.pop(cid, None)  # gone from its engine: forget what it held
        if not was:
            if not e.name or e.name == e.addr:
                e.name = str(info.get("Name") or e.addr)  # named before the event (refresh renames duplicates)
            self._notify(e, "engine_connect")

    def failed(self, e: Engine, err: BaseException) -> None:
        """Engine ``e`` failed a request (a refresh, or a client's request it could not be reached for): one more
        consecutive failure; at ``failure_retry`` of them it is marked unhealthy (with the error). Until then its
        :meth:`health` goes down, so placement prefers the engines that answer (Swarm's health indicator)."""
        was = e.healthy
        error = describe_error(e.addr, err)
        failures = self._failures[e.addr] = self._failures.get(e.addr, 0) + 1
        if e.healthy and failures < self.failure_retry:
            log.debug("engine %s failed (%d of %d before unhealthy): %s", e.addr, failures, self.failure_retry, error)
            return
        if e.healthy or not e.error:
            log.warning("engine %s is unhealthy: %s", e.addr, error)
        e.healthy, e.error = False, error
        e.updated_at = datetime.datetime.now(datetime.UTC)
        if was:
            self._notify(e, "engine_disconnect")

    def health(self, e: Engine) -> int:
        """Swarm's health indicator: 0 for an engine that is not healthy, else 100 less the share of
        ``failure_retry`` its consecutive failures have used."""
        if not e.healthy:
            return 0
        return max(0, 100 - self._failures.get(e.addr, 0) * 100 // self.failure_retry)

    def _same_id(self, e: Engine, ident: str) -> Engine | None:
        """Another engine, already validated, with the engine ID ``ident`` (a shared ``key.json``): Swarm keeps
        the first one and refuses the second ("ID duplicated")."""
        if not ident:
            return None
        for other in self._engines.values():
            if other is not e and other.id == ident and other.healthy:
                return other
        return None

    def named(self, name: str) -> str | None:
        """The id of the container called ``name`` on any engine (as the last refreshes and this manager's
        creates and renames know them); None when no container has that name."""
        wanted = "/" + name.lstrip("/")
        for e in self._engines.values():
            for c in e.records:
                if wanted in c.names:
                    return c.id
        return None

    def renamed(self, ident: str, name: str) -> None:
        """Container ``ident`` was renamed ``name`` through this manager: its record says so before a refresh."""
        for e in self._engines.values():
            c = Node(e.id, e.name, e.addr, containers=e.records).container(ident)
            if c is not None:
                new = attrs.evolve(c, names=("/" + name.lstrip("/"),))
                e.records = [new if x is c else x for x in e.records]
                return

    def owner_down(self, ident: str) -> Engine | None:
        """The engine, not healthy now, that had container ``ident`` (id, unique id prefix, name, Swarm id) at
        its last refresh; None when no such engine is known to have had it."""
        for e in self._engines.values():
            if not e.healthy and Node(e.id, e.name, e.addr, containers=e.records).container(ident) is not None:
                return e
        return None

    def by_swarm_id(self, ident: str) -> tuple[Engine, str] | None:
        """(engine, container id) of the container whose ``com.docker.swarm.id`` label is ``ident`` (or its
        first 12 characters), from what the refreshes and this manager's creates taught; None when unknown."""
        if len(ident) < 12:
            return None
        for e in self._engines.values():
            for c in e.records:
                if c.swarm_id and c.id and (c.swarm_id == ident or c.swarm_id[:12] == ident):
                    return e, c.id
        return None

    async def _inspect(self, e: Engine, cid: str) -> Inspected | None:
        r = await self.call(e, "GET", f"/containers/{cid}/json")
        if r.status == 404:
            return None
        if r.status != 200:
            raise AnsweredBadly(f"answered {r.status} to /containers/{cid[:12]}/json")
        body = from_engine(r.json(), e.ncpu)  # CpuShares in CPUs, as a create body has them
        return Inspected(from_inspect(body), body if reschedulable(body.get("Config") or {}) else None)

    def inspected(self, cid: str) -> dict[str, Any] | None:
        """The inspect answer kept for a container with a reschedule policy (None for any other)."""
        known = self._inspected.get(cid)
        return known.full if known is not None else None

    async def reread_images(self, engines: Iterable[Engine] | None = None, timeout: float = 5.0) -> None:
        """Re-read the images of ``engines`` (default: every healthy one) now: after a pull, load, import, tag,
        build or rmi through this manager, placement (``affinity:image==``) sees them before the next refresh.
        An engine that does not answer keeps its last list."""

        async def one(e: Engine) -> None:
            with contextlib.suppress(UpstreamUnreachable, UpstreamBroken, ValueError, TypeError):
                r = await self.call(e, "GET", "/images/json", timeout=timeout)
                if r.status == 200:
                    e.images = _images(r.json())

        await asyncio.gather(*(one(e) for e in (self.healthy() if engines is None else engines)))

    async def recount(self, timeout: float = 2.0) -> None:
        """Re-read every healthy engine's ``/info`` now, so ``docker info``'s container and image counts are the
        engines' own at this moment (not a refresh old); an engine that does not answer within ``timeout``
        keeps its last ones."""

        async def one(e: Engine) -> None:
            with contextlib.suppress(UpstreamUnreachable, UpstreamBroken, ValueError, KeyError, TypeError):
                r = await self.call(e, "GET", "/info", timeout=timeout)
                if r.status == 200:
                    info = r.json()
                    e.containers = int(info["Containers"])
                    e.running = int(info["ContainersRunning"])
                    e.paused = int(info["ContainersPaused"])
                    e.stopped = int(info["ContainersStopped"])
                    e.info = info

        await asyncio.gather(*(one(e) for e in self.healthy()))

    async def _get(self, e: Engine, path: str) -> Response:
        r = await self.call(e, "GET", path)
        if r.status != 200:
            raise AnsweredBadly(f"answered {r.status} to {path.partition('?')[0]}")
        return r

    # -- finding what lives where ----------------------------------------------------------------------

    def engine_named(self, name: str) -> Engine | None:
        for e in self._engines.values():
            if name in (e.name, e.addr):
                return e
        return None

    def remember(self, ident: str, e: Engine) -> None:
        self._owner[ident] = e.addr

    def _settle(self, e: Engine, records: list[Container], asked: float) -> list[Container]:
        """The engine's list as of now: ``records`` (listed at ``asked``), plus what this manager created there
        since, minus what it removed since. What the list already reflects is no longer remembered."""
        listed = {c.id for c in records}
        gone = {cid: at for cid, (addr, at) in self._gone.items() if addr == e.addr}
        out = [c for c in records if gone.get(c.id, -1.0) < asked]
        for cid, (addr, record, at) in list(self._fresh.items()):
            if addr != e.addr:
                continue
            if at < asked:
                del self._fresh[cid]  # the list is newer: it has it, or it was removed since
            elif cid not in listed and cid not in gone:
                out.append(record)
        for cid, at in gone.items():
            if at < asked:
                del self._gone[cid]
        return out

    def forget(self, ident: str) -> None:
        """Container (or exec) ``ident`` was removed: it no longer counts on its engine (reservations, slots)."""
        addr = self._owner.pop(ident, None)
        for e in self._engines.values():
            if addr is not None and e.addr != addr:
                continue
            node = Node(e.id, e.name, e.addr, containers=e.records)
            gone = node.container(ident)
            if gone is not None:
                e.records = [c for c in e.records if c is not gone]
                e.listed = [item for item in e.listed if item.get("Id") != gone.id]
                self._gone[gone.id] = (e.addr, time.monotonic())
                self._fresh.pop(gone.id, None)
                self._owner.pop(gone.id, None)
                self._inspected.pop(gone.id, None)
                account(e)
                return

    async def locate(self, kind: str, ident: str) -> Engine | None:
        """The healthy engine that has container/exec/image ``ident`` (``kind``: containers, exec, images).

        Known ids answer from the cache; otherwise every healthy engine is asked at once. None: nobody has it.
        """
        addr = self._owner.get(ident)
        if addr is None and kind == "containers" and len(ident) >= 4:
            matches = {a for cid, a in self._owner.items() if cid.startswith(ident)}
            addr = matches.pop() if len(matches) == 1 else None
        if addr is not None and addr in self._engines and self._engines[addr].healthy:
            return self._engines[addr]
        candidates = self.healthy()

        async def has(e: Engine) -> Engine | None:
            try:
                r = await self.call(e, "GET", f"/{kind}/{quote(ident, safe='/:@')}/json")
            except (UpstreamUnreachable, UpstreamBroken):
                return None
            return e if r.status == 200 else None

        for e in await asyncio.gather(*(has(e) for e in candidates)):
            if e is not None:
                if kind != "images":
                    self._owner[ident] = e.addr
                return e
        return None

    # -- placement -------------------------------------------------------------------------------------

    def nodes(self) -> list[Node]:
        """The scheduler's view of every engine: its last refresh plus the containers being created on it."""
        pending: dict[str, list[Container]] = {}
        for addr, c, _at in self._pending.values():
            pending.setdefault(addr, []).append(c)
        return [
            Node(
                id=e.id,
                name=e.name,
                addr=e.addr,
                labels=e.labels,
                healthy=e.healthy,
                health=self.health(e),
                containers=e.records + pending.get(e.addr, []),
                images=e.images,
                total_cpus=e.ncpu * (1 + self.overcommit),
                total_memory=int(e.memory * (1 + self.overcommit)),
            )
            for e in self.engines
        ]

    def place(
        self, config: dict[str, Any], *, reserve: bool = False, exclude: Iterable[str] = ()
    ) -> tuple[Engine, list[str]]:
        """Choose the engine for a new container (the scheduler's filters and strategy); returns it and the Env.

        ``config`` (a create body) is updated as Swarm did it: the ``constraint:``/``affinity:``/``whitelist:``/
        ``reschedule:`` Env entries move into the ``com.docker.swarm.*`` labels, the container gets a
        ``com.docker.swarm.id`` label (kept if it has one: a rescheduled container), and ``Env`` is the rest —
        also returned. With ``reserve``, until :meth:`placed` or :meth:`unplace` is called for it, the container
        counts as pending on the chosen engine (its ports, slot and reservation are taken: parallel creates do not
        collide); a caller that reserves must call one of them. Engines whose address is in ``exclude`` (those
        that just failed this create) are left out. Raises :class:`NoEngine` (Swarm's text).
        """
        request = Request.from_config(config)
        request.validate()
        labels = dict(request.labels)
        if not labels.get(SWARM_ID):
            labels[SWARM_ID] = secrets.token_hex(32)
        request = attrs.evolve(request, labels=labels)
        self._expire_pending()
        skip = set(exclude)
        ranked = self.scheduler.select(request, [n for n in self.nodes() if n.addr not in skip])
        engine = self._engines[ranked[0].addr]
        config["Labels"] = labels
        config["Env"] = list(request.env)
        if reserve:
            self._pending[labels[SWARM_ID]] = (engine.addr, from_request(request, config), time.monotonic())
        return engine, list(request.env)

    def eligible(self, config: Mapping[str, Any]) -> list[Engine]:
        """Every engine the scheduler's filters accept for ``config`` (its ``Env`` constraints, its
        ``com.docker.swarm.whitelists`` label), best first; raises :class:`NoEngine` (Swarm's text) when none."""
        request = Request.from_config(dict(config))
        return [self._engines[n.addr] for n in self.scheduler.select(request, self.nodes())]

    def placed(self, e: Engine, cid: str, config: Mapping[str, Any], name: str = "") -> None:
        """Account a container just created on ``e`` with ``name`` (so the next placement sees it — its ports,
        reservation, slot, name for affinities and dependencies — before a refresh)."""
        swarm_id = str((config.get("Labels") or {}).get(SWARM_ID, ""))
        self._pending.pop(swarm_id, None)
        names = ("/" + name.lstrip("/"),) if name else ()
        record = attrs.evolve(from_request(Request.from_config(config), config), id=cid, names=names)
        self._owner[cid] = e.addr
        full = None
        if reschedulable(config):  # what it takes to create it again elsewhere, even before a refresh inspects it
            full = {
                "Name": names[0] if names else "",
                "Config": {k: v for k, v in config.items() if k not in ("HostConfig", "NetworkingConfig")},
                "HostConfig": dict(config.get("HostConfig") or {}),
            }
        known = self._inspected.get(cid)
        if known is None or known.full is None:  # a refresh may have inspected it already
            self._inspected[cid] = Inspected(known.record if known else record, full)
        self._fresh[cid] = (e.addr, record, time.monotonic())
        e.records = [c for c in e.records if c.id != cid] + [record]
        # what ``ps -a`` shows of it ("Host Down") should ``e`` fail before a refresh lists it
        e.listed = [item for item in e.listed if item.get("Id") != cid] + [_list_item(record, config)]
        account(e)

    def started(self, ident: str) -> None:
        """Container ``ident`` was started through this manager: it counts as running before a refresh says so
        (rescheduling starts a moved container that ran)."""
        for e in self._engines.values():
            c = Node(e.id, e.name, e.addr, containers=e.records).container(ident)
            if c is not None:
                running = attrs.evolve(c, state="running")
                e.records = [running if x is c else x for x in e.records]
                if c.id in self._fresh:
                    addr, _old, at = self._fresh[c.id]
                    self._fresh[c.id] = (addr, running, at)
                account(e)
                return

    def unplace(self, config: Mapping[str, Any]) -> None:
        """The create placed by :meth:`place` failed: its pending container no longer holds anything."""
        self._pending.pop(str((config.get("Labels") or {}).get(SWARM_ID, "")), None)

    def _expire_pending(self) -> None:
        # A create whose caller never said placed/unplace (a bug, or a task cancelled mid-request) must not hold
        # its ports and slot for ever: a create request is bounded by the HTTP client's timeout, a pull too.
        limit = time.monotonic() - _PENDING_MAX
        for key in [k for k, (_a, _c, at) in self._pending.items() if at < limit]:
            del self._pending[key]
