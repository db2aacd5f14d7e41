"""``health``: only healthy engines (an engine that failed its last refresh, or never answered, is skipped)."""

from __future__ import annotations

from swarmha.manager.scheduler.filter.base import FilterError
from swarmha.manager.scheduler.node import Node
from swarmha.manager.scheduler.request import Request

NO_HEALTHY_NODE = "No healthy node available in the cluster"


class HealthFilter:
    name = "health"

    def filter(self, request: Request, nodes: list[Node], soft: bool) -> list[Node]:
        out = [n for n in nodes if n.healthy]
        if not out:
            raise FilterError(NO_HEALTHY_NODE)
        return out

    def conditions(self, request: Request) -> list[str]:
        return []
