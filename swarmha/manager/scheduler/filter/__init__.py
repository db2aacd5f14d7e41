"""Swarm's placement filters, one module each, chosen by name (``--filter NAME``).

The default set and its order are Swarm's: ``health, port, containerslots, dependency, affinity, constraint,
whitelist``. :func:`new` builds the filters for a list of names and refuses an unknown one.
"""

from __future__ import annotations

from collections.abc import Iterable

from swarmha.manager.scheduler.filter.affinity import AffinityFilter
from swarmha.manager.scheduler.filter.base import Filter, FilterError, apply_filters
from swarmha.manager.scheduler.filter.constraint import ConstraintFilter
from swarmha.manager.scheduler.filter.containerslots import SlotsFilter
from swarmha.manager.scheduler.filter.dependency import DependencyFilter
from swarmha.manager.scheduler.filter.expr import ExprError
from swarmha.manager.scheduler.filter.health import HealthFilter
from swarmha.manager.scheduler.filter.port import PortFilter
from swarmha.manager.scheduler.filter.whitelist import WhitelistFilter

__all__ = ["FILTERS", "ExprError", "Filter", "FilterError", "apply_filters", "new"]

_ALL: tuple[Filter, ...] = (
    HealthFilter(),
    PortFilter(),
    SlotsFilter(),
    DependencyFilter(),
    AffinityFilter(),
    ConstraintFilter(),
    WhitelistFilter(),
)
#: Every filter's name, in Swarm's order: the default ``--filter`` set.
FILTERS: tuple[str, ...] = tuple(f.name for f in _ALL)


def new(names: Iterable[str]) -> list[Filter]:
    """The filters named, in the order given (duplicates dropped); ValueError names an unknown one."""
    by_name = {f.name: f for f in _ALL}
    out: list[Filter] = []
    for name in names:
        if name not in by_name:
            raise ValueError(f"filter {name!r} is not supported: expected one of {', '.join(FILTERS)}")
        if by_name[name] not in out:
            out.append(by_name[name])
    return out
