"""Prometheus metrics of a manager on ``--metrics ADDR`` (needs the optional extra ``swarmha[metrics]``).

Served on their own listener (``GET /metrics`` in Prometheus' text format, and ``GET /health`` as on the API
port), never on the Docker API port, so a scrape neither needs the API's TLS client certificate nor shows up in
``docker`` traffic. Each manager has its own registry (no process-global state):

=================================================== ==============================================================
``swarmha_manager_primary``                          1 while this manager is the primary, else 0
``swarmha_manager_term``                             fencing token of the primary's term as this manager sees it
``swarmha_manager_leadership_changes_total{event}``  ``acquired`` / ``lost`` by this manager
``swarmha_manager_primary_changes_total``            new primaries seen (a follower's leader changes)
``swarmha_manager_last_handover_seconds``            from the old primary's loss (its key gone, or it stopped
                                                     answering a forwarded request) to the next primary seen;
                                                     unchanged when this manager saw no gap (it won the key before
                                                     it saw it vacant, as in a graceful handover to it)
``swarmha_manager_store_reachable``                  1 while the discovery store answers (absent: no store)
``swarmha_manager_store_outages_total``              store outages that ended
``swarmha_requests_total{route,via,code}``           requests by route, how they were served (``primary``: by this
                                                     manager as primary; ``replica``: forwarded to the primary;
                                                     ``local``: /_ping, /info, /health) and status
``swarmha_request_duration_seconds{route,via}``      latency histogram (a stream counts until it ends)
``swarmha_upstream_errors_total{kind}``              replica → primary failures: ``unreachable``, ``broken``
``swarmha_engines{status}``                          engines ``Healthy`` / ``Unhealthy`` / ``Pending``
=================================================== ==============================================================

Routes are route templates, never raw paths, so the label sets are bounded whatever clients send: the first
path segment when it is one the Docker API has (``containers``, ``images``, ``events``...), then the action when
it is a known one (``containers/json``, ``containers/logs`` for ``/containers/{id}/logs``) or ``{id}``
(``containers/{id}`` for ``DELETE /containers/abc``); anything else is ``other``.

The manager feeds this module through callbacks (what it reads at scrape time) and the ``observe_*`` and
``*_changed`` calls; it never sees the manager itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from swarmha.errors import ConfigurationError
from swarmha.manager.store_state import StoreState

__all__ = ["ManagerMetrics", "check_installed", "route_of"]

#: First path segments that are a route of their own (anything else is ``other``).
_KINDS = frozenset(
    [
        "_ping",
        "auth",
        "build",
        "commit",
        "configs",
        "containers",
        "distribution",
        "events",
        "exec",
        "grpc",
        "health",
        "images",
        "info",
        "networks",
        "nodes",
        "plugins",
        "secrets",
        "services",
        "session",
        "swarm",
        "system",
        "tasks",
        "version",
        "volumes",
    ]
)
#: Path segments that name an action or a fixed sub-route (anything else in their place is ``{id}``).
_ACTIONS = frozenset(
    [
        "archive",
        "attach",
        "changes",
        "connect",
        "create",
        "df",
        "disconnect",
        "export",
        "get",
        "history",
        "import",
        "inspect",
        "json",
        "kill",
        "load",
        "logs",
        "pause",
        "prune",
        "push",
        "remove",
        "rename",
        "resize",
        "restart",
        "search",
        "start",
        "stats",
        "stop",
        "tag",
        "top",
        "unpause",
        "update",
        "upgrade",
        "wait",
        "ws",
    ]
)


def check_installed() -> None:
    """Raise ConfigurationError naming the extra when prometheus_client is missing."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "--metrics needs the prometheus_client package: pip install 'swarmha[metrics]'"
        ) from None


def route_of(path: str) -> str:
    """A request path (API version stripped) as a metric label (see the module docstring):
    ``/containers/abc/logs`` -> ``containers/logs``, ``/containers/abc`` -> ``containers/{id}``,
    ``/whatever/x`` -> ``other``."""
    segments = path.strip("/").split("/", 8)
    kind = segments[0]
    if kind not in _KINDS:
        return "other"
    if len(segments) == 1:
        return kind
    last = segments[-1]
    return f"{kind}/{last}" if last in _ACTIONS else f"{kind}/{{id}}"


class _Live:
    """The gauges read at scrape time (a prometheus_client collector)."""

    def __init__(self, metrics: ManagerMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        return self._metrics._collect()


class ManagerMetrics:
    """The metrics of one manager (see the module docstring)."""

    def __init__(
        self,
        *,
        is_primary: Callable[[], bool],
        term: Callable[[], int],
        engine_statuses: Callable[[], Iterable[str]],
        store: StoreState | None = None,
        priority: int = 0,
    ) -> None:
        """What is read at scrape time: ``is_primary()``, ``term()`` (the fencing token as this manager sees it),
        ``engine_statuses()`` (``Healthy`` / ``Unhealthy`` / ``Pending`` per engine), ``store`` (None: no store).
        ``priority``: this manager's ``--priority`` (a gauge)."""
        import prometheus_client as prom
        from prometheus_client.core import GaugeMetricFamily

        self._prom = prom
        self.registry = prom.CollectorRegistry()
        self._is_primary = is_primary
        self._term = term
        self._engine_statuses = engine_statuses
        self._store = store
        self._priority = priority
        reg = self.registry
        self.requests = prom.Counter("swarmha_requests", "requests served", ["route", "via", "code"], registry=reg)
        self.latency = prom.Histogram(
            "swarmha_request_duration_seconds",
            "request latency (streams until they end)",
            ["route", "via"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=reg,
        )
        self.upstream_errors = prom.Counter(
            "swarmha_upstream_errors", "replica to primary failures", ["kind"], registry=reg
        )
        self.leadership = prom.Counter(
            "swarmha_manager_leadership_changes", "leadership acquired/lost by this manager", ["event"], registry=reg
        )
        self.primary_changes = prom.Counter("swarmha_manager_primary_changes", "new primaries seen", registry=reg)
        self.handover = prom.Gauge(
            "swarmha_manager_last_handover_seconds", "old primary lost -> next primary seen", registry=reg
        )
        self._lost_at: float | None = None
        self._gauge = GaugeMetricFamily

        self.registry.register(_Live(self))

    def _collect(self) -> Iterator[Any]:
        g = self._gauge
        yield g("swarmha_manager_primary", "1 while this manager is the primary", value=1 if self._is_primary() else 0)
        yield g("swarmha_manager_term", "fencing token of the primary's term", value=self._term())
        yield g("swarmha_manager_priority", "this manager's --priority to be primary", value=self._priority)
        store = self._store
        if store is not None:
            yield g("swarmha_manager_store_reachable", "1 while the store answers", value=int(store.reachable))
            yield g("swarmha_manager_store_outages_total", "store outages that ended", value=store.outages)
        engines = g("swarmha_engines", "engines by status", labels=["status"])
        counts = {"Healthy": 0, "Unhealthy": 0, "Pending": 0}
        for status in self._engine_statuses():
            counts[status] = counts.get(status, 0) + 1
        for status, n in counts.items():
            engines.add_metric([status], n)
        yield engines

    # -- fed by the manager ------------------------------------------------------------------------------

    def observe_request(self, path: str, via: str, status: int, seconds: float) -> None:
        route = route_of(path)
        self.requests.labels(route, via, str(status or 0)).inc()
        self.latency.labels(route, via).observe(seconds)

    def upstream_error(self, kind: str) -> None:
        self.upstream_errors.labels(kind).inc()
        if self._lost_at is None:
            self._lost_at = time.monotonic()

    def leadership_changed(self, acquired: bool) -> None:
        self.leadership.labels("acquired" if acquired else "lost").inc()
        if acquired:
            self._handed_over()
        elif self._lost_at is None:
            self._lost_at = time.monotonic()

    def primary_seen(self, present: bool) -> None:
        """A follower's leader change: ``present`` False when the key went vacant."""
        if not present:
            if self._lost_at is None:
                self._lost_at = time.monotonic()
            return
        self.primary_changes.inc()
        self._handed_over()

    def _handed_over(self) -> None:
        if self._lost_at is not None:
            self.handover.set(time.monotonic() - self._lost_at)
            self._lost_at = None

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of ``GET /metrics``."""
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST
