"""``random``: any node with room, chosen at random. Unlike Swarm's (which did not look at resources), a node
without room for the reservation is never chosen, and no room anywhere is Swarm's ``no resources`` refusal."""

from __future__ import annotations

import random

from swarmha.manager.scheduler.node import Node
from swarmha.manager.scheduler.request import Request
from swarmha.manager.scheduler.strategy.weigh import weigh


class RandomStrategy:
    name = "random"

    def __init__(self) -> None:
        self._random = random.Random()

    def rank(self, request: Request, nodes: list[Node]) -> list[Node]:
        fit = [n for _, n in weigh(request, nodes, 0)]
        self._random.shuffle(fit)
        return fit
