"""Containers over the cluster: the merged list, placement of ``create`` (pulling a missing image there first),
``commit``, prune, and everything under ``/containers/{id}`` routed to the engine that has the container.

* ``GET /containers/json``: every healthy engine at once (``filters`` ``node=`` chooses the engines,
  ``network=node/name`` the engine and the network); names carry the node (``/node/name``), each item carries
  Swarm's ``Node`` object; ``limit`` (``ps -n``, ``-l``) applies to the merged list, newest first.
* ``POST /containers/create``: the networks (``NetworkMode``, ``NetworkingConfig``) and named volumes
  (``Binds``, ``Mounts``) it uses pin it to the node that has them (``constraint:node==`` in ``Env``, which
  :meth:`Cluster.place` honours); ``node/name`` references are sent to the engine as ``name``. When the
  chosen engine lacks the image, it pulls it (``X-Registry-Auth`` passed along) and the create is retried.
* ``GET /containers/{id}/json`` carries ``Node``; the rest of ``/containers/{id}/...`` is forwarded (streams,
  hijacked attach/exec included).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from swarmha.manager.api._base import Base, respond_json
from swarmha.manager.api._docker import DockerError, encode_filters, json_object, replace_query, with_query
from swarmha.manager.api._schema import check_create
from swarmha.manager.cluster import Engine, NoEngine
from swarmha.manager.http import Exchange
from swarmha.manager.scheduler.records import to_engine
from swarmha.manager.upstream import Response, UpstreamBroken, UpstreamUnreachable, stream

__all__ = ["Containers", "image_reference"]

log = logging.getLogger("swarmha.manager")

#: How long a create may take on its engine: dockerd answers it only once the image, volume driver and logging
#: driver said yes or no (a driver plugin may take many seconds to refuse), and the Docker CLI waits for it.
CREATE_TIMEOUT = 300.0
_ALL = re.compile(r"(?:^|&)all=(?:1|true|True)(?:&|$)")
#: Swarm's label holding a container's constraints.
CONSTRAINTS_LABEL = "com.docker.swarm.constraints"
#: The label that marks a swarm-mode task's container (``ps --filter is-task=true|false``).
TASK_LABEL = "com.docker.swarm.task"
#: Largest engine answer kept as the last one-engine list (``Containers._last``).
_LAST_MAX = 1 << 20
_NAMES_KEY = b'"Names":['
_PLAIN_NAMES = re.compile(r"[-/\w.]*", re.ASCII)  # Docker's name characters: json.dumps leaves them as they are
_BUILTIN_NETWORKS = frozenset({"", "default", "bridge", "host", "none"})


def _json_names(names: list[Any]) -> bytes:
    """``json.dumps(names, separators=(",", ":"))`` as bytes; built directly for plain names (the usual case)."""
    if names and all(isinstance(n, str) and _PLAIN_NAMES.fullmatch(n) for n in names):
        return b'["' + '","'.join(names).encode() + b'"]'
    return json.dumps(names, separators=(",", ":")).encode()


def _rename_in_place(raw: bytes, renamed: list[Any], node: str, node_json: bytes) -> bytes | None:
    """An engine's ``/containers/json`` bytes with each ``Names`` array replaced by its renamed one and the
    ``Node`` object added after it, or None.

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
        parts += [raw[pos:start], _json_names(names), b',"Node":', node_json]
        pos = end
    if raw.find(_NAMES_KEY, pos) >= 0:
        return None
    parts.append(raw[pos:])
    return b"".join(parts)


def image_reference(image: str) -> tuple[str, str]:
    """``repo[:tag|@digest]`` -> (``fromImage``, ``tag``) for ``POST /images/create`` (no tag: ``latest``)."""
    if "@" in image:
        return image, ""
    repo, sep, tag = image.rpartition(":")
    if sep and "/" not in tag:
        return repo, tag
    return image, "latest"


class _ImageElsewhere(Exception):
    """The chosen engine lacks the image; these engines (addresses) have it."""

    def __init__(self, addrs: list[str]) -> None:
        super().__init__(addrs)
        self.addrs = addrs


def _hard_node(config: Mapping[str, Any]) -> bool:
    """Whether ``config`` has a hard ``node==`` constraint (as ``-e constraint:`` or Swarm's label)."""
    wanted = [str(x)[len("constraint:") :] for x in config.get("Env") or [] if str(x).startswith("constraint:")]
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        wanted += [str(x) for x in json.loads((config.get("Labels") or {}).get(CONSTRAINTS_LABEL) or "[]")]
    return any(w.replace(" ", "").startswith("node==") and not w.replace(" ", "").startswith("node==~") for w in wanted)


class Containers(Base):
    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        #: The last one-engine list answered: (engine, its name, the engine's bytes, the bytes sent, the container
        #: ids). The answer is a function of the engine's bytes and name: the same bytes are not parsed and
        #: renamed again (the ownership the parse taught is still recorded).
        self._last: tuple[Engine, str, bytes, bytes, list[str]] | None = None

    # -- list ----------------------------------------------------------------------------------------------

    async def listing(self, ex: Exchange) -> None:
        if self.view is not None and (body := await self.view.listing(ex.query)) is not None:
            return await ex.respond(200, body, "application/json")
        query = ex.query_string
        engines = None
        limit = 0
        filtered = False
        is_task: list[str] = []  # Swarm's own filter (the engines do not know it): applied here
        if "filters=" in query or "limit=" in query or "last=" in query:
            filters = self.filters(ex)
            is_task = filters.pop("is-task", [])
            filtered = bool(filters) or bool(is_task)
            engines = self.pinned_engines(filters, "network")
            with contextlib.suppress(ValueError):
                limit = int(ex.arg("limit") or ex.arg("last") or 0)  # -n N / -l (last=1 in old clients)
            query = replace_query(query, filters=encode_filters(filters) if filters else None)
        answers = await self.gather("GET", with_query("/containers/json", query), engines)
        raws = [(e, r.body) for e, r in answers if r is not None and r.status == 200]
        # the containers of engines that are down, as Swarm listed them (unfiltered lists only: a filter is the
        # engines' to apply)
        every = _ALL.search(ex.query_string) is not None
        down = [] if filtered or not every else self._host_down({e.addr for e, _ in raws})
        # one engine: its own bytes, names renamed in place (no re-encoding), when that is exact
        if len(raws) == 1 and not down and not is_task:
            e, raw = raws[0]
            last = self._last
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
        for e, items, _raw in lists:
            node = e.node()
            for item in items:
                item["Names"] = [f"/{e.name}{n}" for n in item.get("Names") or []]
                self.cluster.remember(item["Id"], e)
                out.append(item)
                if "Node" not in item:
                    item["Node"] = node
        out += down
        if is_task:
            out = [i for i in out if ("true" if TASK_LABEL in (i.get("Labels") or {}) else "false") in is_task]
        if len(lists) == 1 and not limit and not down and not is_task:
            e, items, raw = lists[0]
            node_json = json.dumps(e.node(), separators=(",", ":")).encode()
            body = _rename_in_place(raw, items, e.name, node_json)
            if body is not None:
                if len(raw) <= _LAST_MAX:
                    self._last = (e, e.name, raw, body, [item["Id"] for item in items])
                return await ex.respond(200, body, "application/json")
        if len(lists) > 1 or down:  # one engine's list is already newest first
            out.sort(key=lambda i: i.get("Created", 0), reverse=True)
        if limit > 0:
            out = out[:limit]
        await respond_json(ex, 200, out)

    def _host_down(self, answered: set[str]) -> list[dict[str, Any]]:
        """The containers of the engines that are not healthy (or did not answer), as their last refresh listed
        them, with Swarm's status ``Host Down`` (asked for ``ps -a`` only, as in Swarm)."""
        out: list[dict[str, Any]] = []
        for e in self.cluster.engines:
            if e.addr in answered or not e.listed:
                continue
            node = e.node()
            for item in e.listed:
                copy = dict(item, Status="Host Down", Node=node)
                copy["Names"] = [f"/{e.name}{n}" for n in item.get("Names") or []]
                out.append(copy)
        return out

    # -- create --------------------------------------------------------------------------------------------

    async def _pin(self, config: dict[str, Any]) -> None:
        """Add ``constraint:node==`` for the networks, named volumes and containers (``--volumes-from``,
        ``--link``, ``--net container:``) the container needs (or, needing none, for an image only one node
        has); rewrite ``node/`` references to the engine's own names. DockerError 404 for a ``node/`` that no
        engine has, 409 when the needs name two different nodes."""
        hc = config.setdefault("HostConfig", {}) or {}
        config["HostConfig"] = hc
        needs: list[tuple[str, Engine]] = []  # (what, the engine that has it)

        def container(ref: str) -> str:
            """A container named ``node/name`` (as the list shows it, without the slash): that node's ``name``."""
            e, real = self.split_node(ref.lstrip("/"))
            if e is None:
                return ref
            needs.append((f"container {ref}", e))
            return real

        async def network(name: str) -> str:
            if name.startswith("container:"):
                return "container:" + container(name[len("container:") :])
            if name in _BUILTIN_NETWORKS:
                return name
            e, real = self.split_node(name)
            if e is None:
                have = await self.find("networks", name)
                if len(have) == 1 and len(self.cluster.healthy()) > 1:
                    needs.append((f"network {name}", have[0]))
                return name
            needs.append((f"network {name}", e))
            return real

        mode = str(hc.get("NetworkMode") or "")
        if mode:
            hc["NetworkMode"] = await network(mode)
        endpoints = (config.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
        if endpoints:
            config["NetworkingConfig"]["EndpointsConfig"] = {await network(k): v for k, v in endpoints.items()}

        async def volume(name: str) -> str:
            e, real = self.split_node(name)
            if e is None:
                have = await self.find("volumes", name)
                if len(have) == 1 and len(self.cluster.healthy()) > 1:
                    needs.append((f"volume {name}", have[0]))
                return name
            needs.append((f"volume {name}", e))
            return real

        # --volumes-from X[:ro|rw], --link X[:alias]: the dependency filter then finds X on its node
        for field in ("VolumesFrom", "Links"):
            refs = hc.get(field)
            if isinstance(refs, list) and refs:
                hc[field] = [container(ref) + sep + rest for ref, sep, rest in (str(v).partition(":") for v in refs)]
        binds = []
        for bind in hc.get("Binds") or []:
            src, sep, rest = str(bind).partition(":")
            if sep and src and not src.startswith("/"):
                src = await volume(src)
            binds.append(src + sep + rest)
        if binds:
            hc["Binds"] = binds
        for mount in hc.get("Mounts") or []:
            if isinstance(mount, dict) and mount.get("Type", "volume") == "volume" and mount.get("Source"):
                mount["Source"] = await volume(str(mount["Source"]))
        image = str(config.get("Image") or "")
        chosen = any(str(x).startswith("constraint:") for x in config.get("Env") or [])
        if image and not needs and not chosen and len(self.cluster.healthy()) > 1:
            answers = await self.gather("GET", f"/images/{quote(image, safe='/:@')}/json")
            have = [e for e, r in answers if r is not None and r.status == 200]
            # only one node has it (built or committed there): run it there, not pull it -- when every engine
            # said whether it has it (one that did not answer may have it too)
            if len(have) == 1 and all(r is not None for _, r in answers):
                needs.append((f"image {image}", have[0]))
        nodes = {e.addr: e for _, e in needs}
        if len(nodes) > 1:
            where = ", ".join(f"{what} is on {e.name}" for what, e in needs)
            raise DockerError(409, f"swarmha: unable to find a node that has everything this container uses: {where}")
        if nodes:
            (e,) = nodes.values()
            config["Env"] = [*(config.get("Env") or []), f"constraint:node=={e.name}"]

    async def create(self, ex: Exchange) -> None:
        """Place the container and create it there. An engine that fails the create (unreachable, or a 5xx) is
        left out and the create placed again, up to ``swarm.createretry`` times (Swarm's); then its error. An
        engine that lacks the image while others have it (and no hard ``node==`` constraint chose it): placed
        again among those, as Swarm retried "with image affinity" (the affinity is not kept); else the image is
        pulled on the chosen engine."""
        config = json_object(await ex.body(), "container config")
        check_create(config)
        await self._pin(config)
        hard_node = _hard_node(config)
        failed: list[str] = []
        skip: list[str] = []  # once: the engines without the image, when others have it
        while True:
            try:
                r, engine = await self._create_on_one(ex, config, failed, skip, hard_node or bool(skip))
                break
            except _ImageElsewhere as elsewhere:
                skip = [e.addr for e in self.cluster.engines if e.addr not in elsewhere.addrs]
                log.info("Image %s is not on the chosen node, retrying with image affinity", config.get("Image"))
            except DockerError as e:
                if len(failed) > self.cluster.create_retry or not failed or e.status < 500:
                    raise
                log.warning("Failed to create container: %s, retrying on another engine", e)
        if r.status == 201:
            with contextlib.suppress(ValueError, KeyError):
                self.cluster.placed(engine, str(r.json()["Id"]), config, name=ex.arg("name") or "")
        await self.respond(ex, r)

    async def _create_on_one(
        self, ex: Exchange, config: dict[str, Any], failed: list[str], skip: list[str], pull_only: bool
    ) -> tuple[Response, Engine]:
        """One placement and create; an engine that fails it (502, 5xx) is added to ``failed`` and its error
        raised as DockerError while retries remain; :class:`_ImageElsewhere` when the engine lacks the image
        other engines have (see :meth:`create`)."""
        try:
            # pending (ports, slot) until created or not
            engine, env = self.cluster.place(config, reserve=True, exclude=failed + skip)
        except NoEngine as e:
            raise DockerError(500, f"swarmha: {e}") from e
        config["Env"] = env
        target = with_query("/containers/create", ex.query_string)
        body = json.dumps(to_engine(config, engine.ncpu)).encode()
        headers = [(b"content-type", b"application/json")]
        try:
            try:
                r = await self.call(engine, "POST", target, body=body, headers=headers, timeout=CREATE_TIMEOUT)
                if r.status == 404 and b"No such image" in r.body and config.get("Image"):
                    image = str(config["Image"])
                    if not pull_only:
                        have = [e.addr for e in await self.find("images", image) if e.addr != engine.addr]
                        if have and not set(have) <= set(failed):
                            raise _ImageElsewhere(have)
                    await self._pull(ex, engine, image)
                    r = await self.call(engine, "POST", target, body=body, headers=headers, timeout=CREATE_TIMEOUT)
            except DockerError as e:
                if e.status == 502:
                    failed.append(engine.addr)
                raise
        finally:
            self.cluster.unplace(config)
        if r.status >= 500 and len(failed) < self.cluster.create_retry:
            failed.append(engine.addr)
            raise DockerError(r.status, f"{engine.name}: {r.body.decode(errors='replace').strip()}")
        return r, engine

    async def _pull(self, ex: Exchange, engine: Engine, image: str) -> None:
        """Pull ``image`` on ``engine`` (as Swarm did before creating there); DockerError when it fails."""
        name, tag = image_reference(image)
        query = f"fromImage={quote(name, safe='')}" + (f"&tag={quote(tag, safe='')}" if tag else "")
        auth = ex.header("x-registry-auth")
        headers = [(b"x-registry-auth", auth.encode("latin-1"))] if auth else []
        try:
            async with stream(engine.upstream, "POST", f"/images/create?{query}", body=b"", headers=headers) as r:
                if r.status != 200:
                    raise DockerError(r.status, f"{engine.name}: {(await r.read(1 << 16)).decode(errors='replace')}")
                async for line in r.lines():
                    with contextlib.suppress(ValueError, AttributeError):
                        msg = json.loads(line)
                        if msg.get("error"):
                            raise DockerError(404, f"swarmha: pulling {image} on {engine.name}: {msg['error']}")
        except (UpstreamUnreachable, UpstreamBroken, OSError) as e:
            raise DockerError(502, f"swarmha: pulling {image} on {engine.name} failed: {e}") from e

    # -- commit, prune, the container's own endpoints ---------------------------------------------------------

    async def commit(self, ex: Exchange) -> None:
        ident = ex.arg("container")
        engine, real = await self.owner(ident)
        parts = urlsplit(ex.target)
        target = with_query(parts.path, replace_query(parts.query, container=real))
        await self.relay(ex, engine, target)

    async def owner(self, ident: str) -> tuple[Engine, str]:
        """The engine that has container ``ident`` (an id, unique id prefix, name or ``node/name``) and its name
        there; DockerError 404 when none has it."""
        engine, real = self.split_node(ident) if "/" in ident.strip("/") else (None, ident)
        if engine is None:
            engine = await self.cluster.locate("containers", ident)
        if engine is None:
            known = self.cluster.by_swarm_id(ident)  # Swarm's com.docker.swarm.id names the container too
            if known is not None:
                engine, real = known
        if engine is None:
            down = self.cluster.owner_down(ident)
            if down is not None:
                raise DockerError(500, f"Container {ident} running on unhealthy node {down.name}")
            raise DockerError(404, f"No such container: {ident}")
        return engine, real

    async def scoped(self, ex: Exchange, ident: str, action: str) -> None:
        view = self.view if action == "/json" and ex.method == "GET" else None
        if view is not None and (body := await view.inspect(ident, ex.query_string)) is not None:
            return await ex.respond(200, body, "application/json")
        engine, real = await self.owner(ident)
        target = ex.target
        if real != ident:
            parts = urlsplit(ex.target)
            path = parts.path.replace(f"/containers/{ident}", f"/containers/{quote(real)}", 1)
            target = with_query(path, parts.query)
        if action == "/json" and ex.method == "GET":
            r = await self.call(engine, "GET", target)
            if r.status == 200:
                with contextlib.suppress(ValueError, AttributeError):
                    info = r.json()
                    info["Node"] = engine.node()
                    return await respond_json(ex, 200, info)
            return await self.respond(ex, r)
        renamed = ex.arg("name") if action == "/rename" and ex.method == "POST" else None
        if renamed:
            holder = self.cluster.named(renamed)
            if holder is not None:  # on another node the engine would not know it: the cluster's names are one
                raise DockerError(
                    409,
                    f'Conflict. The container name "/{renamed.lstrip("/")}" is already in use by container '
                    f'"{holder}". You have to remove (or rename) that container to be able to reuse that name.',
                )
        status = await self.relay(ex, engine, target)
        if renamed and 200 <= status < 300:
            self.cluster.renamed(ident, renamed)
        if ex.method == "DELETE" and not action and 200 <= status < 300:
            self.cluster.forget(ident)
        elif ex.method == "POST" and action == "/start" and 200 <= status < 300:
            self.cluster.started(ident)  # the scheduler's view: running now (rescheduling starts it again)
