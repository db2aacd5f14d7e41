"""``spread`` (the default): the node with the lowest weight — the least reserved CPU and memory — then the one
with the fewest containers (stopped ones count), then by name, so equal nodes are chosen in a fixed order."""

from __future__ import annotations

from swarmha.manager.scheduler.node import Node
from swarmha.manager.scheduler.request import Request
from swarmha.manager.scheduler.strategy.weigh import weigh


class SpreadStrategy:
    name = "spread"

    def rank(self, request: Request, nodes: list[Node]) -> list[Node]:
        weighted = weigh(request, nodes, -10)
        weighted.sort(key=lambda wn: (wn[0], len(wn[1].containers), wn[1].name))
        return [n for _, n in weighted]
