"""The primary's Docker Engine API over the cluster: a module per resource, as Swarm classic's ``api/``.

* :mod:`.containers`: the merged list, placement of ``create``, ``commit``, ``/containers/{id}/...`` routed.
* :mod:`.images`: pulls, loads and imports on every engine, ``tag``/``rmi`` where the image is, ``build``.
* :mod:`.networks`, :mod:`.volumes`: merged lists (``node/name``), create on a node, routed by name.
* :mod:`.system`: ``/version``, ``/system/df``, prunes, ``/events`` with Swarm's engine events.

:class:`PrimaryAPI` routes a request to them. Every answer is the engine's or a Docker-shaped JSON error; a
route the cluster does not serve answers ``501 {"message": "... is not supported by the cluster manager"}``
naming it (docs/manager.md lists them, with why). A ``/vX.Y`` prefix outside the versions every engine
supports is refused with 400, as dockerd does.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from swarmha.manager.api._docker import DockerError, check_version, split_version
from swarmha.manager.api.containers import Containers
from swarmha.manager.api.images import Images
from swarmha.manager.api.networks import Networks
from swarmha.manager.api.system import DEFAULT_API_VERSION, System
from swarmha.manager.api.volumes import Volumes
from swarmha.manager.cluster import Cluster
from swarmha.manager.http import Exchange
from swarmha.manager.upstream import UpstreamBroken, UpstreamUnreachable
from swarmha.manager.view import ClusterView

__all__ = ["DEFAULT_API_VERSION", "PrimaryAPI", "docker_path"]

#: The last path segment of ``/containers/{id}/...`` (a container name never holds a "/"; ``node/name`` does).
_CONTAINER_ACTIONS = frozenset(
    [
        "json",
        "top",
        "logs",
        "changes",
        "export",
        "stats",
        "resize",
        "start",
        "stop",
        "restart",
        "kill",
        "update",
        "rename",
        "pause",
        "unpause",
        "attach",
        "wait",
        "archive",
        "exec",
    ]
)
_IMAGE_ACTIONS = frozenset({"json", "history", "push", "tag", "get"})
_NETWORK_ACTIONS = frozenset({"connect", "disconnect"})
#: Swarm-mode endpoints: a Swarm-classic cluster is not in swarm mode, so they answer as an engine outside swarm
#: mode does (503 and dockerd's sentence; docker-py and its users' clean-up code read that 503 as "no swarm").
_NO_SWARM = frozenset({"swarm", "services", "tasks", "nodes", "secrets", "configs"})
NOT_PART_OF_A_SWARM = "This node is not part of a swarm"
NOT_A_MANAGER = (
    'This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" to connect this node to swarm '
    "and try again."
)
#: Endpoints the cluster does not serve, with why.
_NOT_SERVED = {
    "plugins": "plugins are per engine: manage them on each engine",
    "session": "BuildKit sessions are not relayed: build with the classic builder (DOCKER_BUILDKIT=0)",
    "grpc": "BuildKit is not relayed: build with the classic builder (DOCKER_BUILDKIT=0)",
}

Route = Callable[[Exchange], Awaitable[None]]


def docker_path(ex: Exchange) -> tuple[str | None, str]:
    """The request's API version (None without a prefix) and its path without it."""
    return split_version(ex.path)


def _split(rest: str, actions: frozenset[str]) -> tuple[str, str]:
    """``id/action`` -> (``id``, ``/action``) when the last segment is a known action, else (``rest``, "")."""
    head, sep, last = rest.rpartition("/")
    if sep and head and last in actions:
        return head, "/" + last
    if rest.endswith("/attach/ws"):
        return rest[: -len("/attach/ws")], "/attach/ws"
    return rest, ""


class PrimaryAPI:
    """Serves Docker API requests for ``cluster`` (see the module docstring)."""

    def __init__(self, cluster: Cluster, info: Callable[[], dict[str, Any]]) -> None:
        self.cluster = cluster
        self._info = info
        self.containers = Containers(cluster)
        self.images = Images(cluster)
        self.networks = Networks(cluster)
        self.volumes = Volumes(cluster)
        self.system = System(cluster)
        #: Answers list and inspect calls from the engines' event-fed state (swarmha.manager.view).
        self.view = ClusterView(cluster)
        for part in (self.containers, self.images, self.networks, self.volumes, self.system):
            part.view = self.view
        self._accepted: tuple[str | None, float] = (None, 0.0)  # (version, valid until)
        s = self.system
        self._routes: dict[tuple[str, str], Route] = {
            ("GET", "/_ping"): self.ping,
            ("HEAD", "/_ping"): self.ping,
            ("GET", "/info"): self._info_route,
            ("GET", "/version"): self._version,
            ("GET", "/events"): s.events,
            ("GET", "/system/df"): s.df,
            ("POST", "/containers/prune"): lambda ex: s.prune(ex, "/containers/prune", "ContainersDeleted"),
            ("POST", "/build/prune"): lambda ex: s.prune(ex, "/build/prune", "CachesDeleted"),
            ("POST", "/images/prune"): lambda ex: s.prune(ex, "/images/prune", "ImagesDeleted"),
            ("POST", "/networks/prune"): lambda ex: s.prune(ex, "/networks/prune", "NetworksDeleted", local=True),
            ("POST", "/volumes/prune"): lambda ex: s.prune(ex, "/volumes/prune", "VolumesDeleted", local=True),
            ("GET", "/containers/json"): self.containers.listing,
            ("POST", "/containers/create"): self.containers.create,
            ("POST", "/commit"): self.containers.commit,
            ("GET", "/images/json"): self.images.listing,
            ("POST", "/images/create"): self.images.create,
            ("POST", "/images/load"): self.images.load,
            ("GET", "/images/get"): self.images.get,
            ("POST", "/build"): self.images.build,
            ("GET", "/images/search"): self._any_engine,
            ("POST", "/auth"): self._any_engine,
            ("GET", "/networks"): self.networks.listing,
            ("POST", "/networks/create"): self.networks.create,
            ("GET", "/volumes"): self.volumes.listing,
            ("POST", "/volumes/create"): self.volumes.create,
        }

    def api_version(self) -> str:
        return self.system.api_version()

    def ping_headers(self) -> list[tuple[str, str]]:
        return [
            ("API-Version", self.api_version()),
            ("Docker-Experimental", "false"),
            ("OSType", "linux"),
            ("Cache-Control", "no-cache, no-store, must-revalidate"),
        ]

    async def ping(self, ex: Exchange) -> None:
        await ex.respond(200, b"OK", extra=self.ping_headers())

    def check_version(self, version: str | None) -> None:
        """DockerError 400 for an API version the engines do not all support (dockerd's wording).

        The last accepted version is remembered for a second (the engines' versions change only on a refresh),
        so the common request costs one comparison."""
        if version is None:
            return
        now = time.monotonic()
        if version == self._accepted[0] and now < self._accepted[1]:
            return
        check_version(version, self.system.min_api_version(), self.api_version())
        self._accepted = (version, now + 1.0)

    async def local_answer(self, ex: Exchange, version: str | None, path: str) -> bytes | None:
        """A replica's answer to a list or inspect, from its own view of the engines (:mod:`swarmha.manager.view`);
        None: forward it (also for an API version the primary would refuse, in its words)."""
        try:
            self.check_version(version)
        except DockerError:
            return None
        return await self.view.answer(ex, path)

    async def _info_route(self, ex: Exchange) -> None:
        await self.cluster.recount()
        await ex.json(200, self._info())

    async def _version(self, ex: Exchange) -> None:
        await ex.json(200, self.system.version())

    async def _any_engine(self, ex: Exchange) -> None:
        engines = self.cluster.healthy()
        if not engines:
            raise DockerError(500, "swarmha: no healthy node available in the cluster")
        await self.containers.relay(ex, engines[0])

    async def handle(self, ex: Exchange, version: str | None, path: str) -> None:
        """Serve ``ex``, whose path the caller already split into ``docker_path(ex)``: ``version``, ``path``."""
        try:
            self.check_version(version)
            await self._route(ex, path)
        except DockerError as e:
            if not ex.started:
                await ex.error(e.status, str(e))
        except (UpstreamUnreachable, UpstreamBroken) as e:
            if not ex.started:
                await ex.error(502, f"swarmha: {e}")

    def _route(self, ex: Exchange, path: str) -> Awaitable[None]:
        """The coroutine that serves ``ex`` (returned, not awaited here: one coroutine frame less per request)."""
        method = ex.method
        route = self._routes.get((method, path))
        if route is not None:
            return route(ex)
        kind, _, rest = path[1:].partition("/")
        if "%" in rest:
            rest = unquote(rest)  # "probe%2001" names the network "probe 01"
        if kind in _NO_SWARM:
            return self._no_swarm(ex, method, path)
        if rest:
            if kind == "containers":
                ident, action = _split(rest, _CONTAINER_ACTIONS)
                return self.containers.scoped(ex, ident, action)
            if kind == "images":
                ident, action = _split(rest, _IMAGE_ACTIONS)
                return self.images.scoped(ex, ident, action)
            if kind == "networks":
                ident, action = _split(rest, _NETWORK_ACTIONS)
                return self.networks.scoped(ex, ident, action)
            if kind == "volumes":
                return self.volumes.scoped(ex, rest)
            if kind == "exec":
                return self._exec(ex, rest.partition("/")[0])
            if kind == "distribution":
                return self._any_engine(ex)
        why = _NOT_SERVED.get(kind)
        detail = f" ({why})" if why else ""
        return ex.error(501, f"swarmha: {method} {path} is not supported by the cluster manager{detail}")

    def _no_swarm(self, ex: Exchange, method: str, path: str) -> Awaitable[None]:
        """Swarm mode's endpoints, answered as an engine outside swarm mode answers them; joining or creating a
        swarm is refused naming why (the engines of a Swarm-classic cluster are managed one by one)."""
        if method == "POST" and path in ("/swarm/init", "/swarm/join"):
            return ex.error(
                501,
                f"swarmha: {method} {path} is not supported by the cluster manager (swarm mode is not part of a "
                "Swarm-classic cluster: run it on an engine)",
            )
        if path in ("/swarm/leave", "/swarm/unlockkey", "/swarm/unlock"):
            return ex.error(503, NOT_PART_OF_A_SWARM)
        return ex.error(503, NOT_A_MANAGER)

    async def _exec(self, ex: Exchange, ident: str) -> None:
        engine = await self.cluster.locate("exec", ident)
        if engine is None:
            raise DockerError(404, f"No such exec instance: {ident}")
        await self.containers.relay(ex, engine)
