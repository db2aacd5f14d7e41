"""The types of the ``POST /containers/create`` fields the manager reads, checked as dockerd's decoder checks them.

The primary reads a create body before any engine does (placement: labels, environment, resources, ports,
links, volumes, networks), so a wrongly typed field must be refused here with dockerd's own 400 rather than
trip the manager's code. :func:`check_create` raises
``DockerError(400, "json: cannot unmarshal string into Go struct field HostConfig.Memory of type int64")``
(Go's wording) for the first field of the wrong type; ``null`` is every field's zero value, as in Go. Fields
the manager does not read are left for the engine to judge.
"""

from __future__ import annotations

from typing import Any

from swarmha.manager.api._docker import DockerError

__all__ = ["check_create"]

_INT64 = (-(1 << 63), (1 << 63) - 1)

# A type is a Go type name (a leaf), ("struct", name, {field: type}), ("map", type) for a map[string]T, or
# ("list", type) for a []T.
_PORT_BINDING = ("struct", "PortBinding", {"HostIp": "string", "HostPort": "string"})
_MOUNT = ("struct", "Mount", {"Type": "string", "Source": "string", "Target": "string"})
_HOST_CONFIG = (
    "struct",
    "HostConfig",
    {
        "Memory": "int64",
        "MemoryReservation": "int64",
        "MemorySwap": "int64",
        "CpuShares": "int64",
        "NanoCpus": "int64",
        "NetworkMode": "string",
        "PortBindings": ("map", ("list", _PORT_BINDING)),
        "VolumesFrom": ("list", "string"),
        "Links": ("list", "string"),
        "Binds": ("list", "string"),
        "Mounts": ("list", _MOUNT),
    },
)
_CREATE: tuple[Any, ...] = (
    "struct",
    "ContainerConfigWrapper",
    {
        "Image": "string",
        "Env": ("list", "string"),
        "Labels": ("map", "string"),
        "ExposedPorts": ("map", ("struct", "struct", {})),
        "HostConfig": _HOST_CONFIG,
        "NetworkingConfig": (
            "struct",
            "NetworkingConfig",
            {"EndpointsConfig": ("map", ("struct", "EndpointSettings", {}))},
        ),
    },
)


def check_create(config: dict[str, Any]) -> None:
    """DockerError 400 naming the first field of ``config`` (a parsed create body) whose type is wrong."""
    _check(config, _CREATE, "ContainerConfigWrapper")


def _check(value: Any, kind: Any, field: str) -> None:
    """``value`` against ``kind``; ``field`` is how Go names the field in its error (``HostConfig.Memory``)."""
    if value is None:
        return
    if kind == "string":
        if not isinstance(value, str):
            _refuse(value, field, "string")
    elif kind == "int64":
        if isinstance(value, bool) or not isinstance(value, int) or not _INT64[0] <= value <= _INT64[1]:
            _refuse(value, field, "int64")
    elif kind[0] == "struct":
        if not isinstance(value, dict):
            _refuse(value, field, kind[1])
        for name, inner in kind[2].items():
            _check(value.get(name), inner, f"{kind[1]}.{name}")
    elif kind[0] == "map":
        if not isinstance(value, dict):
            _refuse(value, field, _go_type(kind))
        for item in value.values():
            _check(item, kind[1], field)
    elif not isinstance(value, list):  # a list
        _refuse(value, field, _go_type(kind))
    else:
        for item in value:
            _check(item, kind[1], field)


def _go_type(kind: Any) -> str:
    if isinstance(kind, str):
        return kind
    if kind[0] == "struct":
        return str(kind[1])
    return ("map[string]" if kind[0] == "map" else "[]") + _go_type(kind[1])


def _refuse(value: Any, field: str, go_type: str) -> None:
    if isinstance(value, bool):
        what = "bool"
    elif isinstance(value, int | float):
        what = f"number {value!r}"
    elif isinstance(value, str):
        what = "string"
    elif isinstance(value, list):
        what = "array"
    else:
        what = "object"
    raise DockerError(400, f"json: cannot unmarshal {what} into Go struct field {field} of type {go_type}")
