"""Values the election hands out: immutable, comparable, with a readable repr."""

from __future__ import annotations

import attrs

__all__ = ["Leader", "Term"]


@attrs.frozen
class Term:
    """One term of leadership: ``node`` led ``key`` with fencing ``token``.

    ``token`` strictly increases with every new term on a key, on every backend. Pass it to whatever the
    leader writes to, and have that system reject a token lower than the highest it has seen: that is what
    stops a deposed leader (paused, partitioned) from doing harm after a new one was elected.
    """

    key: str
    node: str
    token: int


@attrs.frozen
class Leader:
    """The leader a follower saw in the store: its node (address) and the token of its term."""

    node: str
    token: int
