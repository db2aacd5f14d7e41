"""``constraint``: nodes whose name/id/address or labels match ``constraint:key==value`` expressions.

``node`` matches the engine's name (its host name), its ID or its address; every other key is an engine label:
the built-in ones from the engine's ``/info`` (``storagedriver``, ``kernelversion``, ``operatingsystem``,
``ostype``, ``architecture``) and the engine's own ``--label k=v``. A node without the label has the value ``""``
(so ``key!=x`` accepts it). Refusal: ``unable to find a node that satisfies the constraint key==value``.
"""

from __future__ import annotations

from swarmha.manager.scheduler.filter.base import FilterError
from swarmha.manager.scheduler.filter.expr import parse_exprs
from swarmha.manager.scheduler.node import Node
from swarmha.manager.scheduler.request import Request


class ConstraintFilter:
    name = "constraint"

    def filter(self, request: Request, nodes: list[Node], soft: bool) -> list[Node]:
        for c in parse_exprs(request.constraints):
            if c.soft and not soft:
                continue
            if c.key == "node":
                nodes = [n for n in nodes if c.match(n.id, n.name, n.addr)]
            else:
                nodes = [n for n in nodes if c.match(n.labels.get(c.key, ""))]
            if not nodes:
                raise FilterError(f"unable to find a node that satisfies the constraint {c}")
        return nodes

    def conditions(self, request: Request) -> list[str]:
        return [str(c) for c in parse_exprs(request.constraints)]
