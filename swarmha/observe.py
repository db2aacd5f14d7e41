"""Observe every :class:`~swarmha.Candidate` and :class:`~swarmha.Follower` of the process: the hook for metrics.

``add_observer(callback)`` registers a function that is called with an :class:`Observation` for each event of
every candidate and follower, sync or asyncio, started before or after the call:

* ``elected`` / ``lost`` (a candidate; ``term`` carries the fencing token; a ``lost`` one's ``reason`` says why the
  term ended, in words for a log: see ``Candidate.lost_reason``),
* ``leader`` (a follower saw a new leader, ``leader``, or none: ``leader`` is None),
* ``store_error`` (a store request failed and will be retried; ``error``),
* ``end`` (the candidate or follower stopped).

The callback runs on the election's background thread: it must be quick and must not block (count, set a
gauge, hand over to a queue). An exception it raises is logged and does not disturb the election. The hook
needs no dependency; :class:`PrometheusObserver` is a ready-made one for ``prometheus_client`` (the optional
extra ``swarmha[metrics]``)::

    from swarmha.observe import PrometheusObserver, add_observer
    remove = add_observer(PrometheusObserver())   # metrics in prometheus_client's default registry
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from swarmha.election._worker import Observation, observers

__all__ = ["Observation", "PrometheusObserver", "add_observer"]

_lock = threading.Lock()


def add_observer(callback: Callable[[Observation], None]) -> Callable[[], None]:
    """Call ``callback`` for every later election event in the process; returns the function that removes it."""
    with _lock:
        observers.append(callback)

    def remove() -> None:
        with _lock:
            if callback in observers:
                observers.remove(callback)

    return remove


class PrometheusObserver:
    """Election metrics in a ``prometheus_client`` registry (default: its global one).

    * ``swarmha_election_leader{key,node}``: 1 while this process's candidate leads the key, else 0;
    * ``swarmha_election_term{key,node}``: the fencing token of the last term won;
    * ``swarmha_election_transitions_total{key,source,kind}``: elected / lost / leader changes / end;
    * ``swarmha_election_store_errors_total{key,source}``: failed store requests (each retried).

    Raises ImportError naming the extra when prometheus_client is not installed.
    """

    def __init__(self, registry: Any = None) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            raise ImportError("PrometheusObserver needs prometheus_client: pip install 'swarmha[metrics]'") from None
        kw: dict[str, Any] = {} if registry is None else {"registry": registry}
        self.leader = prom.Gauge("swarmha_election_leader", "1 while this candidate leads", ["key", "node"], **kw)
        self.term = prom.Gauge("swarmha_election_term", "fencing token of the last term won", ["key", "node"], **kw)
        self.transitions = prom.Counter(
            "swarmha_election_transitions", "election events", ["key", "source", "kind"], **kw
        )
        self.store_errors = prom.Counter(
            "swarmha_election_store_errors", "failed store requests (retried)", ["key", "source"], **kw
        )

    def __call__(self, seen: Observation) -> None:
        if seen.kind == "store_error":
            self.store_errors.labels(seen.key, seen.source).inc()
            return
        self.transitions.labels(seen.key, seen.source, seen.kind).inc()
        if seen.source == "candidate" and seen.node is not None:
            if seen.kind == "elected" and seen.term is not None:
                self.leader.labels(seen.key, seen.node).set(1)
                self.term.labels(seen.key, seen.node).set(seen.term.token)
            elif seen.kind in ("lost", "end"):
                self.leader.labels(seen.key, seen.node).set(0)
