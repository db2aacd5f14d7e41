"""``dependency``: ``--volumes-from X``, ``--link X:alias`` and ``--net container:X`` go where X is.

Every container named must be on the node (by id, short id, name, or Swarm id); dependencies on containers
that live on different nodes leave no node. Refusal: ``Unable to find a node fulfilling all dependencies:
--volumes-from=X --link=Y:y --net=container:Z``.
"""

from __future__ import annotations

from swarmha.manager.scheduler.filter.base import FilterError
from swarmha.manager.scheduler.node import Node
from swarmha.manager.scheduler.request import Request


def _refs(request: Request) -> list[str]:
    refs = [v.split(":", 1)[0] for v in request.volumes_from]
    refs += [v.split(":", 1)[0] for v in request.links]
    if request.network_mode.startswith("container:"):
        refs.append(request.network_mode[len("container:") :])
    return refs


class DependencyFilter:
    name = "dependency"

    def filter(self, request: Request, nodes: list[Node], soft: bool) -> list[Node]:
        refs = _refs(request)
        if not nodes or not refs:
            return nodes
        out = [n for n in nodes if all(n.container(r) is not None for r in refs)]
        if not out:
            wanted = " ".join(self.conditions(request))
            raise FilterError(f"Unable to find a node fulfilling all dependencies: {wanted}")
        return out

    def conditions(self, request: Request) -> list[str]:
        out = [f"--volumes-from={v}" for v in request.volumes_from]
        out += [f"--link={v}" for v in request.links]
        if request.network_mode.startswith("container:"):
            out.append(f"--net={request.network_mode}")
        return out
