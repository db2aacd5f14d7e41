"""What the scheduler sees of the cluster: a :class:`Node` per engine and a :class:`Container` per container on it.

These are snapshots the cluster builds from the engines' last refresh (plus the containers being created right
now, the *pending* ones, with an empty :attr:`Container.id`), so filters and strategies are pure functions of
their input: nothing here talks to an engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["SWARM_ID", "Binding", "Container", "Image", "Node", "port_key"]

#: The label every container created through the manager carries (kept when it is rescheduled), as in Swarm.
SWARM_ID = "com.docker.swarm.id"


def port_key(port: str) -> str:
    """Docker's port key with its protocol: ``80`` -> ``80/tcp``; ``53/udp`` stays."""
    port = str(port)
    return port if "/" in port else f"{port}/tcp"


@attrs.frozen
class Binding:
    """One host-side port a container holds (or asks for): host IP ("" = every interface), port, protocol."""

    host_ip: str
    host_port: str
    proto: str = "tcp"


def bindings(port_bindings: Any) -> tuple[Binding, ...]:
    """The host ports of a ``HostConfig.PortBindings`` map (``{"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}``)."""
    out: list[Binding] = []
    if not isinstance(port_bindings, Mapping):
        return ()
    for key, items in port_bindings.items():
        proto = port_key(key).partition("/")[2] or "tcp"
        for b in items or []:
            if isinstance(b, Mapping):
                out.append(Binding(str(b.get("HostIp") or ""), str(b.get("HostPort") or ""), proto))
    return tuple(out)


@attrs.frozen
class Container:
    """One container on a node, as the filters need it (from the engine's list and one inspect)."""

    id: str
    names: tuple[str, ...] = ()  # the engine's own names, "/name"
    image: str = ""
    image_id: str = ""
    labels: Mapping[str, str] = attrs.field(factory=dict)
    state: str = ""
    network_mode: str = ""
    #: Requested host ports (``HostConfig.PortBindings``), held even while the container is stopped.
    requested: tuple[Binding, ...] = ()
    #: Host ports actually published now (the list's ``Ports``), including dynamically chosen ones.
    published: tuple[Binding, ...] = ()
    #: ``Config.ExposedPorts`` keys (``80/tcp``): the ports a ``--net=host`` container holds on the host.
    exposed: tuple[str, ...] = ()
    cpus: float = 0.0
    memory: int = 0

    @property
    def swarm_id(self) -> str:
        return str(self.labels.get(SWARM_ID, ""))

    @property
    def name(self) -> str:
        return self.names[0].lstrip("/") if self.names else ""


@attrs.frozen
class Image:
    id: str
    repo_tags: tuple[str, ...] = ()


@attrs.define
class Node:
    """One engine as the scheduler sees it. ``id`` is the engine's ID, ``name`` its host name (or address)."""

    id: str
    name: str
    addr: str
    labels: dict[str, str] = attrs.field(factory=dict)
    healthy: bool = True
    containers: list[Container] = attrs.field(factory=list)
    images: list[Image] = attrs.field(factory=list)
    total_cpus: float = 0.0
    total_memory: int = 0
    #: Swarm's health indicator: 100 when the last requests succeeded, lower after recent failures.
    health: int = 100

    @property
    def used_cpus(self) -> float:
        return sum(c.cpus for c in self.containers)

    @property
    def used_memory(self) -> int:
        return sum(c.memory for c in self.containers)

    def container(self, ref: str) -> Container | None:
        """The container ``ref`` names on this node, as Swarm's ``Containers.Get``: exact or 12-character id,
        Swarm id, ``name`` / ``/name`` / ``node-name/name`` (when unique), then a unique id prefix; else None."""
        if not ref:
            return None
        for c in self.containers:
            if c.id and (c.id == ref or c.id[:12] == ref):
                return c
        for c in self.containers:
            if c.swarm_id and (c.swarm_id == ref or c.swarm_id[:12] == ref):
                return c
        named = [
            c
            for c in self.containers
            if any(n in (ref, "/" + ref) or self.name + n == ref or self.id + n == ref for n in c.names)
        ]
        if named:
            return named[0] if len(named) == 1 else None
        prefixed = [c for c in self.containers if c.id and c.id.startswith(ref)]
        return prefixed[0] if len(prefixed) == 1 else None
