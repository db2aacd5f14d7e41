"""Consul sessions: the TTL rules (``ttl/2``, the servers' bounds) and :class:`ConsulSession`.

A session is created with ``Behavior=delete`` and ``LockDelay=0s`` and the agent's default ``serfHealth``
check; see the package docstring for why its TTL is ``ttl/2``.
"""

from __future__ import annotations

import contextlib
import json

from swarmha._duration import go_duration
from swarmha.discovery._base import Session, check_ttl
from swarmha.discovery.consul._client import Client, decode
from swarmha.errors import ConfigurationError, DiscoveryError, SessionExpired

__all__ = ["SESSION_TTL_MAX", "SESSION_TTL_MIN", "TTL_MULTIPLIER", "ConsulSession", "session_ttl_for"]

#: Consul's default ``session_ttl_min`` server option and its fixed maximum session TTL (seconds).
SESSION_TTL_MIN = 10.0
SESSION_TTL_MAX = 86400.0
#: Consul invalidates a TTL session this many TTLs after its last renewal (``structs.SessionTTLMultiplier``).
TTL_MULTIPLIER = 2.0


def session_ttl_for(ttl: float, session_ttl_min: float = SESSION_TTL_MIN) -> float:
    """The Consul session TTL used for a swarmha ``ttl`` (``ttl/2``); ConfigurationError if Consul would refuse it."""
    ttl = check_ttl(ttl)
    session_ttl = ttl / TTL_MULTIPLIER
    if not session_ttl_min <= session_ttl <= SESSION_TTL_MAX:
        raise ConfigurationError(
            f"ttl={ttl:g}s needs a Consul session TTL of ttl/2 = {session_ttl:g}s, but Consul accepts session TTLs "
            f"between session_ttl_min={session_ttl_min:g}s and {SESSION_TTL_MAX:g}s, so ttl must lie between "
            f"{session_ttl_min * TTL_MULTIPLIER:g}s and {SESSION_TTL_MAX * TTL_MULTIPLIER:g}s (Consul invalidates a "
            f"session up to 2x its TTL after the last renewal, so swarmha asks for ttl/2). If your servers run with "
            f"a lower session_ttl_min, say so in the URL: ?session_ttl_min=5s"
        )
    return session_ttl


class ConsulSession(Session):
    """A Consul session of TTL ``session_ttl`` (``ttl/2``), created on construction through ``client``."""

    def __init__(self, client: Client, ttl: float, session_ttl: float, session_ttl_min: float) -> None:
        self._client = client
        self.ttl = ttl
        self.session_ttl = session_ttl
        self._closed = False
        body = {
            "Name": "swarmha",
            "TTL": go_duration(session_ttl),
            "Behavior": "delete",
            "LockDelay": "0s",
        }
        try:
            response = client.request("PUT", "/v1/session/create", content=json.dumps(body).encode())
        except DiscoveryError as e:
            if "session ttl" in str(e).lower():
                raise ConfigurationError(
                    f"consul refused a session TTL of {session_ttl:g}s (ttl={ttl:g}s): {e}. The servers' "
                    f"session_ttl_min is higher than the URL's session_ttl_min={session_ttl_min:g}s; ttl must be "
                    f"at least 2 x the servers' session_ttl_min (Consul's default: 10s, so ttl >= 20s)"
                ) from e
            raise
        if response.status_code == 404:
            raise DiscoveryError(f"consul has no session API at {response.request.url.host} (404)")
        data = decode(response, "session create")
        if not isinstance(data, dict) or not isinstance(data.get("ID"), str):
            raise DiscoveryError(f"consul answered session create without an ID: {data!r}")
        self.id = data["ID"]

    def keepalive(self) -> None:
        if self._closed:
            raise SessionExpired(f"session {self.id} was closed")
        response = self._client.request("PUT", f"/v1/session/renew/{self.id}")
        if response.status_code == 404:
            raise SessionExpired(f"consul session {self.id} expired or was destroyed")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(DiscoveryError):
            self._client.request("PUT", f"/v1/session/destroy/{self.id}")
