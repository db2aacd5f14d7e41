"""The one backoff policy type: how long to wait before retry number n, for every retry loop of the library.

``Backoff(first, cap, jitter=0.0, factor=2.0).delay(n)`` is ``min(cap, first * factor**(n - 1) + U(0, jitter))``
seconds for retry ``n = 1, 2, ...``: exponential from ``first``, capped at ``cap`` (the jitter included), plus
uniform jitter so processes that failed together do not retry together. ``factor=1`` gives a constant delay
with jitter (``first`` to ``first + jitter``). It is a value (frozen, comparable), shared freely across threads;
the attempt count lives with the caller's loop. This module imports nothing of swarmha, so the discovery and the
election layers both use it.

The users and their policies: the election's steps and lease renewals (20 ms doubling, 50 ms jitter, capped at
``min(1 s, ttl/6)``, :mod:`swarmha.election._retry`); the threads that feed many watches after a break (50 ms
doubling to 500 ms, no jitter, :class:`swarmha.discovery._fed.Outage`); SQLite's open of a file another process is
switching to WAL (1-20 ms, :mod:`swarmha.discovery.sqlite`); the manager's engine views reconnecting (0.2 s
doubling to 5 s, :mod:`swarmha.manager.view.engine`).

Why not tenacity's ``wait_exponential_jitter``: it takes a ``RetryCallState`` (one had to be faked to ask it for a
number) and its formula is this one line; the retry loops here interleave their waits with other work (a
condition to wake on, a watch to park on), which tenacity's ``Retrying`` does not fit.

Bad input: a negative ``first``, ``cap`` or ``jitter``, a ``factor`` below 1, or an ``attempt`` below 1 raises
``ValueError`` naming the bad part.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs

__all__ = ["Backoff"]


def _not_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"Backoff {attribute.name} must be >= 0 seconds, got {value!r}")


def _at_least_one(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 1:
        raise ValueError(f"Backoff {attribute.name} must be >= 1, got {value!r}")


@attrs.frozen
class Backoff:
    """See the module docstring. ``first``: the delay before the first retry (without jitter); ``cap``: the
    longest delay; ``jitter``: up to this much is added at random; ``factor``: the growth per retry."""

    first: float = attrs.field(validator=_not_negative)
    cap: float = attrs.field(validator=_not_negative)
    jitter: float = attrs.field(default=0.0, validator=_not_negative)
    factor: float = attrs.field(default=2.0, validator=_at_least_one)

    def delay(self, attempt: int, uniform: Callable[[float, float], float] = random.uniform) -> float:
        """Seconds to wait before retry number ``attempt`` (1, 2, ...). ``uniform(a, b)`` draws the jitter."""
        if attempt < 1:
            raise ValueError(f"Backoff attempt must be >= 1, got {attempt!r}")
        try:
            grown = self.first * self.factor ** (attempt - 1)
        except OverflowError:
            grown = self.cap
        jitter = uniform(0.0, self.jitter) if self.jitter else 0.0
        return min(self.cap, grown + jitter)
