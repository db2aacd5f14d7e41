"""Images over the cluster, as Swarm classic served them.

* ``GET /images/json``: merged, one item per image id (``RepoTags``/``RepoDigests`` united across engines).
* ``POST /images/create``: a pull (``fromImage``) on every healthy engine at once, their progress streams
  merged into one as lines arrive (each message's ``id`` prefixed with the node name; an engine's failure is
  an error message naming it); an import (``fromSrc``) sends the request body to every engine.
* ``POST /images/load``: the tarball to every engine; ``GET /images/get``: from one engine that has the first
  image; ``POST /build``: placed on one engine (``constraint:`` build args, as Swarm read them), streamed.
* ``POST /images/{name}/tag`` and ``DELETE /images/{name}``: on every engine that has the image (by name, id or
  digest); answers merged. ``json``, ``history``, ``get``, ``push``: forwarded to one engine that has it.
* ``POST /images/prune``: on every engine, merged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from swarmha.manager.api._base import Base, Tee, engine_error_message, respond_json
from swarmha.manager.api._docker import DockerError, encode_filters, json_object, replace_query, with_query
from swarmha.manager.cluster import Engine, NoEngine
from swarmha.manager.http import Exchange
from swarmha.manager.upstream import UpstreamBroken, UpstreamUnreachable, stream

__all__ = ["Images"]

_BROKEN = (UpstreamUnreachable, UpstreamBroken, OSError, ValueError, asyncio.IncompleteReadError)


class Images(Base):
    async def listing(self, ex: Exchange) -> None:
        filters = self.filters(ex)
        engines = self.engines_for(filters)
        node = filters.pop("node", None)  # the manager's own filter: not sent to the engines
        query = ex.query_string
        if node:
            query = replace_query(query, filters=encode_filters(filters) if filters else None)
        merged: dict[str, dict[str, Any]] = {}
        answers = await self.gather("GET", with_query("/images/json", query), engines)
        listed = [(e, r) for e, r in answers if r is not None and r.status == 200]
        refused = [(e, r) for e, r in answers if r is not None and 400 <= r.status < 500]
        if not listed and refused:  # before=/since= an image no engine has: the engines' own refusal
            e, r = refused[0]
            raise DockerError(r.status, engine_error_message(e, r))
        for _e, r in listed:
            try:
                items = r.json()
            except ValueError:
                continue
            for item in items if isinstance(items, list) else []:
                ident = str(item.get("Id", ""))
                seen = merged.get(ident)
                if seen is None:
                    merged[ident] = item
                    continue
                for k in ("RepoTags", "RepoDigests"):
                    extra = [x for x in item.get(k) or [] if x not in (seen.get(k) or [])]
                    if extra:
                        seen[k] = [*(seen.get(k) or []), *extra]
        out = sorted(merged.values(), key=lambda i: i.get("Created", 0), reverse=True)
        await respond_json(ex, 200, out)

    # -- streams from every engine, merged ------------------------------------------------------------------

    async def _merged(
        self,
        ex: Exchange,
        engines: list[Engine],
        target: str,
        body: Tee | None,
        headers: list[tuple[bytes, bytes]],
        *,
        once: bytes = b"",
    ) -> None:
        """``POST target`` on every engine at once; their JSON-lines answers merged into one 200 stream.

        Each message's ``id`` gets the node name in front (a message without one gets the node name); an engine
        that fails or refuses adds one error message naming it. When every engine refuses before streaming,
        the first refusal is the answer (its status, the node named). A line holding ``once`` (``Loaded image``)
        is sent once, as the first engine said it, however many engines say the same: clients count them.
        """
        said: set[bytes] = set()
        if not engines:
            raise DockerError(500, "swarmha: no healthy node available in the cluster")
        lines: asyncio.Queue[tuple[Engine, bytes] | None] = asyncio.Queue(256)
        heads: list[asyncio.Future[tuple[int, bytes]]] = [asyncio.get_running_loop().create_future() for _ in engines]

        async def one(i: int, e: Engine) -> None:
            src: bytes | AsyncIterator[bytes] = b"" if body is None else body.branch(i)
            try:
                async with stream(e.upstream, "POST", target, body=src, headers=headers) as r:
                    if r.status != 200:
                        heads[i].set_result((r.status, await r.read(1 << 16)))
                        return
                    heads[i].set_result((200, b""))
                    async for line in r.lines():
                        if line.strip():
                            await lines.put((e, line))
            except _BROKEN as err:
                if not heads[i].done():
                    heads[i].set_result((502, json.dumps({"message": f"failed: {err}"}).encode()))
                else:
                    await lines.put((e, json.dumps({"error": f"failed: {err}"}).encode()))
            finally:
                if body is not None:
                    body.close(i)
                if not heads[i].done():
                    heads[i].set_result((502, b""))
                await lines.put(None)

        tasks = [asyncio.ensure_future(one(i, e)) for i, e in enumerate(engines)]
        try:
            results = await asyncio.gather(*heads)
            if all(status != 200 for status, _ in results):
                status, raw = results[0]
                try:
                    msg = json.loads(raw).get("message") or raw.decode(errors="replace")
                except (ValueError, AttributeError):
                    msg = raw.decode(errors="replace")
                if body is not None:
                    await body.finish()
                raise DockerError(status, f"{engines[0].name}: {msg}")
            await ex.start(200, [(b"content-type", b"application/json")])
            for (status, raw), e in zip(results, engines, strict=True):
                if status != 200:
                    msg = raw.decode(errors="replace")
                    with contextlib.suppress(ValueError, AttributeError):
                        msg = json.loads(raw).get("message") or msg
                    await ex.send(_line({"error": f"{e.name}: {msg}", "errorDetail": {"message": f"{e.name}: {msg}"}}))
            live = len(tasks)
            while live:
                item = await lines.get()
                if item is None:
                    live -= 1
                    continue
                e, line = item
                if once and once in line:
                    if line in said:
                        continue
                    said.add(line)
                    await ex.send(line + b"\r\n")
                    continue
                await ex.send(_renamed(e, line))
            if body is not None:
                await body.finish()
            await self.cluster.reread_images(engines)  # placement sees what came in before the client goes on
            await ex.end()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def create(self, ex: Exchange) -> None:
        """``docker pull`` (``fromImage``) or ``docker import`` (``fromSrc``) on every healthy engine."""
        if not ex.arg("fromImage") and not ex.arg("fromSrc"):
            raise DockerError(400, "swarmha: POST /images/create needs fromImage or fromSrc")
        engines = self.cluster.healthy()
        auth = ex.header("x-registry-auth")
        headers = [(b"x-registry-auth", auth.encode("latin-1"))] if auth else []
        body = None
        if ex.arg("fromSrc") == "-":
            body = Tee(ex.body_chunks(), len(engines))
            headers.append((b"content-type", ex.header("content-type", "application/x-tar").encode("latin-1")))
        await self._merged(ex, engines, with_query("/images/create", ex.query_string), body, headers)

    async def load(self, ex: Exchange) -> None:
        engines = self.cluster.healthy()
        headers = [(b"content-type", ex.header("content-type", "application/x-tar").encode("latin-1"))]
        body = Tee(ex.body_chunks(), len(engines))
        target = with_query("/images/load", ex.query_string)
        await self._merged(ex, engines, target, body, headers, once=b'"stream":"Loaded image')

    async def get(self, ex: Exchange) -> None:
        """``docker save a b``: from one healthy engine that has every image named, as Swarm chose it; 404
        naming the image no engine has, else Swarm's "Unable to find a healthy engine containing all images"."""
        names = ex.query.get("names") or []
        if not names:
            raise DockerError(400, "swarmha: GET /images/get needs names")
        holders = await asyncio.gather(*(self.find("images", n) for n in dict.fromkeys(names)))
        for name, have in zip(dict.fromkeys(names), holders, strict=True):
            if not have:
                raise DockerError(404, f"No such image: {name}")
        common = [e for e in holders[0] if all(any(x.addr == e.addr for x in h) for h in holders[1:])]
        if not common:
            raise DockerError(404, "Unable to find a healthy engine containing all images")
        await self.relay(ex, common[0])

    async def build(self, ex: Exchange) -> None:
        """``docker build``, placed on one engine; ``--build-arg constraint:node==X`` (and other constraints)
        choose it, as in Swarm, and are not passed to the build."""
        env: list[str] = []
        args: dict[str, Any] = {}
        raw = ex.arg("buildargs")
        if raw:
            args = json_object(raw, "buildargs")
            for k in [k for k in args if str(k).startswith("constraint:")]:
                env.append(f"{k}={args.pop(k)}")
        try:
            engine, _ = self.cluster.place({"Env": env})
        except NoEngine as e:
            raise DockerError(500, f"swarmha: {e}") from e
        parts = urlsplit(ex.target)
        target = with_query(parts.path, replace_query(parts.query, buildargs=json.dumps(args) if raw else None))
        await self.relay(ex, engine, target)
        await self.cluster.reread_images([engine])

    # -- one image -------------------------------------------------------------------------------------------

    async def scoped(self, ex: Exchange, ident: str, action: str) -> None:
        have = await self.find("images", ident)
        if not have:
            raise DockerError(404, f"No such image: {ident}")
        if action == "/tag" and ex.method == "POST":
            return await self._on_all(ex, have, "tag", 201)
        if not action and ex.method == "DELETE":
            return await self._on_all(ex, have, "delete", 200)
        await self.relay(ex, have[0])

    async def _on_all(self, ex: Exchange, engines: list[Engine], what: str, ok: int) -> None:
        body = await ex.body()
        answers = await self.gather(ex.method, ex.target, engines, body=body if body else None, timeout=120)
        good = [(e, r) for e, r in answers if r is not None and r.status == ok]
        await self.cluster.reread_images(engines)
        if not good:
            first = answers[0][1]
            status = first.status if first is not None else 502
            raise DockerError(status, "; ".join(engine_error_message(e, r) for e, r in answers))
        if what == "tag":
            return await ex.respond(201, b"", "text/plain; charset=utf-8")
        merged: list[Any] = []
        for _e, r in good:
            with contextlib.suppress(ValueError):
                for item in r.json() or []:
                    if item not in merged:
                        merged.append(item)
        await respond_json(ex, 200, merged)


def _line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\r\n"


def _renamed(e: Engine, line: bytes) -> bytes:
    """One progress message from ``e`` with the node in its ``id`` (or in its error)."""
    try:
        msg = json.loads(line)
    except ValueError:
        return line + b"\r\n"
    if not isinstance(msg, dict):
        return line + b"\r\n"
    if msg.get("error"):
        msg["error"] = f"{e.name}: {msg['error']}"
        detail = msg.get("errorDetail")
        if isinstance(detail, dict) and detail.get("message"):
            detail["message"] = f"{e.name}: {detail['message']}"
    elif msg.get("id"):
        msg["id"] = f"{e.name}: {msg['id']}"
    elif "status" in msg or "stream" in msg:
        msg["id"] = e.name
    return _line(msg)
