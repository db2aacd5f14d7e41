"""``containerslots``: an engine labelled ``containerslots=N`` takes at most N containers (stopped ones count).

Also honoured: the engine label ``com.docker.swarm.slots=N`` (the same cap), and the container label
``com.docker.swarm.slots=N`` on the request (place only where fewer than N containers are). A value that is not
an integer means no limit, as in Swarm. Refusal: ``No node with enough open slots available in the cluster``.
"""

from __future__ import annotations

from swarmha.manager.scheduler.filter.base import FilterError
from swarmha.manager.scheduler.node import Node
from swarmha.manager.scheduler.request import Request

NO_FREE_SLOTS = "No node with enough open slots available in the cluster"
_LABELS = ("containerslots", "com.docker.swarm.slots")


def _cap(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


class SlotsFilter:
    name = "containerslots"

    def filter(self, request: Request, nodes: list[Node], soft: bool) -> list[Node]:
        wanted = _cap(request.slots or None)
        out = []
        for n in nodes:
            caps = [c for c in (_cap(n.labels.get(label)) for label in _LABELS) if c is not None]
            if wanted is not None:
                caps.append(wanted)
            if not caps or len(n.containers) < min(caps):
                out.append(n)
        if not out:
            raise FilterError(NO_FREE_SLOTS)
        return out

    def conditions(self, request: Request) -> list[str]:
        return ["available container slots"]
