"""The :class:`Filter` protocol every filter module implements, and how a list of filters is applied.

A filter takes the request and the candidate nodes and returns the nodes it accepts; when it accepts none it
raises :class:`FilterError` with its own reason. ``soft=True`` means soft expressions (``==~``) count too: the
scheduler first applies every filter with soft expressions and, if that leaves no node, again without them.

When a filter refuses, the client gets Swarm's text, which lists the conditions of every filter up to the one
that refused: ``Unable to find a node that satisfies the following conditions \\n[port 80 (Bridge mode)]\\n
[node==node-3]`` — and, as a last line, the refusing filter's own reason (Swarm only logged it). The health
filter's refusal (``No healthy node available in the cluster``) is passed on alone, as in Swarm.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from swarmha.manager.scheduler.filter.expr import ExprError
from swarmha.manager.scheduler.node import Node
from swarmha.manager.scheduler.request import Request, SchedulingError

__all__ = ["Filter", "FilterError", "apply_filters"]


class FilterError(SchedulingError):
    """A filter accepted no node (the message says which condition)."""


class Filter(Protocol):
    """One placement filter, chosen by :attr:`name` with ``--filter NAME``."""

    @property
    def name(self) -> str: ...

    def filter(self, request: Request, nodes: list[Node], soft: bool) -> list[Node]:
        """The nodes of ``nodes`` that may take the container; raises FilterError (or ExprError) if none."""
        ...

    def conditions(self, request: Request) -> list[str]:
        """The conditions this filter checks for ``request``, as listed in the refusal; ExprError if unparsable."""
        ...


def _go_list(items: list[str]) -> str:
    return "[" + " ".join(items) + "]"  # Go's %v of a []string


def _listed(filters: Sequence[Filter], request: Request, last: str) -> str:
    out = ""
    for f in filters:
        try:
            items = f.conditions(request)
        except ExprError as e:
            return f"{out}\nerror from {f.name} filter: {e}"
        if items:
            out += "\n" + _go_list(items)
        if f.name == last:
            break
    return out


def apply_filters(filters: Sequence[Filter], request: Request, nodes: list[Node], soft: bool) -> list[Node]:
    """Apply ``filters`` in order; raises :class:`FilterError` with Swarm's text when one leaves no node."""
    candidates = nodes
    for f in filters:
        try:
            candidates = f.filter(request, candidates, soft)
        except (FilterError, ExprError) as e:
            if f.name == "health":
                raise FilterError(str(e)) from None
            listed = _listed(filters, request, f.name)
            raise FilterError(
                f"Unable to find a node that satisfies the following conditions {listed}\n({e})"
            ) from None
    return candidates
