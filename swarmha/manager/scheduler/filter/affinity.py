"""``affinity``: place a container next to (or away from) other containers or images.

* ``affinity:container==db`` — a node running (or holding, stopped) a container named ``db`` or with that id
  (full or the 12-character short id);
* ``affinity:image==redis`` — a node that has the image (id, ``repo:tag`` or ``repo``);
* ``affinity:com.example.type==web`` — a node with a container whose label ``com.example.type`` matches.

``!=`` negates, ``==~`` / ``!=~`` are soft (dropped when nothing matches). Values are globs or ``/regexp/``.
Refusal: ``unable to find a node that satisfies the affinity key==value``.
"""

from __future__ import annotations

from swarmha.manager.scheduler.filter.base import FilterError
from swarmha.manager.scheduler.filter.expr import Expr, parse_exprs, soft_text
from swarmha.manager.scheduler.node import Node
from swarmha.manager.scheduler.request import Request


def _repo(tag: str) -> str:
    """``registry:5000/name:tag`` -> ``registry:5000/name`` (a colon after the last slash starts the tag)."""
    head, slash, tail = tag.rpartition("/")
    return head + slash + tail.partition(":")[0] if "@" not in tail else head + slash + tail.partition("@")[0]


def _values(node: Node, key: str) -> list[str]:
    out: list[str] = []
    if key == "container":
        for c in node.containers:
            if c.names and c.id:
                out += [c.id, c.id[:12], c.name]
    elif key == "image":
        for image in node.images:
            out.append(image.id)
            hex_id = image.id.partition(":")[2] or image.id
            out.append(hex_id[:12])
            out += image.repo_tags
            out += [_repo(t) for t in image.repo_tags]
    else:
        out = [c.labels.get(key, "") for c in node.containers]
    return out


class AffinityFilter:
    name = "affinity"

    def filter(self, request: Request, nodes: list[Node], soft: bool) -> list[Node]:
        for a in parse_exprs(request.affinities):
            if a.soft and not soft:
                continue
            nodes = [n for n in nodes if _matches(a, n)]
            if not nodes:
                raise FilterError(f"unable to find a node that satisfies the affinity {a}")
        return nodes

    def conditions(self, request: Request) -> list[str]:
        return [soft_text(a) for a in parse_exprs(request.affinities)]


def _matches(a: Expr, node: Node) -> bool:
    return a.match(*_values(node, a.key))
