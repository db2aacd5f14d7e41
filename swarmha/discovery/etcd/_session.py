"""A :class:`~swarmha.discovery.Session` on etcd: one lease of ``ceil(ttl)`` seconds.

etcd leases are whole seconds, and the server raises a TTL below its minimum (1.5 x the election timeout, ~ 2 s
by default) to that minimum: a key can outlive ``ttl`` by that much. ``keepalive`` is one ``LeaseKeepAlive``
round trip and raises :class:`~swarmha.errors.SessionExpired` when the server reports the lease gone (TTL <= 0);
``revoke`` deletes every key of the lease in one write. A ticket (``EtcdDiscovery.prepare``) is a lease granted
ahead of a claim; :meth:`EtcdSession.fresh_for_claim` replaces it when older than :data:`TICKET_AGE` x ttl.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

from pyetcd import etcdrpc

from swarmha.discovery._base import Session
from swarmha.discovery.etcd._client import Client, Endpoint, log
from swarmha.errors import DiscoveryError, DiscoveryUnavailable, SessionExpired

__all__ = ["TICKET_AGE", "EtcdSession"]

#: A ticket's lease is used for a claim while younger than this share of its ttl (see EtcdDiscovery.prepare).
TICKET_AGE = 1.0 / 6.0


class EtcdSession(Session):
    """An etcd lease; see the module docstring. A *ticket* (``ticket=True``) notes when its TTL started."""

    def __init__(self, client: Client, ttl: float, *, ticket: bool = False) -> None:
        self._client = client
        self.ttl = ttl
        self._closed = False
        self.ticket = ticket
        self._grant()

    def _grant(self) -> None:
        """Get a new lease from etcd (a ticket notes, in ``clock``, when the lease's TTL clock started)."""
        request = etcdrpc.LeaseGrantRequest(TTL=max(1, math.ceil(self.ttl)))
        sent = time.monotonic()
        response = self._client.call(
            "lease grant", lambda ep, t, md: ep.lease.LeaseGrant(request, timeout=t, metadata=md)
        )
        if response.error:
            raise DiscoveryError(f"etcd refused a lease of {request.TTL}s: {response.error}")
        self.lease_id = int(response.ID)
        self.granted_ttl = int(response.TTL)
        self.id = f"{self.lease_id:x}"
        if self.ticket:
            self.clock = sent  # the server starts the lease's TTL after this
        if self.granted_ttl > request.TTL:
            log.warning("etcd granted lease %s a TTL of %ds instead of %ds", self.id, self.granted_ttl, request.TTL)

    def fresh_for_claim(self) -> None:
        """A ticket whose lease is older than ``TICKET_AGE * ttl`` takes a new lease (the old one holds no key
        and expires on its own): a claim never starts a term more than that far into its lease."""
        if self.clock is not None and time.monotonic() - self.clock > TICKET_AGE * self.ttl:  # set: a ticket
            self._grant()

    def keepalive(self) -> None:
        if self._closed:
            raise SessionExpired(f"lease {self.id} was closed")
        request = etcdrpc.LeaseKeepAliveRequest(ID=self.lease_id)

        def refresh(ep: Endpoint, timeout: float, md: Any) -> Any:
            call = ep.lease.LeaseKeepAlive(iter([request]), timeout=timeout, metadata=md)
            try:
                return next(call, None)
            finally:
                call.cancel()

        timeout = min(self._client.timeout, max(0.5, 2.0 * self.ttl / 3.0))
        response = self._client.call("lease keepalive", refresh, timeout=timeout)
        if response is None:
            raise DiscoveryUnavailable(f"etcd closed the keepalive stream of lease {self.id} without an answer")
        if response.TTL <= 0:
            raise SessionExpired(f"lease {self.id} expired")

    def revoke(self) -> None:
        """Revoke the lease (etcd deletes its keys in the same write); raise if etcd was not reached.

        Marks the session closed first, whatever happens. A lease etcd no longer knows (expired) is not an
        error: its keys are gone already.
        """
        self._closed = True
        request = etcdrpc.LeaseRevokeRequest(ID=self.lease_id)
        with contextlib.suppress(SessionExpired):
            self._client.call("lease revoke", lambda ep, t, md: ep.lease.LeaseRevoke(request, timeout=t, metadata=md))

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.revoke()
        except DiscoveryError as e:
            log.debug("lease %s not revoked (it expires with its TTL): %s", self.id, e)
