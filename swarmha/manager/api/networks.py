"""Networks over the cluster, as Swarm classic served them.

* ``GET /networks``: merged; a local-scope network is named ``node/name`` (one per engine: ``node-1/bridge``,
  ``node-2/bridge``), a swarm- or global-scope one (the same id on several engines) is listed once.
  ``filters``: ``node=`` chooses the engines, ``name=node/x`` the engine and the name; the rest is the
  engines' own (``type=``, ``driver=``, ``label=``, ``id=``, ``scope=``).
* ``POST /networks/create``: on the node a ``node/name`` names (created as ``name``), else on a node
  :meth:`Cluster.place` chooses; a Compose project's network goes where the project already lives (its
  other networks or volumes, ``com.docker.compose.project``), so its containers can have both.
* ``GET``/``DELETE /networks/{id}``: ``node/name``, or the one engine that has it; a name several engines
  have for different networks (``host``, ``none``, ``bridge``: one each) is refused (400) naming each
  ``node/name`` (:meth:`Base.named_owner`), rather than acting on an arbitrary one.
* ``POST /networks/{id}/connect|disconnect``: to the engine that has the container (``Container`` may be
  ``node/name``); an ambiguous network name means that engine's network of that name.
* ``POST /networks/prune``: on every engine, merged; the deleted networks named ``node/name`` (Base.prune).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from swarmha.manager.api._base import Base, engine_error_message, local_name, respond_json
from swarmha.manager.api._docker import DockerError, encode_filters, json_object, replace_query, with_query
from swarmha.manager.cluster import Engine, NoEngine
from swarmha.manager.http import Exchange

__all__ = ["COMPOSE_PROJECT", "Networks", "place_named"]

COMPOSE_PROJECT = "com.docker.compose.project"


async def place_named(api: Base, labels: dict[str, Any]) -> Engine:
    """The engine for a new network or volume without a node: where its Compose project already has a network
    or volume, else the one :meth:`Cluster.place` chooses. DockerError 500 when no engine fits."""
    project = labels.get(COMPOSE_PROJECT) if isinstance(labels, dict) else None
    if project:
        label = encode_filters({"label": [f"{COMPOSE_PROJECT}={project}"]})
        for kind in ("volumes", "networks"):
            for e, found in await api.gather_json(f"/{kind}?filters={quote(label)}"):
                items = found.get("Volumes") if isinstance(found, dict) else found
                if items:
                    return e
    try:
        engine, _ = api.cluster.place({})
    except NoEngine as e:
        raise DockerError(500, f"swarmha: {e}") from e
    return engine


def unknown_node(api: Base, name: str) -> None:
    """A ``node/name`` whose node is no engine's name: Swarm's scheduler error for ``constraint:node==node``
    (DockerError 500), as Swarm refused it; a name without ``/`` passes."""
    node, sep, _ = name.partition("/")
    if sep and node:
        try:
            api.cluster.place({"Env": [f"constraint:node=={node}"]})
        except NoEngine as e:
            raise DockerError(500, f"swarmha: {e}") from e


class Networks(Base):
    async def listing(self, ex: Exchange) -> None:
        filters = self.filters(ex)
        for kind in filters.get("type", []):
            if kind not in ("custom", "builtin"):  # Swarm's and dockerd's check, whatever the engines' version
                raise DockerError(400, f"Invalid filter: 'type'='{kind}'")
        engines = self.pinned_engines(filters, "name")
        query = replace_query(ex.query_string, filters=encode_filters(filters) if filters else None)
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        answers = await self.gather("GET", with_query("/networks", query), engines)
        for e, r in answers:
            if r is not None and r.status == 400:  # a filter the engines refuse (type=foo): dockerd's 400
                raise DockerError(400, engine_error_message(e, r))
        for e, r in answers:
            if r is None or r.status != 200:
                continue
            try:
                items = r.json()
            except ValueError:
                continue
            for item in items if isinstance(items, list) else []:
                if item.get("Scope", "local") == "local":
                    item["Name"] = local_name(e, str(item.get("Name", "")))
                elif item.get("Id") in seen:
                    continue
                seen.add(str(item.get("Id", "")))
                out.append(item)
        await respond_json(ex, 200, out)

    async def owner(self, ident: str, prefer: Engine | None = None) -> tuple[Engine, str]:
        return await self.named_owner("networks", ident, f"network {ident} not found", prefer=prefer)

    async def create(self, ex: Exchange) -> None:
        config = json_object(await ex.body(), "network config")
        name = str(config.get("Name") or "")
        if not name:
            raise DockerError(400, "swarmha: a network needs a Name")
        e, real = self.split_node(name)
        if e is None:
            unknown_node(self, name)
            if config.get("CheckDuplicate") and await self.find("networks", name):
                raise DockerError(409, f"network with name {name} already exists")
            e = await place_named(self, config.get("Labels") or {})
        config["Name"] = real
        r = await self.call(e, "POST", "/networks/create", body=json.dumps(config).encode(),
                            headers=[(b"content-type", b"application/json")])  # fmt: skip
        await self.respond(ex, r)

    async def scoped(self, ex: Exchange, ident: str, action: str) -> None:
        if action in ("/connect", "/disconnect"):
            config = json_object(await ex.body(), "request")
            container = str(config.get("Container") or "")
            owner, name = await self._container(container)
            engine, real = await self.owner(ident, prefer=owner)
            target = f"/networks/{quote(real, safe='')}{action}"
            if owner is not engine and owner.addr != engine.addr:
                raise DockerError(
                    409, f"swarmha: container {container} is on {owner.name}, network {ident} on {engine.name}"
                )
            config["Container"] = name
            r = await self.call(engine, "POST", target, body=json.dumps(config).encode(),
                                headers=[(b"content-type", b"application/json")])  # fmt: skip
            return await self.respond(ex, r)
        engine, real = await self.owner(ident)
        await self.relay(ex, engine, with_query(f"/networks/{quote(real, safe='')}{action}", ex.query_string))

    async def _container(self, ident: str) -> tuple[Engine, str]:
        e, real = self.split_node(ident)
        if e is None:
            e = await self.cluster.locate("containers", ident)
        if e is None:
            raise DockerError(404, f"No such container: {ident}")
        return e, real
