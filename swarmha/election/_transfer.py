"""Handing the key to one named candidate: the part of a :class:`~swarmha.election._campaign.Campaign` that
TRANSFER drives (the keys it writes are :mod:`swarmha.election._control`'s).

:meth:`Transfers.transfer` records a :class:`~swarmha.election._control.Handoff` and interrupts the campaign; on
the engine, TRANSFER marks the key for the target (``K.election/transfer``, bound to the term's session, so a
dead leader's marker goes within ``ttl``) and ends the term like RESIGN. While the transfer lasts the old leader
does not claim: it watches the key until the target holds it with a larger token (True) or the transfer's
deadline passes (False: the marker goes and the old leader campaigns again, the key open to all). Failure modes:
a store error while marking ends the transfer with False (the error is retried as any step's); the marker's
removal is best effort (it goes with its session in any case).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from swarmha.discovery._base import check_ttl
from swarmha.election._control import Handoff, Steering
from swarmha.election._lease import Held, Lease
from swarmha.election._phases import Phase, Signal
from swarmha.election._values import Term
from swarmha.election._worker import Steps, _Worker
from swarmha.errors import ConfigurationError, DiscoveryError

__all__ = ["Transfers"]

log = logging.getLogger("swarmha.election")


class Transfers(_Worker):
    """The transfer half of a Campaign (a base class of it; the campaign sets these fields and the methods below
    that it calls)."""

    node: str
    lease: Lease
    _lock: threading.RLock
    _steer: Steering
    _phase: Phase
    _lead: Held | None
    _transfer: Handoff | None
    _request: Signal | None
    _holdoff_until: float

    @property
    def term(self) -> Term | None:
        raise NotImplementedError

    def _end_gracefully(self, signal: Signal, reason: str, back: int | None = None) -> bool:
        raise NotImplementedError

    def transfer(self, to: str, timeout: float, back: int | None = None) -> Handoff:
        """Hand the key to the waiting candidate ``to``; returns the :class:`Handoff`, decided by the machine
        (``done`` set, ``result`` True once ``to`` leads with a larger token) no later than ``timeout`` from now.

        Raises ConfigurationError when this candidate does not lead, ``to`` is itself or not a node, or another
        transfer is under way. ``back``: the consumer thread that waits for the outcome (see :meth:`stop`)."""
        if not isinstance(to, str) or not to:
            raise ConfigurationError(f"transfer() needs the node of a candidate, not {to!r}")
        timeout = check_ttl(timeout, "timeout")
        with self._lock:
            lead = self._lead
            if self.term is None or lead is None:
                raise ConfigurationError(f"transfer() is for the leader: {self.node} does not lead {self.key!r}")
            if to == self.node:
                raise ConfigurationError(f"transfer() to {to!r}: that is this candidate")
            if self._transfer is not None:
                raise ConfigurationError(f"a transfer to {self._transfer.to} is under way")
            handoff = self._transfer = Handoff(to, time.monotonic() + timeout, lead.term.token, back)
            self._request = Signal.TRANSFER
        self._interrupt()
        return handoff

    def _begin_transfer(self) -> None:
        """TRANSFER: mark the key for the target (bound to the term's session), then end the term gracefully."""
        handoff, lead = self._transfer, self._lead
        if handoff is None:
            return
        if lead is None or self._phase is not Phase.LEADING:
            self._decide(handoff, False, "the term ended before the transfer began")
            return
        try:
            handoff.session = lead.session
            handoff.marker = self._steer.mark(handoff.to, lead.session)
        except DiscoveryError as e:
            self._decide(handoff, False, f"could not mark the key for the transfer: {e}")
            raise
        log.info("%s: %s transfers the key to %s", self.key, self.node, handoff.to)
        with self._lock:
            self._end_gracefully(Signal.TRANSFER, f"transferred to {handoff.to}", back=handoff.back)

    def _decide(self, handoff: Handoff, result: bool, why: str) -> None:
        """The transfer is over: remove its marker (and a private lease's session that carried it); tell the caller."""
        with self._lock:
            if self._transfer is handoff:
                self._transfer = None
                self._holdoff_until = 0.0
        try:
            if handoff.marker is not None:
                with contextlib.suppress(DiscoveryError):  # it goes with the session in any case
                    self._steer.unmark(handoff.marker)
            if handoff.session is not None and self.lease.private and self._lead is None:
                self.lease.drop(handoff.session)
        finally:
            handoff.result = result
            handoff.done.set()
        log.info(
            "%s: transfer from %s to %s %s", self.key, self.node, handoff.to, "done" if result else f"failed: {why}"
        )

    def _transfer_step(self, handoff: Handoff) -> Steps:
        """The old leader while its transfer lasts: no claim; decided when ``to`` leads with a larger token
        (True) or at the deadline (False: then this candidate campaigns again, the key open to all)."""
        record = yield from self._await(lambda: self._d.get_async(self.key))
        now = time.monotonic()
        if record is not None and record.value == handoff.to and record.token > handoff.from_token:
            self._decide(handoff, True, "")
            return
        if now >= handoff.deadline or self._stopping:
            self._decide(handoff, False, "the target did not take the key in time")
            return
        with self._d.watch(self.key, record) as watch:
            yield from self._wait_on(watch, handoff.deadline - now)
