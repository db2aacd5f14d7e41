"""The system endpoints over the cluster: ``/version``, ``/system/df`` (the prunes: Base.prune, routed in the API),
and ``/events`` merged from every engine with Swarm's ``engine_connect`` / ``engine_disconnect`` events.

``/events``: each engine's stream is relayed line by line as it arrives, each event carrying Swarm's ``node``
object (``Name``, ``Id``, ``Addr``, ``Ip``). Engine events (``Type`` ``swarm``, ``Action`` ``engine_connect``
or ``engine_disconnect``, ``Actor.Attributes`` ``node.name``/``node.addr``) are sent when an engine's health
changes; the last :data:`KEPT` of them are kept, so ``--since`` replays them too. With ``--until`` the
stream ends once every engine ended its own and the time has passed; without it, it stays open (an engine
that connects later is followed from then on) until the client leaves.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import platform
import time
from typing import Any

from swarmha.manager.api._base import Base, local_name, respond_json
from swarmha.manager.api._docker import MIN_API_VERSION, encode_filters, replace_query, vkey, with_query
from swarmha.manager.cluster import Cluster, Engine
from swarmha.manager.http import ClientGone, Exchange
from swarmha.manager.info import SERVER_VERSION
from swarmha.manager.upstream import UpstreamBroken, UpstreamUnreachable, stream

__all__ = ["DEFAULT_API_VERSION", "KEPT", "System"]

DEFAULT_API_VERSION = "1.41"
#: Engine events kept for ``--since``.
KEPT = 256


def _node_of(e: Engine) -> dict[str, str]:
    return {"Name": e.name, "Id": e.id, "Addr": e.addr, "Ip": e.ip}


def _timestamp(raw: str) -> float | None:
    try:
        return float(raw)
    except ValueError:
        return None


class System(Base):
    def __init__(self, cluster: Cluster) -> None:
        super().__init__(cluster)
        self._recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=KEPT)
        self._listeners: set[asyncio.Queue[dict[str, Any]]] = set()
        cluster.listeners.append(self._engine_event)

    # -- versions --------------------------------------------------------------------------------------------

    def api_version(self) -> str:
        versions = [e.api_version for e in self.cluster.healthy() if e.api_version]
        return min(versions, key=vkey) if versions else DEFAULT_API_VERSION

    def min_api_version(self) -> str:
        versions = [e.min_api_version for e in self.cluster.healthy() if e.min_api_version]
        return max(versions, key=vkey) if versions else MIN_API_VERSION

    def version(self) -> dict[str, Any]:
        """Swarm's answer: the manager's own version, OS and kernel; the API version all engines speak."""
        return {
            "Version": SERVER_VERSION,
            "ApiVersion": self.api_version(),
            "MinAPIVersion": self.min_api_version(),
            "GitCommit": "",
            "GoVersion": "python" + platform.python_version(),
            "Os": "linux",
            "Arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine()),
            "KernelVersion": platform.release(),
            "BuildTime": "",
            "Components": [{"Name": "swarmha", "Version": SERVER_VERSION, "Details": {}}],
        }

    # -- disk usage ------------------------------------------------------------------------------------------

    async def df(self, ex: Exchange) -> None:
        out: dict[str, Any] = {"LayersSize": 0, "Images": [], "Containers": [], "Volumes": [], "BuildCache": []}
        images: dict[str, dict[str, Any]] = {}
        for e, d in await self.gather_json(with_query("/system/df", ex.query_string)):
            if not isinstance(d, dict):
                continue
            out["LayersSize"] += int(d.get("LayersSize") or 0)
            for img in d.get("Images") or []:
                seen = images.setdefault(str(img.get("Id")), img)
                if seen is not img:
                    seen["Containers"] = int(seen.get("Containers") or 0) + int(img.get("Containers") or 0)
            for c in d.get("Containers") or []:
                c["Names"] = [f"/{e.name}{n}" for n in c.get("Names") or []]
                out["Containers"].append(c)
            for v in d.get("Volumes") or []:
                if v.get("Scope", "local") == "local":
                    v["Name"] = local_name(e, str(v.get("Name", "")))
                out["Volumes"].append(v)
            out["BuildCache"] += d.get("BuildCache") or []
        out["Images"] = list(images.values())
        await respond_json(ex, 200, out)

    # -- events ----------------------------------------------------------------------------------------------

    def _engine_event(self, e: Engine, what: str) -> None:
        now = time.time_ns()
        event = {
            "status": what,
            "id": e.id,
            "from": "swarm",
            "Type": "swarm",
            "Action": what,
            "Actor": {"ID": e.id, "Attributes": {"node.name": e.name, "node.addr": e.addr, "node.ip": e.ip}},
            "scope": "local",
            "time": now // 1_000_000_000,
            "timeNano": now,
            "node": _node_of(e),
        }
        self._recent.append(event)
        for q in list(self._listeners):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(event)

    async def events(self, ex: Exchange) -> None:
        filters = self.filters(ex)
        engines = self.engines_for(filters)
        nodes = filters.pop("node", None)
        query = replace_query(ex.query_string, filters=encode_filters(filters) if filters else None)
        since, until = _timestamp(ex.arg("since")), _timestamp(ex.arg("until"))
        if until is not None and since is None:
            # --until alone: what happens from now until then, as Swarm streamed it; not the engines' own replay
            # of their past events (dockerd reads --until without --since as "the buffered past up to until")
            query = replace_query(query, since=f"{time.time():.9f}")
        types, actions = filters.get("type"), filters.get("event")

        def wanted(event: dict[str, Any]) -> bool:
            t = event["time"]
            return (
                (types is None or "swarm" in types)
                and (actions is None or event["Action"] in actions)
                and (nodes is None or event["node"]["Name"] in nodes or event["node"]["Addr"] in nodes)
                and (since is None or t >= since)
                and (until is None or t <= until)
            )

        out: asyncio.Queue[bytes | None] = asyncio.Queue(1024)
        own: asyncio.Queue[dict[str, Any]] = asyncio.Queue(1024)
        pumping: dict[str, asyncio.Task[None]] = {}

        async def pump(e: Engine) -> None:
            node = _node_of(e)
            try:
                async with stream(e.upstream, "GET", with_query("/events", query)) as r:
                    if r.status == 200:
                        async for line in r.lines():
                            if line.strip():
                                await out.put(_with_node(line, node))
            except (UpstreamUnreachable, UpstreamBroken, OSError, ValueError, asyncio.IncompleteReadError):
                pass
            finally:
                await out.put(None)

        def follow(e: Engine) -> None:
            if e.addr not in pumping or pumping[e.addr].done():
                pumping[e.addr] = asyncio.ensure_future(pump(e))

        await ex.start(200, [(b"content-type", b"application/json")])
        if since is not None:
            for event in list(self._recent):
                if wanted(event):
                    await ex.send(json.dumps(event).encode() + b"\n")
        self._listeners.add(own)
        for e in engines:
            follow(e)
        gone = asyncio.ensure_future(ex.client_closed())
        live = len(pumping)
        try:
            while True:
                if until is not None and live <= 0 and time.time() >= until:
                    break
                getter = asyncio.ensure_future(out.get())
                mine = asyncio.ensure_future(own.get())
                wait: set[asyncio.Future[Any]] = {getter, mine, gone}
                timeout = None if until is None else max(0.05, until - time.time() + 0.05)
                done, _ = await asyncio.wait(wait, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for f in (getter, mine):
                    if f not in done:
                        f.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await f
                if gone in done:
                    raise ClientGone("client left the event stream")
                if getter in done:
                    item = getter.result()
                    if item is None:
                        live -= 1
                    else:
                        await ex.send(item)
                if mine in done:
                    event = mine.result()
                    joined = self.cluster.engine_named(event["node"]["Addr"])
                    chosen = joined is not None and (nodes is None or joined.name in nodes or joined.addr in nodes)
                    if event["Action"] == "engine_connect" and joined is not None and chosen and until is None:
                        live += 1 if joined.addr not in pumping or pumping[joined.addr].done() else 0
                        follow(joined)
                    if wanted(event):
                        await ex.send(json.dumps(event).encode() + b"\n")
            await ex.end()
        finally:
            self._listeners.discard(own)
            gone.cancel()
            for t in pumping.values():
                t.cancel()
            await asyncio.gather(gone, *pumping.values(), return_exceptions=True)


def _with_node(line: bytes, node: dict[str, str]) -> bytes:
    try:
        event = json.loads(line)
    except ValueError:
        return line + b"\n"
    if isinstance(event, dict):
        event["node"] = node
        return json.dumps(event).encode() + b"\n"
    return line + b"\n"
