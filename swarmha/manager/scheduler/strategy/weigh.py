"""Swarm's node weights (``weighted_node.go``), shared by the spread and binpack strategies.

For each node: its CPU score is ``(reserved CPUs + requested) * 100 / node CPUs`` when the request reserves CPUs
(``-c``/``--cpu-shares`` counted as CPUs, plus ``--cpus``), else 100; its memory score likewise with ``-m``. A node
whose score passes 100 on either (or smaller than the request) cannot take the container. The weight is
``cpu + memory + health_factor * health`` (health 100 for a healthy node whose last requests succeeded, less after
recent failures: :attr:`Node.health`). No node left: ``no resources
available to schedule container``.
"""

from __future__ import annotations

import math

from swarmha.manager.scheduler.node import Node
from swarmha.manager.scheduler.request import Request, SchedulingError

__all__ = ["NO_RESOURCES", "weigh"]

NO_RESOURCES = "no resources available to schedule container"


def _score(used: float, wanted: float, total: float) -> int:
    if wanted <= 0:
        return 100
    if total <= 0:
        return 101  # the engine reports none: it cannot take a reservation
    return math.floor((used + wanted) * 100 / total)


def weigh(request: Request, nodes: list[Node], health_factor: int) -> list[tuple[int, Node]]:
    """(weight, node) for every node that has room; raises SchedulingError(NO_RESOURCES) when none has."""
    out: list[tuple[int, Node]] = []
    for n in nodes:
        cpu = _score(n.used_cpus, request.cpus, n.total_cpus)
        memory = _score(n.used_memory, request.memory, n.total_memory)
        if cpu <= 100 and memory <= 100:
            out.append((cpu + memory + health_factor * n.health, n))
    if not out:
        raise SchedulingError(NO_RESOURCES)
    return out
