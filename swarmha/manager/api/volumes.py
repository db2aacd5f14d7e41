"""Volumes over the cluster, as Swarm classic served them.

* ``GET /volumes``: merged; a local volume is named ``node/name``; ``filters`` ``node=`` chooses the engines
  (the rest is the engines' own: ``name=``, ``label=``, ``driver=``, ``dangling=``).
* ``POST /volumes/create``: on the node a ``node/name`` names; a Compose project's volume where the project
  already lives (else where :meth:`Cluster.place` chooses); any other volume on every healthy engine, as Swarm
  classic created them (no name: a random one, the same everywhere), or on every node its
  ``com.docker.swarm.whitelists`` label lets through. The answer is the first engine's, or the
  first refusal naming its node. ``GET /volumes/{name}``: ``node/name``, or the one engine that
  has it (the name on several engines is refused, 400, naming each ``node/name``). ``DELETE
  /volumes/{name}``: ``node/name``, or every engine that has one of that name, as Swarm classic removed them
  (204 once all are gone; else the engines' errors, each naming its node). ``POST /volumes/prune``: on every
  engine, merged; the deleted volumes named ``node/name`` (Base.prune).
* ``docker run -v name:/path`` is placed where ``name`` is (:mod:`swarmha.manager.api.containers`).
"""

from __future__ import annotations

import json
import secrets
from typing import Any
from urllib.parse import quote

from swarmha.manager.api._base import Base, engine_error_message, local_name, respond_json
from swarmha.manager.api._docker import DockerError, encode_filters, json_object, replace_query, with_query
from swarmha.manager.api.networks import COMPOSE_PROJECT, place_named, unknown_node
from swarmha.manager.cluster import Engine, NoEngine
from swarmha.manager.http import Exchange

__all__ = ["Volumes"]

WHITELISTS = "com.docker.swarm.whitelists"


class Volumes(Base):
    async def listing(self, ex: Exchange) -> None:
        filters = self.filters(ex)
        engines = self.engines_for(filters)
        filters.pop("node", None)
        query = replace_query(ex.query_string, filters=encode_filters(filters) if filters else None)
        volumes: list[dict[str, Any]] = []
        warnings: list[str] = []
        for e, found in await self.gather_json(with_query("/volumes", query), engines):
            if not isinstance(found, dict):
                continue
            for v in found.get("Volumes") or []:
                if v.get("Scope", "local") == "local":
                    v["Name"] = local_name(e, str(v.get("Name", "")))
                volumes.append(v)
            warnings += [f"{e.name}: {w}" for w in found.get("Warnings") or []]
        await respond_json(ex, 200, {"Volumes": volumes, "Warnings": warnings or None})

    async def owner(self, ident: str) -> tuple[Engine, str]:
        return await self.named_owner("volumes", ident, f"get {ident}: no such volume")

    async def create(self, ex: Exchange) -> None:
        config = json_object(await ex.body(), "volume config")
        name = str(config.get("Name") or "")
        e, real = self.split_node(name) if name else (None, name)
        labels = config.get("Labels") or {}
        headers = [(b"content-type", b"application/json")]
        if e is None:
            unknown_node(self, name)
        if e is None and isinstance(labels, dict) and labels.get(COMPOSE_PROJECT):
            e = await place_named(self, labels)
        if e is not None:
            config["Name"] = real
            r = await self.call(e, "POST", "/volumes/create", body=json.dumps(config).encode(), headers=headers)
            return await self.respond(ex, r)
        engines = self.cluster.healthy()
        if isinstance(labels, dict) and labels.get(WHITELISTS):  # Swarm's: on every node the whitelist names
            try:
                engines = self.cluster.eligible({"Labels": {WHITELISTS: labels[WHITELISTS]}})
            except NoEngine as err:
                raise DockerError(500, f"swarmha: {err}") from err
        if not engines:
            raise DockerError(500, "swarmha: no healthy node available in the cluster")
        config["Name"] = real or secrets.token_hex(32)
        answers = await self.gather(
            "POST", "/volumes/create", engines, body=json.dumps(config).encode(), headers=headers
        )
        failed = [(e, r) for e, r in answers if r is None or r.status >= 300]
        if failed:
            status = next((r.status for _, r in failed if r is not None), 502)
            raise DockerError(status, "\n".join(engine_error_message(e, r) for e, r in failed))
        first = answers[0][1]
        assert first is not None
        await self.respond(ex, first)

    async def scoped(self, ex: Exchange, ident: str) -> None:
        if ex.method == "DELETE" and self.split_node(ident)[0] is None:
            return await self._remove_everywhere(ex, ident)
        engine, real = await self.owner(ident)
        await self.relay(ex, engine, with_query(f"/volumes/{quote(real, safe='')}", ex.query_string))

    async def _remove_everywhere(self, ex: Exchange, ident: str) -> None:
        """``docker volume rm NAME``: on every engine that has a volume ``NAME``, as Swarm classic did."""
        have = [e for e, _ in await self.holders("volumes", ident)]
        if not have:
            raise DockerError(404, f"get {ident}: no such volume")
        target = with_query(f"/volumes/{quote(ident, safe='')}", ex.query_string)
        answers = await self.gather("DELETE", target, have)
        failed = [(e, r) for e, r in answers if r is None or r.status >= 300]
        if not failed:
            return await ex.respond(204, b"")
        status = next((r.status for _, r in failed if r is not None), 502)
        raise DockerError(status, "\n".join(engine_error_message(e, r) for e, r in failed))
