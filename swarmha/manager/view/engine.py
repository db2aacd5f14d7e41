"""One engine's containers, images, networks and volumes, kept current by the engine's ``/events`` stream.

As Swarm classic's ``cluster/engine.go``: :meth:`EngineView.run` opens the engine's event stream first, then
reads everything in full (the list of containers, each one's inspect, the images, networks and volumes); from
then on each event marks the object it names *dirty* and a worker fetches that object again from the engine.
When the stream breaks (the engine restarted, the network failed) the view is no longer :attr:`synced`; it
reconnects with a backoff and reads everything in full again, so events missed while disconnected lose
nothing.

Freshness guarantee (what :meth:`EngineView.settled` gives a reader): every mark made before the call — an event
received, or a mutating call relayed through the manager (:meth:`EngineView.touch`, made when the engine's answer
head arrives, before the client sees it) — has been fetched again and applied when it returns True. A reader
therefore never sees a state older than an event the view has received, nor older than its own earlier write
through the manager. False (the engine did not answer in time, the stream broke): the caller must ask the engine.

Failure modes: a fetch that fails leaves the object dirty and breaks the stream (a full read follows), so a
view never reports settled over a fetch it could not make.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import attrs

from swarmha._backoff import Backoff
from swarmha.manager.cluster import Cluster, Engine
from swarmha.manager.json_items import fetch_items
from swarmha.manager.upstream import Response, UpstreamBroken, UpstreamUnreachable, stream
from swarmha.manager.view.status import parse_time, status

__all__ = ["CONTAINERS", "IMAGES", "NETWORKS", "VOLUMES", "EngineView", "Entry"]

log = logging.getLogger("swarmha.manager.view")

_FULL_ID = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]+")
_EVENT_FILTER = quote(json.dumps({"type": ["container", "image", "network", "volume"]}), safe="")
#: Objects fetched at once by a full read or the worker.
_PARALLEL = 8
#: Waits between the attempts to follow an engine again: 0.2 s doubling to 5 s, from the first again once a
#: full read succeeded.
_BACKOFF = Backoff(0.2, 5.0)
#: Keys for the whole image, network and volume lists (a container's key is ("c", its id or name)).
IMAGES, NETWORKS, VOLUMES = ("images",), ("networks",), ("volumes",)
#: The key for "compare the engine's container list with the view; fetch again what differs" (a change somewhere
#: on the engine, which container unknown: a write a replica forwarded to the primary).
CONTAINERS = ("containers",)
_LISTS = {IMAGES: "/images/json", NETWORKS: "/networks", VOLUMES: "/volumes"}


def _without_status(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != "Status"}


class _Failed(Exception):
    """A fetch the view needs did not succeed (the message says which)."""


@attrs.define
class Entry:
    """One container: the engine's own list item and inspect answer, and what answers are built from them."""

    item: dict[str, Any]
    inspect: dict[str, Any]
    #: Creation time (seconds, sub-second precision) for ordering; running as ``docker ps`` without ``-a`` shows.
    created: float
    running: bool
    #: ``State.StartedAt`` and ``FinishedAt`` as epoch seconds (0.0: never).
    started: float
    finished: float
    #: (the key it was built for, the bytes) of the last list item and inspect answer encoded for a client.
    item_cache: tuple[Any, bytes] | None = None
    inspect_cache: tuple[Any, bytes] | None = None

    @classmethod
    def of(cls, item: dict[str, Any], inspect: dict[str, Any]) -> Entry:
        state = inspect.get("State") or {}
        status = state.get("Status")
        if isinstance(status, str) and status:
            item["State"] = status  # the inspect is at least as new as the list item
        return cls(
            item,
            inspect,
            parse_time(str(inspect.get("Created") or "")) or float(item.get("Created") or 0),
            bool(state.get("Running")),
            parse_time(str(state.get("StartedAt") or "")),
            parse_time(str(state.get("FinishedAt") or "")),
        )

    def status(self, now: float) -> tuple[str, float]:
        """The ``Status`` text as of ``now`` and until when it holds."""
        return status(self.inspect.get("State") or {}, self.started, self.finished, now)


class EngineView:
    """The state of ``engine`` (see the module docstring); :meth:`run` keeps it, until cancelled."""

    def __init__(self, cluster: Cluster, engine: Engine) -> None:
        self.cluster = cluster
        self.engine = engine
        self.containers: dict[str, Entry] = {}
        self._names: dict[str, str] = {}  # "/name" -> id
        self.lists: dict[tuple[str, ...], Any] = {}
        #: True between a complete full read and the next stream failure.
        self.synced = False
        #: Full reads made so far (the first at connect, one per reconnect).
        self.full_reads = 0
        #: Changes applied to the containers so far (an answer built at one version holds until the next).
        self.version = 0
        self._seq = 0
        self._dirty: dict[tuple[str, ...], int] = {}
        self._inflight: dict[tuple[str, ...], int] = {}
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self._broken: asyncio.Event = asyncio.Event()

    # -- reading ---------------------------------------------------------------------------------------------

    def resolve(self, ident: str) -> Entry | None:
        """The container ``ident`` names here, as dockerd resolves it: a full id, a name, a unique id prefix."""
        entry = self.containers.get(ident)
        if entry is not None:
            return entry
        cid = self._names.get(ident if ident.startswith("/") else "/" + ident)
        if cid is not None:
            return self.containers.get(cid)
        if ident and len(ident) < 64 and _HEX.fullmatch(ident):  # a full id not found is no other's prefix
            found = [e for cid, e in self.containers.items() if cid.startswith(ident)]
            if len(found) == 1:
                return found[0]
        return None

    def clean(self) -> bool:
        """Nothing is waiting to be fetched again (the common case: a reader need not wait)."""
        return not self._dirty and not self._inflight

    async def settled(self, timeout: float) -> bool:
        """Wait until every mark made before this call has been applied (see the module docstring)."""
        if not self._dirty and not self._inflight:
            return self.synced
        target = self._seq

        def done() -> bool:
            return all(s > target for s in self._dirty.values()) and all(s > target for s in self._inflight.values())

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: done() or not self.synced), timeout)
            except TimeoutError:
                return False
        return self.synced and done()

    # -- marking ---------------------------------------------------------------------------------------------

    def mark(self, key: tuple[str, ...]) -> None:
        """Object ``key`` changed on the engine: fetch it again before any later reader is answered."""
        self._seq += 1
        self._dirty[key] = self._seq
        self._wake.set()

    def touch_container(self, ident: str) -> None:
        """A call through the manager changed container ``ident`` (an id, a prefix or a name)."""
        entry = self.resolve(ident)
        self.mark(("c", str(entry.item.get("Id")) if entry is not None else ident))

    def event(self, ev: dict[str, Any]) -> None:
        """Mark what one engine event names."""
        kind = ev.get("Type") or ""
        actor = ev.get("Actor") or {}
        ident = str(actor.get("ID") or ev.get("id") or "")
        if kind == "container" and ident:
            self.mark(("c", ident))
        elif kind == "image":
            self.mark(IMAGES)
        elif kind == "network":
            self.mark(NETWORKS)
            container = (actor.get("Attributes") or {}).get("container")
            if container:  # connect, disconnect: the container's NetworkSettings changed
                self.mark(("c", str(container)))
        elif kind == "volume":
            self.mark(VOLUMES)

    # -- keeping it current ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the engine until cancelled: stream, full read, events; again after each failure."""
        attempt = 1
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the stream or a fetch failed: read everything again once it is back
                log.debug("the view of engine %s broke: %s", self.engine.addr, e or type(e).__name__)
            await self._unsync()
            await asyncio.sleep(_BACKOFF.delay(attempt))
            attempt += 1
            if self.full_reads and self.synced:
                attempt = 1

    async def _unsync(self) -> None:
        self.synced = False
        async with self._changed:
            self._changed.notify_all()

    async def _follow(self) -> None:
        e = self.engine
        async with stream(e.upstream, "GET", f"/events?filters={_EVENT_FILTER}") as events:
            if events.status != 200:
                raise _Failed(f"{e.addr} answered {events.status} to /events")
            self._broken.clear()
            lines: asyncio.Future[None] = asyncio.ensure_future(self._read_events(events.lines()))
            worker: asyncio.Future[None] | None = None
            try:
                self._dirty.clear()  # the full read covers every mark made so far
                await self._full_read()
                self.synced = True
                self.full_reads += 1
                worker = asyncio.ensure_future(self._work())
                done, _ = await asyncio.wait({lines, worker}, return_when=asyncio.FIRST_COMPLETED)
                for ended in done:
                    ended.result()  # raise what ended it
                raise _Failed(f"the event stream of {e.addr} ended")
            finally:
                for running in (lines, worker):
                    if running is not None and not running.done():
                        running.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await running

    async def _read_events(self, lines: Any) -> None:
        async for line in lines:
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict):
                self.event(ev)

    async def _get(self, target: str, *, missing_ok: bool = False) -> Response | None:
        try:
            r = await self.cluster.call(self.engine, "GET", target)
        except (UpstreamUnreachable, UpstreamBroken) as err:
            raise _Failed(f"{self.engine.addr}: {target}: {err}") from err
        if r.status == 404 and missing_ok:
            return None
        if r.status != 200:
            raise _Failed(f"{self.engine.addr} answered {r.status} to {target.partition('?')[0]}")
        return r

    async def _containers(self) -> list[Any]:
        """The engine's whole container list, parsed as it arrives (no limit on its length)."""
        try:
            return await fetch_items(self.cluster.pool, self.engine.upstream, "/containers/json?all=1")
        except (UpstreamUnreachable, UpstreamBroken, ValueError) as err:
            raise _Failed(f"{self.engine.addr}: /containers/json: {err}") from err

    async def _full_read(self) -> None:
        listed = await self._containers()
        sem = asyncio.Semaphore(_PARALLEL)

        async def inspect(item: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
            async with sem:
                r = await self._get(f"/containers/{item['Id']}/json", missing_ok=True)
            return item, (r.json() if r is not None else None)

        pairs = await asyncio.gather(*(inspect(i) for i in listed))
        lists = await asyncio.gather(*(self._get(t) for t in _LISTS.values()))
        containers = {str(i["Id"]): Entry.of(i, body) for i, body in pairs if body is not None}
        self.containers = containers
        self.version += 1
        self._names = {str(en.inspect.get("Name")): cid for cid, en in containers.items()}
        for key, r in zip(_LISTS, lists, strict=True):
            self.lists[key] = r.json()  # type: ignore[union-attr]
        for cid in containers:
            self.cluster.remember(cid, self.engine)

    async def _work(self) -> None:
        """Fetch the dirty objects again (at most :data:`_PARALLEL` at once) until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                batch = list(self._dirty.items())[:_PARALLEL]
                for key, seq in batch:
                    del self._dirty[key]
                    self._inflight[key] = seq
                try:
                    await asyncio.gather(*(self._fetch(key) for key, _ in batch))
                except BaseException:
                    for key, seq in batch:  # not applied: still dirty (the full read after the failure clears)
                        self._dirty.setdefault(key, self._inflight.pop(key, seq))
                    raise
                for key, _ in batch:
                    self._inflight.pop(key, None)
                async with self._changed:
                    self._changed.notify_all()

    async def _fetch(self, key: tuple[str, ...]) -> None:
        if key == CONTAINERS:
            return await self._compare()
        if key in _LISTS:
            self.lists[key] = (await self._get(_LISTS[key])).json()  # type: ignore[union-attr]
            return
        ident = key[1]
        r = await self._get(f"/containers/{quote(ident, safe='')}/json", missing_ok=True)
        if r is None:
            self._remove(ident)
            return
        body = r.json()
        cid = str(body.get("Id") or "")
        if not _FULL_ID.fullmatch(cid):
            raise _Failed(f"{self.engine.addr}: the inspect of {ident[:12]} has no Id")
        filters = quote(json.dumps({"id": [cid]}), safe="")
        listed = (await self._get(f"/containers/json?all=1&filters={filters}")).json()  # type: ignore[union-attr]
        items = [i for i in listed if i.get("Id") == cid]
        if not items:  # removed between the inspect and the list
            self._remove(cid)
            return
        self._put(Entry.of(items[0], body))

    async def _compare(self) -> None:
        """Fetch again every container whose list item differs from the view's (``Status`` aside: it is the
        clock's), the new ones, and drop the ones no longer listed."""
        listed = await self._containers()
        present = {str(i.get("Id")) for i in listed}
        changed = []
        for item in listed:
            known = self.containers.get(str(item.get("Id")))
            if known is None or _without_status(known.item) != _without_status(item):
                changed.append(("c", str(item.get("Id"))))
        for cid in [c for c in self.containers if c not in present]:
            self._remove(cid)
        sem = asyncio.Semaphore(_PARALLEL)

        async def one(key: tuple[str, ...]) -> None:
            async with sem:
                await self._fetch(key)

        await asyncio.gather(*(one(k) for k in changed))

    def _put(self, entry: Entry) -> None:
        cid = str(entry.item["Id"])
        old = self.containers.get(cid)
        if old is not None:
            self._names.pop(str(old.inspect.get("Name")), None)
        self.containers[cid] = entry
        self.version += 1
        self._names[str(entry.inspect.get("Name"))] = cid
        self.cluster.remember(cid, self.engine)

    def _remove(self, ident: str) -> None:
        entry = self.resolve(ident)
        if entry is None:
            return
        cid = str(entry.item["Id"])
        self.containers.pop(cid, None)
        self.version += 1
        self._names.pop(str(entry.inspect.get("Name")), None)

    def entries(self, running_only: bool) -> Iterable[Entry]:
        if running_only:
            return (e for e in self.containers.values() if e.running)
        return self.containers.values()
