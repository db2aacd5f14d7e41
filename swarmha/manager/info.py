"""What ``docker info`` shows through a manager: the engines' totals plus Swarm's ``SystemStatus`` lines.

The stock docker CLI prints every ``SystemStatus`` pair as ``key: value``; Swarm classic put the manager's role,
the primary, the strategy, the filters and one block per engine there, and so does this module.
"""

from __future__ import annotations

import platform
import socket
from typing import Any

import swarmha
from swarmha.manager.cluster import FILTERS as _DEFAULT_FILTERS
from swarmha.manager.cluster import Cluster, Engine

__all__ = ["FILTERS", "bytes_size", "cluster_info", "system_status"]

#: The placement filters a manager applies by default (Swarm's set and order; ``--filter`` chooses others).
FILTERS = ", ".join(_DEFAULT_FILTERS)
#: The server version ``docker version`` and ``docker info`` show: Swarm classic's form (``swarm/X.Y.Z``, which
#: clients and scripts recognise as a Swarm-classic manager) of the last Swarm release it stands in for, naming
#: swarmha and its version as the build metadata.
SERVER_VERSION = f"swarm/1.2.9+swarmha-{swarmha.__version__}"


def bytes_size(n: float) -> str:
    """Binary sizes as Docker prints them: ``2.053 GiB``, ``0 B``."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    value = float(n)
    i = 0
    while value >= 1024 and i < len(units) - 1:
        value /= 1024
        i += 1
    return f"{value:.4g} {units[i]}"


def _engine_lines(e: Engine) -> list[list[str]]:
    labels = ", ".join(f"{k}={v}" for k, v in sorted(e.labels.items())) if e.info else ""
    return [
        [" " + e.name, e.addr],
        ["  └ ID", e.id],
        ["  └ Status", e.status],
        ["  └ Containers", f"{e.containers} ({e.running} Running, {e.paused} Paused, {e.stopped} Stopped)"],
        ["  └ Reserved CPUs", f"{e.reserved_cpus:g} / {e.ncpu}"],
        ["  └ Reserved Memory", f"{bytes_size(e.reserved_memory)} / {bytes_size(e.memory)}"],
        ["  └ Labels", labels],
        ["  └ Error", e.error or "(none)"],
        ["  └ UpdatedAt", e.updated_at.strftime("%Y-%m-%dT%H:%M:%SZ") if e.updated_at else ""],
        ["  └ ServerVersion", str(e.info.get("ServerVersion", ""))],
    ]


def system_status(
    role: str,
    primary: str,
    strategy: str,
    engines: list[Engine],
    store: str | None = None,
    filters: str = FILTERS,
    priority: int | None = None,
) -> list[list[str]]:
    """The ``SystemStatus`` pairs: Role, Primary, (Store), Strategy, Filters, Nodes, then one block per engine.

    ``priority``: the answering manager's ``--priority`` (None, without replication: the line is left out).
    ``store``: the discovery store's state (``reachable`` or ``unreachable for ...``); None leaves the line out.
    ``filters``: the active placement filters (the ``Filters:`` line). ``Reserved CPUs: x / n`` and ``Reserved
    Memory: x / total`` sum what the engine's containers reserve (``-c``/``--cpu-shares`` counted as CPUs, as
    Swarm did, plus ``--cpus``; ``-m``), stopped ones included.
    """
    pairs = [["Role", role], ["Primary", primary]]
    if priority is not None:
        pairs.append(["Priority", str(priority)])
    if store is not None:
        pairs.append(["Store", store])
    pairs += [["Strategy", strategy], ["Filters", filters]]
    pairs.append(["Nodes", str(len(engines))])
    for e in engines:
        pairs += _engine_lines(e)
    return pairs


def cluster_info(
    cluster: Cluster,
    role: str,
    primary: str,
    manager_id: str,
    store: str | None = None,
    priority: int | None = None,
) -> dict[str, Any]:
    """The ``/info`` body for the whole cluster as seen by this manager."""
    engines = cluster.engines
    healthy = [e for e in engines if e.healthy]
    return {
        "ID": manager_id,
        "Name": socket.gethostname(),
        "Containers": sum(e.containers for e in healthy),
        "ContainersRunning": sum(e.running for e in healthy),
        "ContainersPaused": sum(e.paused for e in healthy),
        "ContainersStopped": sum(e.stopped for e in healthy),
        "Images": sum(int(e.info.get("Images") or 0) for e in healthy),
        "Driver": "",
        "DriverStatus": None,
        "SystemStatus": system_status(
            role, primary, cluster.strategy, engines, store, filters=cluster.scheduler.filter_names, priority=priority
        ),
        "Plugins": {"Volume": None, "Network": None, "Authorization": None, "Log": None},
        "MemoryLimit": True,
        "SwapLimit": True,
        "CpuCfsPeriod": True,
        "CpuCfsQuota": True,
        "CPUShares": True,
        "CPUSet": True,
        "IPv4Forwarding": True,
        "Debug": False,
        "NFd": 0,
        "NGoroutines": 0,
        "SystemTime": "",
        "LoggingDriver": "",
        "CgroupDriver": "",
        "NEventsListener": 0,
        "KernelVersion": platform.release(),
        "OperatingSystem": platform.system(),
        "OSType": "linux",
        "Architecture": platform.machine(),
        "IndexServerAddress": "",
        "RegistryConfig": None,
        "NCPU": sum(e.ncpu for e in healthy),
        "MemTotal": sum(e.memory for e in healthy),
        "DockerRootDir": "",
        "HttpProxy": "",
        "HttpsProxy": "",
        "NoProxy": "",
        "Labels": [],
        "ExperimentalBuild": False,
        "ServerVersion": SERVER_VERSION,
        "Runtimes": {},
        "DefaultRuntime": "",
        "Swarm": {"LocalNodeState": "inactive", "NodeID": "", "NodeAddr": "", "ControlAvailable": False},
        "LiveRestoreEnabled": False,
        "Isolation": "",
        "InitBinary": "",
        "SecurityOptions": [],
        "Warnings": None,
    }
