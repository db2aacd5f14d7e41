"""``binpack``: the node with the highest weight — the most reserved CPU and memory that still fits — then the one
with the most containers, then by name: containers fill one node before the next is used."""

from __future__ import annotations

from swarmha.manager.scheduler.node import Node
from swarmha.manager.scheduler.request import Request
from swarmha.manager.scheduler.strategy.weigh import weigh


class BinpackStrategy:
    name = "binpack"

    def rank(self, request: Request, nodes: list[Node]) -> list[Node]:
        weighted = weigh(request, nodes, 10)
        weighted.sort(key=lambda wn: (-wn[0], -len(wn[1].containers), wn[1].name))
        return [n for _, n in weighted]
