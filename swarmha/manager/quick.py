"""List, inspect and ``/_ping`` answered straight from the HTTP protocol (the server's ``quick``).

``docker ps`` and ``docker inspect`` are most of what clients ask a manager, and every manager (the primary and
the replicas alike) answers them from its event-fed view (:mod:`swarmha.manager.view`). When that answer needs no
wait — every engine's view synced and nothing marked waiting to be fetched again, the request plain
(``GET /[vX.Y/]containers/json`` with the view's own list arguments, or ``GET /[vX.Y/]containers/ID/json``
without a query), an API version the engines accept, no forwarding mark — :class:`QuickAnswers` gives it to the
server (:class:`swarmha.manager.http.Server`'s ``quick``), which writes it at once: no exchange, no coroutine,
no task switch. The bytes are those the ordinary path sends (the same view, the same framing), so a client
cannot tell, except by the time. Anything else (a view to wait for, a query the engines answer, a percent-encoded
path, a version to refuse, …) is None: the request goes the ordinary way, which waits, asks the engines or
forwards exactly as before. The freshness guarantee is the view's: a write through this manager marks the view
before its answer reaches the client, so the client's next list is not answered here until it was fetched again.

``GET``/``HEAD /[vX.Y/]_ping`` (the docker CLI's first request of every command), which every manager answers
itself, is answered here too, with the same headers (:meth:`~swarmha.manager.api.PrimaryAPI.ping_headers`).

Metrics (``--metrics``): each answer is counted as the ordinary path counts it (route; primary, replica or
local; 200).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from swarmha.manager.api._docker import DockerError, split_version
from swarmha.manager.hops import FORWARDED
from swarmha.manager.http import Head

if TYPE_CHECKING:
    from swarmha.manager.api import PrimaryAPI
    from swarmha.manager.metrics import ManagerMetrics

__all__ = ["QuickAnswers"]

_JSON = b"application/json"
_TEXT = b"text/plain; charset=utf-8"
_FORWARDED = FORWARDED.encode()
_LEN = len(_FORWARDED)


class QuickAnswers:
    """The manager's ``quick`` (see the module docstring): ``(content type, body)`` or None."""

    def __init__(
        self,
        api: PrimaryAPI,
        is_primary: Callable[[], bool],
        stopping: Callable[[], bool],
        metrics: ManagerMetrics | None = None,
    ) -> None:
        self._api = api
        self._is_primary = is_primary
        self._stopping = stopping
        self._metrics = metrics
        self._ping: tuple[list[tuple[str, str]], bytes] = ([], b"")

    def __call__(self, head: Head) -> tuple[bytes, bytes, bytes] | None:
        method = head.method
        if (method != b"GET" and method != b"HEAD") or self._stopping():
            return None
        began = time.monotonic() if self._metrics is not None else 0.0
        route = _route(head.target)
        if route is None:
            return None
        for name, _value in head.headers:
            if len(name) == _LEN and name.lower() == _FORWARDED:
                return None  # another manager's request: the ordinary path reads its claim
        version, path, query = route
        api = self._api
        try:
            api.check_version(version)
        except DockerError:
            return None  # refused the ordinary way, in dockerd's words
        if path == "/_ping":
            got = _TEXT, b"OK", self._ping_headers()
            via = "local"
        elif method == b"HEAD":
            return None
        else:
            body = api.view.answer_now(path, query)
            if body is None:
                return None
            got = _JSON, body, b""
            via = "primary" if self._is_primary() else "replica"
        if self._metrics is not None:
            self._metrics.observe_request(path, via, 200, time.monotonic() - began)
        return got

    def _ping_headers(self) -> bytes:
        """``/_ping``'s extra header lines (:meth:`PrimaryAPI.ping_headers`), rebuilt when they change."""
        pairs = self._api.ping_headers()
        if pairs != self._ping[0]:
            self._ping = (pairs, b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in pairs))
        return self._ping[1]


@functools.lru_cache(maxsize=1024)
def _route(target: bytes) -> tuple[str | None, str, str] | None:
    """(API version, path without it, query) of a target answered here; None for any other."""
    text = target.decode("latin-1")
    if "%" in text or "#" in text:
        return None  # what the ordinary path decodes or cuts
    path, _, query = text.partition("?")
    version, path = split_version(path)
    if not path.startswith("/containers/") and path != "/_ping":
        return None
    return version, path, query
