"""Docker API words shared by the resource modules: the version prefix, filters, ``node/name``, errors.

Nothing here does I/O. :func:`split_version` takes ``/v1.41/containers/json`` apart; :func:`check_version`
refuses a version outside what the engines support with dockerd's own 400 messages; :func:`parse_filters`
reads the ``filters`` query parameter in both shapes the clients send (``{"k": {"v": true}}`` and
``{"k": ["v"]}``) and raises ValueError for anything else. :func:`json_object` parses a request body the way
Go's decoder would accept it: out-of-range numbers (``1e400``), ``NaN`` and nesting deeper than Python's
recursion limit are a 400, never a Python error.
"""

from __future__ import annotations

import functools
import json
import math
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode

__all__ = [
    "MIN_API_VERSION",
    "DockerError",
    "check_version",
    "encode_filters",
    "error_body",
    "parse_filters",
    "replace_query",
    "split_version",
    "vkey",
]

#: The oldest API version the manager accepts when the engines do not say (dockerd 20.10's minimum).
MIN_API_VERSION = "1.12"
_VERSION = re.compile(r"/v([0-9]+(?:\.[0-9]+)?)(?=/)")


class DockerError(Exception):
    """Answered as ``status {"message": message}`` (raised anywhere below a route handler)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def error_body(status: int, message: str) -> tuple[bytes, str]:
    """The Docker API error shape, ``{"message": "..."}`` (the manager's :data:`~swarmha.manager.http.ErrorBody`)."""
    return json.dumps({"message": message}).encode() + b"\n", "application/json"


def vkey(v: str) -> tuple[int, ...]:
    """``"1.41"`` -> ``(1, 41)``; ``(0,)`` for what is not a version."""
    try:
        return tuple(int(x) for x in v.split("."))
    except ValueError:
        return (0,)


#: Paths up to this long are cached by :func:`split_version` (so the cache holds at most 4,096 paths of this length).
_CACHED_PATH = 256


def split_version(path: str) -> tuple[str | None, str]:
    """``/v1.41/containers/json`` -> ``("1.41", "/containers/json")``; no prefix: ``(None, path)``.

    Repeated slashes collapse first (``//containers/json`` is ``/containers/json``, as Go's path cleaning
    makes it for dockerd), so a doubled slash never shifts the route. Called on every request, for the same
    few paths mostly: the answers for paths up to :data:`_CACHED_PATH` characters are cached (a regex match
    costs more than the cache's lookup), at most 4,096 of them, so the cache stays under ~2 MB whatever
    paths clients send.
    """
    if len(path) <= _CACHED_PATH:
        return _split_cached(path)
    return _split_version(path)


@functools.lru_cache(maxsize=4096)
def _split_cached(path: str) -> tuple[str | None, str]:
    return _split_version(path)


def _split_version(path: str) -> tuple[str | None, str]:
    if "//" in path:
        path = re.sub("/{2,}", "/", path)
    m = _VERSION.match(path)
    if m is None:
        return None, path
    return m.group(1), path[m.end() :]


def check_version(version: str | None, minimum: str, maximum: str) -> None:
    """DockerError(400) with dockerd's wording when ``version`` is outside ``minimum..maximum``."""
    if version is None:
        return
    if vkey(version) > vkey(maximum):
        raise DockerError(400, f"client version {version} is too new. Maximum supported API version is {maximum}")
    if vkey(version) < vkey(minimum):
        raise DockerError(
            400,
            f"client version {version} is too old. Minimum supported API version is {minimum}, "
            "please upgrade your client to a newer version",
        )


def parse_filters(raw: str) -> dict[str, list[str]]:
    """The ``filters`` query parameter as ``{key: [values]}`` (DockerError 400 when malformed)."""
    if not raw:
        return {}
    obj = json_object(raw, "filters")
    out: dict[str, list[str]] = {}
    for k, v in obj.items():
        if isinstance(v, dict):
            out[str(k)] = [str(x) for x, on in v.items() if on]
        elif isinstance(v, list):
            out[str(k)] = [str(x) for x in v]
        else:
            raise DockerError(400, f"invalid filters: the value of {k!r} must be an object or a list")
    return out


def encode_filters(filters: dict[str, list[str]]) -> str:
    return json.dumps({k: {v: True for v in vs} for k, vs in filters.items() if vs})


def replace_query(query: str, **changes: str | None) -> str:
    """``query`` with each named parameter replaced (None: removed)."""
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in changes]
    pairs += [(k, v) for k, v in changes.items() if v is not None]
    return urlencode(pairs)


def with_query(path: str, query: str) -> str:
    return f"{path}?{query}" if query else path


def json_object(raw: bytes | str, what: str) -> dict[str, Any]:
    """``raw`` (a body or a query parameter) parsed as a JSON object; DockerError 400 naming ``what`` otherwise
    (empty is ``{}``)."""
    try:
        obj = json.loads(raw or b"{}", parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise DockerError(400, f"invalid {what}: JSON nested too deeply") from None
    except ValueError as e:
        raise DockerError(400, f"invalid {what}: {e}") from e
    if not isinstance(obj, dict):
        raise DockerError(400, f"invalid {what}: expected a JSON object")
    return obj


def _finite(literal: str) -> float:
    """A JSON number as a float; ValueError when it does not fit one (``1e400``), as Go's decoder refuses it."""
    value = float(literal)
    if value in (math.inf, -math.inf):
        raise ValueError(f"json: cannot unmarshal number {literal} into a float64 (out of range)")
    return value


def _no_constant(literal: str) -> Any:
    """``NaN``, ``Infinity``: not JSON (Python's parser takes them; Go's does not)."""
    raise ValueError(f"invalid character {literal[0]!r} looking for beginning of value")
