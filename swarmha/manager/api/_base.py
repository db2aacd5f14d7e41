"""What every resource module of the primary's API shares: the cluster, fan-out to engines, relaying, merging.

Guarantees: :meth:`Base.gather` asks the engines at once and leaves out an engine that does not answer (it
is reported as None, never raised); :meth:`Base.relay` forwards a request to one engine and turns a failure
before the answer into ``502`` naming the node; :func:`tee` copies one request body to several engines with
backpressure (the slowest engine sets the pace; nothing is buffered beyond a few chunks per engine).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import quote

from swarmha.manager.api._docker import DockerError, parse_filters, with_query
from swarmha.manager.cluster import Cluster, Engine
from swarmha.manager.forward import forward
from swarmha.manager.http import Exchange
from swarmha.manager.upstream import Response, UpstreamBroken, UpstreamUnreachable
from swarmha.manager.view import ClusterView

__all__ = ["Base", "Tee", "local_name"]

#: Seconds a pull, load, import or build on an engine may take in all.
LONG = 3600.0
#: Seconds a prune on an engine may take (removing many images or build caches takes minutes).
PRUNE = 600.0


def local_name(engine: Engine, name: str) -> str:
    """Swarm's name for a node-local network or volume: ``node/name``."""
    return f"{engine.name}/{name}"


def _identity(e: Engine, found: Any) -> str:
    """What makes a network or volume one object: its ``Id`` (a network), its name for a non-local volume,
    else the engine and the name (a local volume: the same name on two engines is two volumes)."""
    if not isinstance(found, dict):
        return f"{e.addr}/?"
    if found.get("Id"):
        return str(found["Id"])
    if found.get("Scope", "local") != "local":
        return str(found.get("Name", ""))
    return f"{e.addr}/{found.get('Name', '')}"


def merge_prune(answers: list[Any], key: str) -> dict[str, Any]:
    """Prune answers merged: the ``key`` lists concatenated, ``SpaceReclaimed`` summed (absent when no engine
    reported it, as dockerd leaves it out of a network prune); ``key`` null when nothing was deleted."""
    out: dict[str, Any] = {key: [], "SpaceReclaimed": 0}
    for a in answers:
        if isinstance(a, dict):
            out[key] += a.get(key) or []
            out["SpaceReclaimed"] += int(a.get("SpaceReclaimed") or 0)
    if "SpaceReclaimed" not in (k for a in answers if isinstance(a, dict) for k in a):
        del out["SpaceReclaimed"]
    if not out[key]:
        out[key] = None
    return out


class Base:
    """The cluster and the helpers the resource modules use (one instance per primary)."""

    #: The event-fed view of the engines (set by the primary's API); told of every mutating call made here.
    view: ClusterView | None = None

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    # -- fan-out -------------------------------------------------------------------------------------------

    async def gather(
        self,
        method: str,
        target: str,
        engines: Iterable[Engine] | None = None,
        *,
        body: bytes | None = None,
        headers: Iterable[tuple[bytes, bytes]] = (),
        timeout: float | None = None,
    ) -> list[tuple[Engine, Response | None]]:
        """Every engine's (default: every healthy one's) answer to one request; None for one that failed."""
        chosen = list(self.cluster.healthy() if engines is None else engines)
        if method == "GET" and self.view is not None and (kept := await self.view.lists(chosen, target)) is not None:
            return list(kept)  # the whole image, network or volume lists, from the engines' views
        hs = list(headers)

        async def one(e: Engine) -> tuple[Engine, Response | None]:
            try:
                return e, await self.cluster.call(e, method, target, body=body, headers=hs, timeout=timeout)
            except (UpstreamUnreachable, UpstreamBroken):
                return e, None

        one_engine = len(chosen) == 1
        answers = [await one(chosen[0])] if one_engine else list(await asyncio.gather(*(one(e) for e in chosen)))
        if self.view is not None and method != "GET":
            for e, _r in answers:
                self.view.touched(e, method, target, body)
        return answers

    async def prune(self, ex: Exchange, path: str, key: str, *, local: bool = False) -> None:
        """``POST path`` (a prune endpoint) on every healthy engine, the answers merged (:func:`merge_prune`).

        ``local``: the deleted items are names of node-local objects (networks, volumes), shown ``node/name``
        as the listings show them. An engine that fails or answers something else than a JSON 200 is left out.
        """
        answers = []
        for e, r in await self.gather("POST", with_query(path, ex.query_string), timeout=PRUNE):
            if r is None or r.status != 200:
                continue
            try:
                answer = r.json()
            except ValueError:
                continue
            if local and isinstance(answer, dict) and isinstance(answer.get(key), list):
                answer[key] = [local_name(e, str(name)) for name in answer[key]]
            answers.append(answer)
        await respond_json(ex, 200, merge_prune(answers, key))

    async def gather_json(self, target: str, engines: Iterable[Engine] | None = None) -> list[tuple[Engine, Any]]:
        """(engine, parsed body) for every engine that answered ``GET target`` with 200 and JSON."""
        out = []
        for e, r in await self.gather("GET", target, engines):
            if r is not None and r.status == 200:
                with contextlib.suppress(ValueError):
                    out.append((e, r.json()))
        return out

    def engines_for(self, filters: dict[str, list[str]]) -> list[Engine]:
        """The healthy engines a ``node`` filter selects (names or addresses; all without one)."""
        nodes = filters.get("node")
        engines = self.cluster.healthy()
        if not nodes:
            return engines
        return [e for e in engines if e.name in nodes or e.addr in nodes]

    def split_node(self, name: str) -> tuple[Engine | None, str]:
        """``node/name`` -> (that engine, ``name``) when ``node`` is an engine's name; else (None, ``name``)."""
        node, sep, rest = name.partition("/")
        if sep and rest:
            e = self.cluster.engine_named(node)
            if e is not None:
                return e, rest
        return None, name

    def pinned_engines(self, filters: dict[str, list[str]], pinned: str) -> list[Engine]:
        """The engines a request's ``filters`` select, with ``filters`` made fit to send to them: the ``node``
        filter (the manager's own) is removed, and each ``pinned`` value written ``node/name`` narrows the
        engines to that node and is sent as ``name``."""
        engines = self.engines_for(filters)
        filters.pop("node", None)
        values = []
        for value in filters.get(pinned, []):
            e, name = self.split_node(value)
            if e is not None:
                engines = [x for x in engines if x is e]
            values.append(name)
        if values:
            filters[pinned] = values
        return engines

    def filters(self, ex: Exchange) -> dict[str, list[str]]:
        return parse_filters(ex.arg("filters"))

    # -- one engine ----------------------------------------------------------------------------------------

    async def relay(self, ex: Exchange, e: Engine, target: str | None = None, body: bytes | None = None) -> int:
        """Forward ``ex`` to ``e`` (streams and hijacking included); returns the engine's status (0: failed)."""
        status: list[int] = []

        def on_head(code: int, headers: list[tuple[bytes, bytes]]) -> None:
            status.append(code)
            if self.view is not None:  # before the client sees the answer: its next request sees the change
                self.view.touched(e, ex.method, target or ex.target)

        try:
            await forward(ex, e.upstream, pool=self.cluster.pool, target=target, body=body, on_head=on_head)
        except (UpstreamUnreachable, UpstreamBroken) as err:
            if not ex.started:
                await ex.error(502, f"swarmha: node {e.name} ({e.addr}) failed: {err}")
            return 0
        return status[0] if status else 0

    async def call(self, e: Engine, method: str, target: str, **kw: Any) -> Response:
        """One request to ``e``; a failure is DockerError 502 naming the node (Swarm's "Cannot connect to the
        docker engine endpoint" when it cannot be reached, which counts as one of its failures)."""
        try:
            r = await self.cluster.call(e, method, target, **kw)
        except UpstreamUnreachable as err:
            self.cluster.failed(e, err)
            raise DockerError(
                502, f"Cannot connect to the docker engine endpoint: node {e.name} ({e.addr}): {err}"
            ) from err
        except UpstreamBroken as err:
            raise DockerError(502, f"swarmha: node {e.name} ({e.addr}) failed: {err}") from err
        if self.view is not None and method != "GET":
            self.view.touched(e, method, target, kw.get("body"), r.body if r.status == 201 else None)
        return r

    async def holders(self, kind: str, ident: str, engines: Iterable[Engine] | None = None) -> list[tuple[Engine, Any]]:
        """(engine, its inspect answer) for every engine (default: every healthy one) on which ``GET
        /{kind}/{ident}`` (networks, volumes) or ``/{kind}/{ident}/json`` (images, containers) answers 200, in
        engine order."""
        suffix = "/json" if kind in ("images", "containers") else ""
        return await self.gather_json(f"/{kind}/{quote(ident, safe='/:@')}{suffix}", engines)

    async def find(self, kind: str, ident: str, engines: Iterable[Engine] | None = None) -> list[Engine]:
        """The engines of :meth:`holders`."""
        return [e for e, _ in await self.holders(kind, ident, engines)]

    async def named_owner(
        self, kind: str, ident: str, missing: str, *, prefer: Engine | None = None
    ) -> tuple[Engine, str]:
        """The engine holding network/volume ``ident`` and its name there.

        ``node/name`` names both. Otherwise the one engine that has it; several engines holding the same object
        (a global- or swarm-scope network: the same ``Id``) count as one; several holding *different* objects
        of that name (``bridge``, ``host``: one per engine) are ambiguous: ``prefer``'s (the engine of the
        container a connect names) if it is one of them, else DockerError 400 naming each ``node/name``, as
        dockerd refuses an ambiguous network name (Swarm classic answered "not found"). DockerError 404 with
        ``missing`` (the engine's own wording) when none has it.
        """
        e, real = self.split_node(ident)
        if e is not None:
            return e, real
        have = await self.holders(kind, ident)
        if not have:
            raise DockerError(404, missing)
        if prefer is not None:
            for e, _ in have:
                if e is prefer or e.addr == prefer.addr:
                    return e, ident
        if len({_identity(e, found) for e, found in have}) > 1:
            where = ", ".join(local_name(e, ident) for e, _ in have)
            raise DockerError(
                400,
                f"{kind[:-1]} {ident} is ambiguous ({len(have)} matches found on name): it is on several nodes "
                f"({where}); name one as NODE/{ident}",
            )
        return have[0][0], ident

    async def respond(self, ex: Exchange, r: Response) -> None:
        """Relay a whole engine answer as it came (status, content type, body)."""
        await ex.respond(r.status, r.body, r.header("content-type", "application/json"))


async def respond_json(ex: Exchange, status: int, obj: Any) -> None:
    await ex.respond(status, json.dumps(obj).encode() + b"\n", "application/json")


class Tee:
    """One request body read once and copied to ``n`` engines at the pace of the slowest (bounded queues).

    ``branch(i)`` is engine ``i``'s copy; ``close(i)`` drops it (its engine failed) so it never blocks the
    others. The source is read only once some branch is read. A source that fails (the client left, bad chunk
    framing, the body timeout) makes every branch raise its error, so no engine takes a cut body for a whole
    one: each engine's connection is closed without the body's end.
    """

    def __init__(self, source: AsyncIterator[bytes], n: int, depth: int = 4) -> None:
        self._source = source
        self._queues: list[asyncio.Queue[bytes | Exception | None]] = [asyncio.Queue(depth) for _ in range(n)]
        self._closed = [False] * n
        self._task: asyncio.Task[None] | None = None

    async def _pump(self) -> None:
        end: Exception | None = None
        try:
            async for chunk in self._source:
                for i, q in enumerate(self._queues):
                    if not self._closed[i]:
                        await q.put(chunk)
        except Exception as e:
            end = e
            raise
        finally:
            for i, q in enumerate(self._queues):
                if not self._closed[i]:
                    await q.put(end)

    def close(self, i: int) -> None:
        self._closed[i] = True
        q = self._queues[i]
        while not q.empty():  # free a pump waiting on this queue
            q.get_nowait()

    async def branch(self, i: int) -> AsyncIterator[bytes]:
        if self._task is None:
            self._task = asyncio.ensure_future(self._pump())
            self._task.add_done_callback(lambda t: t.cancelled() or t.exception())  # raised again by finish()
        q = self._queues[i]
        try:
            while (chunk := await q.get()) is not None:
                if isinstance(chunk, Exception):
                    raise chunk
                yield chunk
        finally:
            self.close(i)

    async def finish(self) -> None:
        """Wait for the source to be read whole (the request must be read before the response ends); raises what
        the source raised (:class:`ClientGone`, :class:`BadRequest`), so the client gets 400 for a bad body."""
        for i in range(len(self._queues)):
            self.close(i)
        if self._task is not None:
            await self._task


def engine_error_message(e: Engine, r: Response | None) -> str:
    """What an engine said in its Docker error body (or that it did not answer), prefixed with its name."""
    if r is None:
        return f"{e.name}: no answer"
    try:
        msg = r.json().get("message")
    except (ValueError, AttributeError):
        msg = None
    return f"{e.name}: {msg or r.body[:200].decode(errors='replace') or r.status}"
