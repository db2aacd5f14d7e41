"""The primary's Docker Engine API over the cluster: aggregate, place, or route each request to one engine.

* ``/_ping``, ``/version``: answered by the manager (API version: the lowest among the engines).
* ``/containers/json``, ``/images/json``: every healthy engine asked at once, lists concatenated; container
  names carry the node name (``/node-name/container-name``), as Swarm did.
* ``/events``: the engines' event streams merged line by line as they arrive (not buffered).
* ``POST /containers/create``: placed by the scheduler (Swarm's filters and strategy, :mod:`.scheduler`); the
  container gets a ``com.docker.swarm.id`` label.
* ``/containers/{id}/...`` (ids, unique id prefixes, names, ``node-name/name``), ``/exec/{id}/...``,
  ``/images/{name}/...``: forwarded to the engine that has it, streams and hijacked connections included.
* Anything else: ``501 {"message": ...}`` naming the endpoint, at once (never a hang).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import platform
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx

from swarmha.manager.cluster import Cluster, Engine, NoEngine
from swarmha.manager.forward import UpstreamBroken, UpstreamUnreachable, fetch, forward
from swarmha.manager.http import ClientGone, Exchange
from swarmha.manager.info import SERVER_VERSION

__all__ = ["DEFAULT_API_VERSION", "PrimaryAPI"]

DEFAULT_API_VERSION = "1.41"
MIN_API_VERSION = "1.24"
_SCOPED = re.compile(r"^/(containers|exec|images)/(.+?)(/[a-z]+)?$")
_COLLECTION = {"json", "create", "prune", "load", "search", "get"}


def _vkey(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in v.split("."))
    except ValueError:
        return (0,)


#: Largest engine answer kept as the last one-engine list (``PrimaryAPI._last``).
_LAST_MAX = 1 << 20
_NAMES_KEY = b'"Names":['
_PLAIN_NAMES = re.compile(r"[-/\w.]*", re.ASCII)  # Docker's name characters: json.dumps leaves them as they are


def _json_names(names: list[Any]) -> bytes:
    """``json.dumps(names, separators=(",", ":"))`` as bytes; built directly for plain names (the usual case)."""
    if names and all(isinstance(n, str) and _PLAIN_NAMES.fullmatch(n) for n in names):
        return b'["' + '","'.join(names).encode() + b'"]'
    return json.dumps(names, separators=(",", ":")).encode()


def _rename_in_place(raw: bytes, renamed: list[Any], node: str) -> bytes | None:
    """An engine's ``/containers/json`` bytes with each ``Names`` array replaced by its renamed one, or None.

    ``renamed`` is the parsed list of ``raw`` after renaming (``/node/name``). Each ``"Names":[...]`` in
    ``raw`` is replaced only if the occurrences are exactly one per container, in order, and each array's
    bytes are exactly the compact JSON of the container's original names; anything else (another
    encoder's escaping, a ``Names`` key elsewhere, a container without names) returns None and the
    caller re-encodes the whole list. So the result always decodes to ``renamed``.
    """
    parts: list[bytes] = []
    pos = 0
    prefix = f"/{node}"
    for item in renamed:
        names = item.get("Names") if isinstance(item, dict) else None
        if not isinstance(names, list) or not names:
            return None
        start = raw.find(_NAMES_KEY, pos)
        if start < 0:
            return None
        start += len(_NAMES_KEY) - 1  # at the '['
        end = raw.find(b"]", start) + 1
        original = [n[len(prefix) :] if isinstance(n, str) else n for n in names]
        if end <= 0 or raw[start:end] != _json_names(original):
            return None
        parts += [raw[pos:start], _json_names(names)]
        pos = end
    if raw.find(_NAMES_KEY, pos) >= 0:
        return None
    parts.append(raw[pos:])
    return b"".join(parts)


class PrimaryAPI:
    """Serves Docker API requests for ``cluster`` (see the module docstring)."""

    def __init__(self, cluster: Cluster, info: Callable[[], dict[str, Any]]) -> None:
        self.cluster = cluster
        self._info = info
        #: Per kind, the last one-engine list answered: (engine, its name, the engine's bytes, the bytes sent, the
        #: container ids). The answer is a function of the engine's bytes and name: the same bytes are not parsed
        #: and renamed again (the ownership the parse taught is still recorded).
        self._last: dict[str, tuple[Engine, str, bytes, bytes, list[str]]] = {}

    def api_version(self) -> str:
        versions = [e.api_version for e in self.cluster.healthy() if e.api_version]
        return min(versions, key=_vkey) if versions else DEFAULT_API_VERSION

    def ping_headers(self) -> list[tuple[str, str]]:
        return [
            ("API-Version", self.api_version()),
            ("Docker-Experimental", "false"),
            ("OSType", "linux"),
            ("Cache-Control", "no-cache, no-store, must-revalidate"),
        ]

    async def ping(self, ex: Exchange) -> None:
        await ex.respond(200, b"OK", extra=self.ping_headers())

    async def handle(self, ex: Exchange) -> None:
        method, path = ex.method, ex.path
        if path == "/_ping" and method in ("GET", "HEAD"):
            return await self.ping(ex)
        if path == "/info" and method == "GET":
            return await ex.json(200, self._info())
        if path == "/version" and method == "GET":
            return await ex.json(200, self._version())
        if path == "/containers/json" and method == "GET":
            return await self._list(ex, "containers")
        if path == "/images/json" and method == "GET":
            return await self._list(ex, "images")
        if path == "/events" and method == "GET":
            return await self._events(ex)
        if path == "/containers/create" and method == "POST":
            return await self._create(ex)
        m = _SCOPED.match(path)
        if m and m.group(2) not in _COLLECTION:
            return await self._scoped(ex, m.group(1), m.group(2), m.group(3) or "")
        await ex.error(501, f"swarmha: {method} {path} is not supported by the cluster manager")

    def _version(self) -> dict[str, Any]:
        return {
            "Version": SERVER_VERSION,
            "ApiVersion": self.api_version(),
            "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "",
            "GoVersion": "python" + platform.python_version(),
            "Os": "linux",
            "Arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine()),
            "KernelVersion": platform.release(),
            "Components": [{"Name": "swarmha", "Version": SERVER_VERSION, "Details": {}}],
        }

    async def _gather(self, ex: Exchange, path: str) -> list[tuple[Engine, bytes]]:
        """Every healthy engine's answer to ``GET path`` (with the request's query): (engine, body) for a 200."""
        query = ex.query_string
        target = path + (f"?{query}" if query else "")

        async def one(e: Engine) -> tuple[Engine, bytes] | None:
            try:
                r = await fetch(self.cluster.pool, e.upstream, target, timeout=self.cluster.timeout)
            except (UpstreamUnreachable, UpstreamBroken):
                return None
            return (e, r.body) if r.status == 200 else None

        engines = self.cluster.healthy()
        if len(engines) == 1:  # the common case: no task, no gather
            results = [await one(engines[0])]
        else:
            results = await asyncio.gather(*(one(e) for e in engines))
        return [r for r in results if r is not None]

    async def _list(self, ex: Exchange, kind: str) -> None:
        raws = await self._gather(ex, f"/{kind}/json")
        if len(raws) == 1:  # one engine: its own bytes, names renamed in place (no re-encoding), when that is exact
            e, raw = raws[0]
            last = self._last.get(kind)
            if last is not None and last[0] is e and last[1] == e.name and last[2] == raw:
                for ident in last[4]:  # the same answer as last time: the same renamed bytes, the same owners
                    self.cluster.remember(ident, e)
                return await ex.respond(200, last[3], "application/json")
        lists: list[tuple[Engine, Any, bytes]] = []
        for e, raw in raws:
            try:
                lists.append((e, json.loads(raw), raw))
            except ValueError:
                continue  # not JSON: left out, like an engine that did not answer
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for e, items, _raw in lists:
            for item in items:
                if kind == "containers":
                    item["Names"] = [f"/{e.name}{n}" for n in item.get("Names") or []]
                    self.cluster.remember(item["Id"], e)
                elif item.get("Id") in seen:
                    continue
                seen.add(item.get("Id", ""))
                out.append(item)
        if len(lists) == 1:
            e, items, raw = lists[0]
            body = raw if kind == "images" else _rename_in_place(raw, items, e.name)
            if body is not None:
                if len(raw) <= _LAST_MAX:
                    ids = [item["Id"] for item in items] if kind == "containers" else []
                    self._last[kind] = (e, e.name, raw, body, ids)
                return await ex.respond(200, body, "application/json")
        if len(lists) > 1:  # one engine's list is already newest first
            out.sort(key=lambda i: i.get("Created", 0), reverse=True)
        await ex.json(200, out)

    async def _events(self, ex: Exchange) -> None:
        query = urlsplit(ex.target).query
        engines = self.cluster.healthy()
        lines: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def pump(e: Engine) -> None:
            try:
                async with self.cluster.http.stream(
                    "GET", f"{e.url}/events" + (f"?{query}" if query else ""), timeout=httpx.Timeout(5.0, read=None)
                ) as r:
                    async for line in r.aiter_lines():
                        if line.strip():
                            await lines.put(line.encode() + b"\n")
            except httpx.HTTPError:
                pass
            finally:
                await lines.put(None)

        await ex.start(200, [(b"content-type", b"application/json")])
        tasks = [asyncio.ensure_future(pump(e)) for e in engines]
        gone = asyncio.ensure_future(ex.client_closed())
        try:
            live = len(tasks)
            while live:
                getter = asyncio.ensure_future(lines.get())
                done, _ = await asyncio.wait({getter, gone}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    raise ClientGone("client left the event stream")
                item = getter.result()
                if item is None:
                    live -= 1
                else:
                    await ex.send(item)
            await ex.end()
        finally:
            gone.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(gone, *tasks, return_exceptions=True)

    async def _create(self, ex: Exchange) -> None:
        try:
            config = json.loads(await ex.body() or b"{}")
            if not isinstance(config, dict):
                raise ValueError("the body must be a JSON object")
        except ValueError as e:
            return await ex.error(400, f"swarmha: invalid container config: {e}")
        try:
            engine, env = self.cluster.place(config)
        except NoEngine as e:
            return await ex.error(500, f"swarmha: {e}")
        config["Env"] = env
        query = urlsplit(ex.target).query
        try:
            r = await self.cluster.http.post(
                f"{engine.url}/containers/create" + (f"?{query}" if query else ""),
                content=json.dumps(config).encode(),
                headers={"Content-Type": "application/json"},
            )
        except httpx.HTTPError as e:
            self.cluster.unplace(config)
            return await ex.error(502, f"swarmha: node {engine.name} ({engine.addr}) failed: {e}")
        self.cluster.unplace(config)  # created or refused: no longer pending (placed() records a created one)
        if r.status_code == 201:
            with contextlib.suppress(ValueError, KeyError):
                self.cluster.placed(engine, r.json()["Id"], config, name=parse_qs(query).get("name", [""])[0])
        await ex.respond(r.status_code, r.content, r.headers.get("content-type", "application/json"))

    async def _scoped(self, ex: Exchange, kind: str, ident: str, action: str) -> None:
        engine: Engine | None = None
        real = ident
        if kind == "containers" and "/" in ident:  # node-name/container-name, as listed
            node, _, name = ident.partition("/")
            engine = self.cluster.engine_named(node)
            real = name
        if engine is None:
            engine = await self.cluster.locate(kind, ident)
        if engine is None:
            noun = {"containers": "container", "exec": "exec instance", "images": "image"}[kind]
            return await ex.error(404, f"No such {noun}: {ident}")
        target = ex.target
        if real != ident:
            parts = urlsplit(ex.target)
            path = parts.path.replace(f"/{kind}/{ident}", f"/{kind}/{quote(real)}", 1)
            target = path + (f"?{parts.query}" if parts.query else "")
        created: list[int] = []

        def on_head(status: int, headers: list[tuple[bytes, bytes]]) -> None:
            created.append(status)

        try:
            await forward(ex, engine.upstream, pool=self.cluster.pool, target=target, on_head=on_head)
        except (UpstreamUnreachable, UpstreamBroken) as e:
            if not ex.started:
                await ex.error(502, f"swarmha: node {engine.name} ({engine.addr}) failed: {e}")
            return
        if kind == "containers" and ex.method == "DELETE" and created and created[0] < 300:
            self.cluster.forget(ident)
