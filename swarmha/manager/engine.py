"""One Docker engine as a manager knows it: its state from the last refresh (``/info``, containers, images), its
Swarm ``Node`` object and labels, and how its failures read.

The cluster (:mod:`swarmha.manager.cluster`) owns the engines, refreshes them and places containers on them;
this module is the per-engine part, as Swarm classic's ``cluster/engine.go`` beside ``cluster/swarm``.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import attrs

from swarmha.manager.scheduler import Container, Image
from swarmha.manager.upstream import Upstream, UpstreamBroken

__all__ = ["AnsweredBadly", "Engine", "account", "describe_error", "engine_order", "split_addr"]


@attrs.define
class Engine:
    """What the manager knows of one engine; replaced field by field on each refresh."""

    addr: str
    upstream: Upstream
    name: str = ""
    id: str = ""
    healthy: bool = False
    error: str = ""
    info: dict[str, Any] = attrs.field(factory=dict)
    api_version: str = ""
    min_api_version: str = ""
    containers: int = 0
    running: int = 0
    paused: int = 0
    stopped: int = 0
    reserved_cpus: float = 0.0
    reserved_memory: int = 0
    updated_at: datetime.datetime | None = None
    #: The containers on the engine at its last refresh (and those created through this manager since).
    records: list[Container] = attrs.field(factory=list)
    images: list[Image] = attrs.field(factory=list)
    #: The engine's own ``/containers/json?all=1`` items at its last refresh (shown as "Host Down" while it is
    #: not healthy).
    listed: list[dict[str, Any]] = attrs.field(factory=list)

    #: Whether the engine was ever validated (answered a whole refresh, with an engine ID no other engine has).
    validated: bool = False

    @property
    def status(self) -> str:
        """Swarm classic's node status: ``Pending`` until the engine is validated (with :attr:`error` when its
        validation failed: unreachable, or an ID another engine has), then ``Healthy``, or ``Unhealthy`` (with
        :attr:`error`) while it fails."""
        if self.healthy:
            return "Healthy"
        return "Unhealthy" if self.validated else "Pending"

    @property
    def url(self) -> str:
        scheme = "https" if self.upstream.ssl is not None else "http"
        return f"{scheme}://{self.addr}"

    @property
    def ncpu(self) -> int:
        return int(self.info.get("NCPU") or 0)

    @property
    def memory(self) -> int:
        return int(self.info.get("MemTotal") or 0)

    @property
    def labels(self) -> dict[str, str]:
        """Swarm's node labels: the built-in ones from ``/info``, then the engine's ``--label k=v`` (a label
        cannot override a built-in one; a ``node`` label is shown but ``constraint:node`` means the node itself)."""
        out = {
            key: str(self.info[field])
            for key, field in _BUILTIN_LABELS.items()
            if self.info.get(field) not in (None, "")
        }
        for label in self.info.get("Labels") or []:
            k, _, v = str(label).partition("=")
            if k not in out:
                out[k] = v
        return out

    @property
    def ip(self) -> str:
        return self.upstream.host

    def node(self) -> dict[str, Any]:
        """Swarm classic's ``Node`` object, carried by container inspect and list answers."""
        return {
            "ID": self.id,
            "IP": self.ip,
            "Addr": self.addr,
            "Name": self.name,
            "Cpus": self.ncpu,
            "Memory": self.memory,
            "Labels": self.labels,
        }


_BUILTIN_LABELS = {
    "storagedriver": "Driver",
    "kernelversion": "KernelVersion",
    "operatingsystem": "OperatingSystem",
    "ostype": "OSType",
    "architecture": "Architecture",
}


def account(e: Engine) -> None:
    """The engine's counts and reservations from its records."""
    e.containers = len(e.records)
    e.running = sum(1 for c in e.records if c.state == "running")
    e.paused = sum(1 for c in e.records if c.state == "paused")
    e.stopped = e.containers - e.running - e.paused
    e.reserved_cpus = sum(c.cpus for c in e.records)
    e.reserved_memory = sum(c.memory for c in e.records)


def describe_error(addr: str, err: BaseException) -> str:
    """An engine failure as an operator reads it: the address and the OS error under the client's wrapper.

    ``cannot reach 10.0.0.5:2375: [Errno 111] Connection refused`` rather than the wrapper's words; an HTTP
    error answer keeps its status (``10.0.0.5:2375 answered 500 to /info``).
    """
    if isinstance(err, AnsweredBadly):
        return f"{addr} {err}"
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno is not None:
            return f"cannot reach {addr}: [Errno {cause.errno}] {os.strerror(cause.errno)}"
        cause = cause.__cause__ or cause.__context__
    if isinstance(err, UpstreamBroken) and "no answer within" in str(err):
        return f"{addr} did not answer within the timeout"
    return f"{addr}: {err or type(err).__name__}"


class AnsweredBadly(ValueError):
    """An engine answered a refresh request with an error status (the message says which)."""


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def engine_order(e: Engine) -> str:
    return e.name or e.addr
