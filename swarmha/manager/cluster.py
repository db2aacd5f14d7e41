"""The cluster of Docker engines a manager schedules on: who they are, whether they answer, where containers live.

Engines come from the discovery store (``docker/swarm/nodes/<addr>``, written by ``swarmha join``) or from a
static ``nodes://h:p,h:p`` list. :meth:`Cluster.refresh` re-reads the list and asks every engine for its
``/info`` and containers; an engine that fails is kept, marked unhealthy (with the error), and skipped by
placement until it answers again.

Node names: an engine is called by its ``Name`` from ``/info`` (its host name), as Swarm did. When two engines
report the same name (several engines on one host), each of them is called by its address instead, so names
stay unique. ``constraint:node==X`` matches the name or the address.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fnmatch
import logging
import os
import random
import ssl
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

import attrs

from swarmha import Discovery
from swarmha.errors import DiscoveryError
from swarmha.manager.upstream import Pool, Response, Upstream, UpstreamBroken, UpstreamUnreachable, request

__all__ = ["NODES_KEY", "STRATEGIES", "Cluster", "Engine", "NoEngine", "describe_error"]

log = logging.getLogger("swarmha.manager.cluster")

NODES_KEY = "docker/swarm/nodes"
STRATEGIES = ("spread", "binpack", "random")


class NoEngine(Exception):
    """No healthy engine satisfies the request (the message says why)."""


@attrs.define
class Engine:
    """What the manager knows of one engine; replaced field by field on each refresh."""

    addr: str
    upstream: Upstream
    name: str = ""
    id: str = ""
    healthy: bool = False
    error: str = ""
    info: dict[str, Any] = attrs.field(factory=dict)
    api_version: str = ""
    min_api_version: str = ""
    containers: int = 0
    running: int = 0
    paused: int = 0
    stopped: int = 0
    reserved_cpus: float = 0.0
    reserved_memory: int = 0
    updated_at: datetime.datetime | None = None

    @property
    def status(self) -> str:
        """Swarm classic's node status: ``Pending`` until the first refresh answered, then ``Healthy`` or
        ``Unhealthy`` (with :attr:`error`)."""
        if self.healthy:
            return "Healthy"
        return "Unhealthy" if self.error else "Pending"

    @property
    def url(self) -> str:
        scheme = "https" if self.upstream.ssl is not None else "http"
        return f"{scheme}://{self.addr}"

    @property
    def ncpu(self) -> int:
        return int(self.info.get("NCPU") or 0)

    @property
    def memory(self) -> int:
        return int(self.info.get("MemTotal") or 0)

    @property
    def labels(self) -> dict[str, str]:
        out = {
            "kernelversion": str(self.info.get("KernelVersion", "")),
            "operatingsystem": str(self.info.get("OperatingSystem", "")),
            "storagedriver": str(self.info.get("Driver", "")),
        }
        for label in self.info.get("Labels") or []:
            k, _, v = str(label).partition("=")
            out[k] = v
        return out

    @property
    def ip(self) -> str:
        return self.upstream.host

    def node(self) -> dict[str, Any]:
        """Swarm classic's ``Node`` object, carried by container inspect and list answers."""
        return {
            "ID": self.id,
            "IP": self.ip,
            "Addr": self.addr,
            "Name": self.name,
            "Cpus": self.ncpu,
            "Memory": self.memory,
            "Labels": self.labels,
        }


def describe_error(addr: str, err: BaseException) -> str:
    """An engine failure as an operator reads it: the address and the OS error under the client's wrapper.

    ``cannot reach 10.0.0.5:2375: [Errno 111] Connection refused`` rather than the wrapper's words; an HTTP
    error answer keeps its status (``10.0.0.5:2375 answered 500 to /info``).
    """
    if isinstance(err, _AnsweredBadly):
        return f"{addr} {err}"
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno is not None:
            return f"cannot reach {addr}: [Errno {cause.errno}] {os.strerror(cause.errno)}"
        cause = cause.__cause__ or cause.__context__
    if isinstance(err, UpstreamBroken) and "no answer within" in str(err):
        return f"{addr} did not answer within the timeout"
    return f"{addr}: {err or type(err).__name__}"


class _AnsweredBadly(ValueError):
    """An engine answered a refresh request with an error status (the message says which)."""


def _split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def _engine_order(e: Engine) -> str:
    return e.name or e.addr


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
    ) -> None:
        """``static``: engine addresses, or a function giving them (called on every refresh, e.g. a file).

        ``failure_retry``: consecutive failed refreshes before a healthy engine is marked unhealthy (Swarm's
        ``--engine-failure-retry``); an engine that never answered is unhealthy at its first failure.
        """
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
        self.strategy = strategy
        self._discovery = discovery
        self._source: Callable[[], list[str]] | None = static if callable(static) else None
        self._static = [] if callable(static) else list(static)
        self.failure_retry = max(1, failure_retry)
        self._failures: dict[str, int] = {}
        self._ssl = engine_ssl
        self._engines: dict[str, Engine] = {}
        self._owner: dict[str, str] = {}  # container or exec id -> engine addr
        self._reservations: dict[str, tuple[float, int]] = {}  # container id -> (cpus, memory)
        #: Kept-alive connections to the engines: the one HTTP client (:mod:`swarmha.manager.upstream`) carries the
        #: refresh, the aggregation and the forwarding.
        self.pool = Pool()
        self.timeout = timeout
        self._refreshing: asyncio.Lock = asyncio.Lock()
        #: Called with (engine, "engine_connect" | "engine_disconnect") when an engine's health changes (the
        #: ``/events`` streams turn them into Swarm's events).
        self.listeners: list[Callable[[Engine, str], None]] = []

    @property
    def engines(self) -> list[Engine]:
        engines = list(self._engines.values())
        if len(engines) > 1:  # asked on every request: one engine (the usual test and demo setup) needs no sort
            engines.sort(key=_engine_order)
        return engines

    def healthy(self) -> list[Engine]:
        return [e for e in self.engines if e.healthy]

    async def close(self) -> None:
        self.pool.close()

    def _notify(self, e: Engine, what: str) -> None:
        for listener in list(self.listeners):
            try:
                listener(e, what)
            except Exception:
                log.exception("an engine event listener failed")

    async def call(
        self,
        e: Engine,
        method: str,
        target: str,
        *,
        body: bytes | None = None,
        headers: Iterable[tuple[bytes, bytes]] = (),
        timeout: float | None = None,
    ) -> Response:
        """One request to engine ``e`` over the pool (raises UpstreamUnreachable / UpstreamBroken)."""
        return await request(
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

    async def refresh(self) -> None:
        """Re-read the engine list and the state of every engine (failures mark engines unhealthy)."""
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
                        host, port = _split_addr(addr)
                    except ValueError:
                        log.warning("ignoring the malformed engine address %r", addr)
                        continue
                    self._engines[addr] = Engine(addr, Upstream(host, port, self._ssl), name=addr)
            await asyncio.gather(*(self._refresh_engine(e) for e in list(self._engines.values())))
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
            listed = (await self._get(e, "/containers/json?all=1")).json()
            cpus, memory = 0.0, 0
            for c in listed:
                cid = c["Id"]
                self._owner[cid] = e.addr
                if cid not in self._reservations:
                    self._reservations[cid] = await self._reservation(e, cid)
                cpus += self._reservations[cid][0]
                memory += self._reservations[cid][1]
        except (UpstreamUnreachable, UpstreamBroken, ValueError, KeyError, TypeError) as err:
            was = e.healthy
            error = describe_error(e.addr, err)
            failures = self._failures[e.addr] = self._failures.get(e.addr, 0) + 1
            if e.healthy and failures < self.failure_retry:
                log.debug(
                    "engine %s failed (%d of %d before unhealthy): %s", e.addr, failures, self.failure_retry, error
                )
                return
            if e.healthy or not e.error:
                log.warning("engine %s is unhealthy: %s", e.addr, error)
            e.healthy, e.error = False, error
            e.updated_at = datetime.datetime.now(datetime.UTC)
            if was:
                self._notify(e, "engine_disconnect")
            return
        self._failures.pop(e.addr, None)
        if not e.healthy and e.error:
            log.info("engine %s is healthy again", e.addr)
        was = e.healthy
        e.info, e.id, e.healthy, e.error = info, str(info.get("ID", "")), True, ""
        e.containers = len(listed)
        e.running = sum(1 for c in listed if c.get("State") == "running")
        e.paused = sum(1 for c in listed if c.get("State") == "paused")
        e.stopped = e.containers - e.running - e.paused
        e.reserved_cpus, e.reserved_memory = cpus, memory
        e.updated_at = datetime.datetime.now(datetime.UTC)
        if not was:
            if not e.name or e.name == e.addr:
                e.name = str(info.get("Name") or e.addr)  # named before the event (refresh renames duplicates)
            self._notify(e, "engine_connect")

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

    async def _reservation(self, e: Engine, cid: str) -> tuple[float, int]:
        with contextlib.suppress(UpstreamUnreachable, UpstreamBroken, ValueError):
            r = await self._get(e, f"/containers/{cid}/json")
            hc = r.json().get("HostConfig") or {}
            return (float(hc.get("NanoCpus") or 0) / 1e9, int(hc.get("Memory") or 0))
        return (0.0, 0)

    async def _get(self, e: Engine, path: str) -> Response:
        r = await self.call(e, "GET", path)
        if r.status != 200:
            raise _AnsweredBadly(f"answered {r.status} to {path.partition('?')[0]}")
        return r

    # -- finding what lives where ----------------------------------------------------------------------

    def engine_named(self, name: str) -> Engine | None:
        for e in self._engines.values():
            if name in (e.name, e.addr):
                return e
        return None

    def remember(self, ident: str, e: Engine) -> None:
        self._owner[ident] = e.addr

    def forget(self, ident: str) -> None:
        self._owner.pop(ident, None)

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

    def place(self, config: Mapping[str, Any]) -> tuple[Engine, list[str]]:
        """Choose the engine for a new container; returns it and the Env without ``constraint:`` entries.

        Honours ``constraint:node==NAME`` / ``constraint:node!=NAME`` (globs allowed) in ``Env``; skips unhealthy
        engines. Raises :class:`NoEngine` naming the reason when no engine fits.
        """
        env = [str(x) for x in (config.get("Env") or [])]
        constraints = [x[len("constraint:") :] for x in env if x.startswith("constraint:")]
        rest = [x for x in env if not x.startswith("constraint:")]
        engines = self.healthy()
        if not engines:
            raise NoEngine("no healthy node available in the cluster")
        for c in constraints:
            negate = "!=" in c
            key, _, pattern = c.partition("!=" if negate else "==")
            if not pattern:
                raise NoEngine(f"invalid constraint {c!r}: expected key==value or key!=value")
            key = key.strip()

            def value(e: Engine, key: str = key) -> list[str]:
                if key == "node":
                    return [e.name, e.addr]
                return [e.labels.get(key, "")]

            engines = [e for e in engines if any(fnmatch.fnmatchcase(v, pattern) for v in value(e)) != negate]
            if not engines:
                raise NoEngine(f"unable to find a node that satisfies the constraint {c}")
        hc = config.get("HostConfig") or {}
        cpus = float(hc.get("NanoCpus") or 0) / 1e9
        memory = int(hc.get("Memory") or 0)
        fit = [
            e
            for e in engines
            if (not memory or not e.memory or e.reserved_memory + memory <= e.memory)
            and (not cpus or not e.ncpu or e.reserved_cpus + cpus <= e.ncpu)
        ]
        if not fit:
            raise NoEngine("no node has enough free CPU or memory for this container")
        if self.strategy == "random":
            return random.choice(fit), rest

        def load(e: Engine) -> tuple[float, int]:
            used = max(
                (e.reserved_memory + memory) / e.memory if e.memory else 0.0,
                (e.reserved_cpus + cpus) / e.ncpu if e.ncpu else 0.0,
            )
            return (used, e.containers)

        ranked = sorted(fit, key=lambda e: (load(e), e.name))
        chosen = ranked[-1] if self.strategy == "binpack" else ranked[0]
        return chosen, rest

    def placed(self, e: Engine, cid: str, config: Mapping[str, Any]) -> None:
        """Account a container just created on ``e`` (so the next placement sees it before a refresh)."""
        hc = config.get("HostConfig") or {}
        res = (float(hc.get("NanoCpus") or 0) / 1e9, int(hc.get("Memory") or 0))
        self._owner[cid] = e.addr
        self._reservations[cid] = res
        e.containers += 1
        e.stopped += 1
        e.reserved_cpus += res[0]
        e.reserved_memory += res[1]
