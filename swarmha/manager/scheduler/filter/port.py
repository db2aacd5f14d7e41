"""``port``: a container publishing host port P goes only where P is free (same protocol, overlapping host IP).

A node holds a port when one of its containers — running or stopped, or being created right now — asks for it
(``HostConfig.PortBindings``), publishes it (``Ports``, which includes ports Docker chose), or runs with
``--net=host`` exposing it (``ExposedPorts``). Two bindings overlap when their host IPs are equal or either is
every interface (``""``, ``0.0.0.0``, ``::``). A ``--net=host`` request holds its exposed ports on every
interface. Refusals: ``unable to find a node with port 8080 available``, ``unable to find a node with port
80/tcp available in the Host mode``.

Unlike Swarm, the protocol counts (``53/udp`` and ``53/tcp`` are different ports, as they are to Docker), and a
``--net=host`` container and a published port conflict with each other (Swarm compared each mode only with
itself).
"""

from __future__ import annotations

import ipaddress

from swarmha.manager.scheduler.filter.base import FilterError
from swarmha.manager.scheduler.node import Binding, Container, Node
from swarmha.manager.scheduler.request import Request


def _all_interfaces(ip: str) -> bool:
    if not ip:
        return True
    try:
        return ipaddress.ip_address(ip).is_unspecified
    except ValueError:
        return False


def _overlap(a: Binding, b: Binding) -> bool:
    if not a.host_port or not b.host_port or a.host_port != b.host_port or a.proto != b.proto:
        return False
    return a.host_ip == b.host_ip or _all_interfaces(a.host_ip) or _all_interfaces(b.host_ip)


def _held(c: Container) -> list[Binding]:
    held = list(c.requested) + list(c.published)
    if c.network_mode == "host":
        held += [Binding("", p.partition("/")[0], p.partition("/")[2] or "tcp") for p in c.exposed]
    return held


def _free(node: Node, want: Binding) -> bool:
    return not any(_overlap(want, b) for c in node.containers for b in _held(c))


class PortFilter:
    name = "port"

    def filter(self, request: Request, nodes: list[Node], soft: bool) -> list[Node]:
        if request.network_mode == "host":
            for port in request.exposed:
                number, _, proto = port.partition("/")
                nodes = [n for n in nodes if _free(n, Binding("", number, proto or "tcp"))]
                if not nodes:
                    raise FilterError(f"unable to find a node with port {port} available in the Host mode")
            return nodes
        for b in request.port_bindings:
            if not b.host_port:
                continue  # Docker chooses the port: never a conflict
            nodes = [n for n in nodes if _free(n, b)]
            if not nodes:
                raise FilterError(f"unable to find a node with port {b.host_port} available")
        return nodes

    def conditions(self, request: Request) -> list[str]:
        if request.network_mode == "host":
            return [f"port {p} (Host mode)" for p in request.exposed]
        return [f"port {b.host_port} (Bridge mode)" for b in request.port_bindings]
