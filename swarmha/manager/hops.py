"""The ``X-Swarmha-Forwarded`` header: what a manager marks on a request it forwards, and what a received one claims.

A manager that forwards a request names, in :data:`FORWARDED`, the fencing token of the term it saw its target
lead. The receiver believes the claim only if it names a term the receiver itself led (a client that writes the
header names no such term, so its request is routed as any client's), and then sends the request on only to a
*newer* term: every hop goes to a strictly later primary, so no request circles between managers that disagree
for a moment about who leads. The header is removed before anything reaches an engine.
"""

from __future__ import annotations

from collections.abc import Collection

from swarmha.manager.http import Exchange

__all__ = ["FORWARDED", "claim", "mark", "take"]

FORWARDED = "x-swarmha-forwarded"
_RAW = FORWARDED.encode()
_LEN = len(_RAW)


def take(ex: Exchange) -> bytes | None:
    """The value of ``ex``'s :data:`FORWARDED` header (None without one), the header removed."""
    headers = ex.headers
    if not any(len(name) == _LEN and name.lower() == _RAW for name, _ in headers):
        return None  # the common case: one pass, nothing built
    value = b""
    kept = []
    for name, raw in headers:
        if name.lower() == _RAW:
            value = raw
        else:
            kept.append((name, raw))
    ex.headers[:] = kept
    return value


def claim(raw: bytes | None, led: Collection[int]) -> int | None:
    """The term a forwarding manager believed the receiver to lead, or None: no claim, or one naming a term
    not in ``led`` (the terms the receiver led lately: a claim naming another is a client's header)."""
    if not raw:
        return None
    try:
        token = int(raw)
    except ValueError:
        return None
    return token if token in led else None


def mark(ex: Exchange, token: int) -> None:
    """Name the term ``ex`` is sent to in its :data:`FORWARDED` header (replacing any)."""
    ex.headers[:] = [(n, v) for n, v in ex.headers if n.lower() != _RAW] + [(_RAW, b"%d" % token)]
