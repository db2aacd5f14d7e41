"""Swarm's placement strategies, one module each, chosen by name (``--strategy``): spread, binpack, random."""

from __future__ import annotations

from typing import Protocol

from swarmha.manager.scheduler.node import Node
from swarmha.manager.scheduler.request import Request
from swarmha.manager.scheduler.strategy.binpack import BinpackStrategy
from swarmha.manager.scheduler.strategy.random import RandomStrategy
from swarmha.manager.scheduler.strategy.spread import SpreadStrategy
from swarmha.manager.scheduler.strategy.weigh import NO_RESOURCES

__all__ = ["NO_RESOURCES", "STRATEGIES", "Strategy", "new"]


class Strategy(Protocol):
    @property
    def name(self) -> str: ...

    def rank(self, request: Request, nodes: list[Node]) -> list[Node]:
        """``nodes`` best first (the first one gets the container); SchedulingError when none has room."""
        ...


STRATEGIES = ("spread", "binpack", "random")


def new(name: str) -> Strategy:
    """The strategy called ``name`` (``binpacking`` is Swarm's old name for binpack); ValueError if unknown."""
    name = "binpack" if name == "binpacking" else name
    if name == "spread":
        return SpreadStrategy()
    if name == "binpack":
        return BinpackStrategy()
    if name == "random":
        return RandomStrategy()
    raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")
