"""The election's backoff: 20 ms doubling plus up to 50 ms of jitter, capped per caller (a :class:`Backoff`).

Every failed step of a campaign or follow and every failed lease renewal waits :func:`backoff` before its next
try; the cap is ``min(1 s, ttl/6)`` for a campaign and ``ttl/6`` for a lease's renewals (so several retries
fit in the renew deadline), 1 s for a follow.
"""

from __future__ import annotations

from swarmha._backoff import Backoff

__all__ = ["FIRST", "JITTER", "backoff"]

#: Seconds before the first retry, and the most jitter added to every retry.
FIRST, JITTER = 0.02, 0.05


def backoff(attempt: int, cap: float) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...): ``min(cap, 0.02 * 2**(attempt-1) + U(0, 0.05))``."""
    return Backoff(first=FIRST, cap=cap, jitter=JITTER).delay(attempt)
