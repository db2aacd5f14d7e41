"""``whitelist``: ``-e whitelist:node==a|b`` (or ``com.docker.swarm.whitelists``) keeps only the nodes named.

Every key is taken as a node name key (as in Swarm); the value is a ``|``-separated list of node names (the
engine's name or address). Refusal: ``unable to find a node that satisfies the whitelist node==a|b``.
"""

from __future__ import annotations

from swarmha.manager.scheduler.filter.base import FilterError
from swarmha.manager.scheduler.filter.expr import parse_exprs, soft_text
from swarmha.manager.scheduler.node import Node
from swarmha.manager.scheduler.request import Request


class WhitelistFilter:
    name = "whitelist"

    def filter(self, request: Request, nodes: list[Node], soft: bool) -> list[Node]:
        for w in parse_exprs(request.whitelists):
            if w.soft and not soft:
                continue
            names = set(w.value.split("|"))
            nodes = [n for n in nodes if n.name in names or n.addr in names]
            if not nodes:
                raise FilterError(f"unable to find a node that satisfies the whitelist {w}")
        return nodes

    def conditions(self, request: Request) -> list[str]:
        return [soft_text(w) for w in parse_exprs(request.whitelists)]
