"""The scheduler's records of containers, built from what the Docker API says of them.

A container is seen three ways: its create body (:func:`from_request`, when this manager creates it), one inspect
(:func:`from_inspect`, once per container: what it holds does not change) and the engine's list
(:func:`from_list`, every refresh: names, state, published ports, labels). :class:`Inspected` keeps what an
inspect taught, and for a container with the ``on-node-failure`` policy the whole answer, to create it again.

``CpuShares`` means CPUs to the manager (Swarm's ``-c``/``--cpu-shares``: the CPUs a container reserves) and
shares of 1024 per CPU to an engine; :func:`to_engine` and :func:`from_engine` convert as Swarm's
``cluster/engine.go`` did (``ceil(cpus * 1024 / NCPU)`` going in, ``shares * NCPU // 1024`` coming back), so
``--cpu-shares 1`` on a 2-CPU engine runs with 512 shares (runc refuses fewer than 2) and reserves 1 CPU.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import attrs

from swarmha.manager.scheduler.node import Binding, Container, bindings, port_key
from swarmha.manager.scheduler.request import Request, cpus_of

__all__ = [
    "ON_NODE_FAILURE",
    "Inspected",
    "from_engine",
    "from_inspect",
    "from_list",
    "from_request",
    "reschedulable",
    "to_engine",
]

ON_NODE_FAILURE = "on-node-failure"
_POLICIES = "com.docker.swarm.reschedule-policies"


@attrs.frozen
class Inspected:
    """What one inspect of a container taught (it does not change): its record, and — for a container with a
    reschedule policy — the whole inspect answer, to create it again elsewhere if its engine dies."""

    record: Container
    full: dict[str, Any] | None


def _with_shares(body: Mapping[str, Any], convert: Any) -> dict[str, Any]:
    out = dict(body)
    hc = out.get("HostConfig")
    if isinstance(hc, dict) and isinstance(hc.get("CpuShares"), int) and hc["CpuShares"] > 0:
        out["HostConfig"] = {**hc, "CpuShares": convert(hc["CpuShares"])}
    return out


def to_engine(config: Mapping[str, Any], ncpu: int) -> dict[str, Any]:
    """A create body (``CpuShares`` in CPUs) as the engine with ``ncpu`` CPUs is to get it (``CpuShares`` in
    shares: ``ceil(cpus * 1024 / ncpu)``); a shallow copy, ``config`` is not changed. Unchanged when ``ncpu``
    is not known (0) or the body reserves no CPU."""
    if ncpu <= 0:
        return dict(config)
    return _with_shares(config, lambda cpus: math.ceil(cpus * 1024 / ncpu))


def from_engine(body: Mapping[str, Any], ncpu: int) -> dict[str, Any]:
    """An engine's inspect answer with ``HostConfig.CpuShares`` in CPUs (``shares * ncpu // 1024``, Swarm's
    integer division); a shallow copy. Unchanged when ``ncpu`` is not known (0)."""
    if ncpu <= 0:
        return dict(body)
    return _with_shares(body, lambda shares: shares * ncpu // 1024)


def from_request(request: Request, config: Mapping[str, Any], cid: str = "") -> Container:
    """The scheduler's record of a container from its create body (pending until it has an id)."""
    hc = config.get("HostConfig") or {}
    return Container(
        id=cid,
        names=(),
        image=request.image,
        labels=dict(request.labels),
        state="created",
        network_mode=request.network_mode,
        requested=request.port_bindings,
        exposed=request.exposed,
        cpus=cpus_of(hc),
        memory=int(hc.get("Memory") or 0),
    )


def from_inspect(body: Mapping[str, Any]) -> Container:
    hc = body.get("HostConfig") or {}
    cfg = body.get("Config") or {}
    return Container(
        id=str(body.get("Id", "")),
        names=(str(body.get("Name", "")),),
        image=str(cfg.get("Image") or ""),
        image_id=str(body.get("Image") or ""),
        labels={str(k): str(v) for k, v in (cfg.get("Labels") or {}).items()},
        network_mode=str(hc.get("NetworkMode") or ""),
        requested=bindings(hc.get("PortBindings")),
        exposed=tuple(port_key(p) for p in (cfg.get("ExposedPorts") or {})),
        cpus=cpus_of(hc),
        memory=int(hc.get("Memory") or 0),
    )


def from_list(item: Mapping[str, Any], known: Container) -> Container:
    """A container as the engine's list shows it now, on top of what its inspect taught."""
    published = tuple(
        Binding(str(p.get("IP") or ""), str(p["PublicPort"]), str(p.get("Type") or "tcp"))
        for p in item.get("Ports") or []
        if isinstance(p, dict) and p.get("PublicPort")
    )
    return attrs.evolve(
        known,
        names=tuple(str(n) for n in item.get("Names") or []) or known.names,
        image=str(item.get("Image") or known.image),
        image_id=str(item.get("ImageID") or known.image_id),
        labels={str(k): str(v) for k, v in (item.get("Labels") or {}).items()},
        state=str(item.get("State") or ""),
        network_mode=str((item.get("HostConfig") or {}).get("NetworkMode") or known.network_mode),
        published=published,
    )


def reschedulable(item: Mapping[str, Any]) -> bool:
    """Whether a container (its list entry, inspect ``Config``, create body or record's ``labels`` holder)
    carries the ``on-node-failure`` policy in ``com.docker.swarm.reschedule-policies``."""
    labels = item.get("Labels") or {}
    try:
        policies = json.loads(str(labels.get(_POLICIES, "[]")))
    except ValueError:
        return False
    return isinstance(policies, list) and ON_NODE_FAILURE in policies
