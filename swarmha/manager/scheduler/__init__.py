"""The scheduler: which engine gets a new container, as Swarm classic chose it.

Layout (as Swarm's ``scheduler/``): :mod:`.request` reads a create request (``-e constraint:…``, the
``com.docker.swarm.*`` labels), :mod:`.node` is the scheduler's view of an engine and its containers (built
from the Docker API's answers by :mod:`.records`),
``filter/`` holds one module per filter behind the small :class:`~.filter.Filter` protocol (health, port,
containerslots, dependency, affinity, constraint, whitelist), ``strategy/`` one module per strategy (spread,
binpack, random).

:meth:`Scheduler.select` applies the filters with soft expressions first; if that leaves no node, or the
strategy finds no room, it tries again without them (soft constraints and affinities fall back), then ranks
what is left. It raises :class:`SchedulingError` with Swarm's text when no node can take the container.
"""

from __future__ import annotations

from collections.abc import Iterable

from swarmha.manager.scheduler import filter as filters_
from swarmha.manager.scheduler import strategy as strategies_
from swarmha.manager.scheduler.filter import FILTERS
from swarmha.manager.scheduler.node import SWARM_ID, Container, Image, Node
from swarmha.manager.scheduler.request import Request, SchedulingError
from swarmha.manager.scheduler.strategy import STRATEGIES

__all__ = [
    "FILTERS",
    "STRATEGIES",
    "SWARM_ID",
    "Container",
    "Image",
    "Node",
    "Request",
    "Scheduler",
    "SchedulingError",
]


class Scheduler:
    """A strategy and the active filters (Swarm's default set when ``filters`` is None)."""

    def __init__(self, strategy: str = "spread", filters: Iterable[str] | None = None) -> None:
        self.strategy = strategies_.new(strategy)
        self.filters = filters_.new(FILTERS if filters is None else filters)

    @property
    def filter_names(self) -> str:
        """The ``Filters:`` line of ``docker info``: the active filters, in the order they run."""
        return ", ".join(f.name for f in self.filters)

    def select(self, request: Request, nodes: list[Node]) -> list[Node]:
        """The nodes that may take the container, best first; SchedulingError (Swarm's text) when none may."""
        try:
            return self._select(request, nodes, soft=True)
        except SchedulingError:
            return self._select(request, nodes, soft=False)

    def _select(self, request: Request, nodes: list[Node], soft: bool) -> list[Node]:
        accepted = filters_.apply_filters(self.filters, request, nodes, soft)
        if not accepted:
            raise SchedulingError("No node available in the cluster")
        return self.strategy.rank(request, accepted)
