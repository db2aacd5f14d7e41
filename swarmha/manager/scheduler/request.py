"""A create request as the scheduler reads it: Swarm's ``BuildContainerConfig``.

Scheduling expressions come from ``Env`` entries (``constraint:…``, ``affinity:…``, ``whitelist:…``,
``reschedule:…``) and from the labels docker-compose writes (``com.docker.swarm.constraints``,
``com.docker.swarm.affinities``, ``com.docker.swarm.whitelists``, ``com.docker.swarm.reschedule-policies``, each
a JSON list of strings). As in Swarm, the Env entries are taken out of the Env the engine gets and stored in
those labels, so a container's own labels carry everything needed to schedule it again (rescheduling).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from swarmha.manager.scheduler.node import SWARM_ID, Binding, bindings, port_key

__all__ = ["LABEL_NS", "RESCHEDULE_POLICIES", "Request", "SchedulingError"]

LABEL_NS = "com.docker.swarm"
RESCHEDULE_POLICIES = ("off", "on-node-failure")
_KINDS = {"constraint": "constraints", "affinity": "affinities", "whitelist": "whitelists"}
_RESCHEDULE = "reschedule-policies"


class SchedulingError(Exception):
    """No node can take the container; the message is the one the client sees (Swarm's texts)."""


def _label_list(labels: Mapping[str, str], kind: str) -> list[str]:
    raw = labels.get(f"{LABEL_NS}.{kind}")
    if raw is None:
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        return []  # as Swarm: a label that is not a JSON list is ignored
    return [str(x) for x in value] if isinstance(value, list) else []


def cpus_of(host_config: Mapping[str, Any]) -> float:
    """CPUs a container reserves: ``CpuShares`` counted as CPUs (Swarm's ``-c``) plus ``NanoCpus`` (``--cpus``)."""
    return float(host_config.get("CpuShares") or 0) + float(host_config.get("NanoCpus") or 0) / 1e9


@attrs.frozen
class Request:
    """What the filters and strategies look at in one create request (see the module docstring)."""

    env: tuple[str, ...]
    labels: Mapping[str, str]
    image: str = ""
    constraints: tuple[str, ...] = ()
    affinities: tuple[str, ...] = ()
    whitelists: tuple[str, ...] = ()
    reschedule: tuple[str, ...] = ()
    cpus: float = 0.0
    memory: int = 0
    network_mode: str = ""
    port_bindings: tuple[Binding, ...] = ()
    exposed: tuple[str, ...] = ()
    links: tuple[str, ...] = ()  # as given: ``name:alias``
    volumes_from: tuple[str, ...] = ()  # as given: ``name:ro``
    slots: str = ""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Request:
        """Parse a ``POST /containers/create`` body (never fails: bad expressions fail in their filter)."""
        labels = {str(k): str(v) for k, v in (config.get("Labels") or {}).items()}
        lists: dict[str, list[str]] = {kind: _label_list(labels, kind) for kind in (*_KINDS.values(), _RESCHEDULE)}
        env: list[str] = []
        for entry in (str(x) for x in (config.get("Env") or [])):
            key, sep, value = entry.partition(":")
            if sep and key in _KINDS:
                lists[_KINDS[key]].append(value)
            elif sep and key == "reschedule":
                lists[_RESCHEDULE].append(value)
            else:
                env.append(entry)
        for kind, values in lists.items():
            if values:
                labels[f"{LABEL_NS}.{kind}"] = json.dumps(values)
        hc = config.get("HostConfig") or {}
        volumes_from = tuple(str(v) for v in hc.get("VolumesFrom") or [])
        links = tuple(str(v) for v in hc.get("Links") or [])
        return cls(
            env=tuple(env),
            labels=labels,
            image=str(config.get("Image") or ""),
            constraints=tuple(lists["constraints"]),
            affinities=tuple(lists["affinities"]),
            whitelists=tuple(lists["whitelists"]),
            reschedule=tuple(lists[_RESCHEDULE]),
            cpus=cpus_of(hc),
            memory=int(hc.get("Memory") or 0),
            network_mode=str(hc.get("NetworkMode") or ""),
            port_bindings=bindings(hc.get("PortBindings")),
            exposed=tuple(port_key(p) for p in (config.get("ExposedPorts") or {})),
            links=links,
            volumes_from=volumes_from,
            slots=labels.get(f"{LABEL_NS}.slots", ""),
        )

    @property
    def swarm_id(self) -> str:
        return str(self.labels.get(SWARM_ID, ""))

    def validate(self) -> None:
        """Swarm's ``Validate``: at most one reschedule policy, ``off`` or ``on-node-failure``."""
        if len(self.reschedule) > 1:
            raise SchedulingError("too many reschedule policies")
        if self.reschedule and self.reschedule[0] not in RESCHEDULE_POLICIES:
            raise SchedulingError(f"invalid reschedule policy: {self.reschedule[0]}")

    def has_reschedule_policy(self, policy: str) -> bool:
        return policy in self.reschedule
