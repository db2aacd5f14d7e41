"""Swarm's scheduling expressions: ``key==value``, ``key!=value``, soft with ``~`` (``key==~value``).

Values are globs (``ub*t*``: ``*`` is any run of characters, anchored at both ends) or, between slashes,
regular expressions (``/^node-[12]$/``, searched, not anchored). Keys and values are checked with Swarm's own
patterns, and a bad one is refused with Swarm's texts: ``Key 'x' is invalid``, ``Value 'x' is invalid``,
``One of operator ==, != is expected``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

import attrs

__all__ = ["OPERATORS", "Expr", "ExprError", "parse_exprs"]

log = logging.getLogger("swarmha.manager.scheduler")

OPERATORS = ("==", "!=")
_KEY = re.compile(r"^[a-z_][a-z0-9\-_.]+$", re.IGNORECASE)
_VALUE = re.compile(r"^[=!/]?(~)?[a-z0-9:\-_\s.*/()?+\[\]\\^$|]+$", re.IGNORECASE)


class ExprError(ValueError):
    """An expression that does not parse (the message is Swarm's)."""


@attrs.frozen
class Expr:
    key: str
    operator: str  # "==" or "!="
    value: str
    soft: bool = False

    def __str__(self) -> str:
        return f"{self.key}{self.operator}{self.value}"

    def match(self, *whats: str) -> bool:
        """True when any of ``whats`` matches the value (``==``), or none does (``!=``)."""
        value = self.value
        if len(value) >= 2 and value[0] == "/" and value[-1] == "/":
            pattern = value[1:-1]
        else:
            pattern = "^" + value.replace("*", ".*") + "$"
        try:
            regexp = re.compile(pattern)
        except re.error as e:
            log.error("invalid expression %s: %s", self, e)
            matched = False
        else:
            matched = any(regexp.search(w) for w in whats)
        return matched if self.operator == "==" else not matched


def parse_exprs(texts: Iterable[str]) -> list[Expr]:
    """Parse every text; raises :class:`ExprError` at the first bad one."""
    out: list[Expr] = []
    for text in texts:
        for op in OPERATORS:
            if op in text:
                key, _, value = text.partition(op)
                if not _KEY.match(key):
                    raise ExprError(f"Key '{key}' is invalid")
                if not _VALUE.match(value):
                    raise ExprError(f"Value '{value}' is invalid")
                soft = value.startswith("~")
                out.append(Expr(key, op, value.lstrip("~"), soft))
                break
        else:
            raise ExprError("One of operator ==, != is expected")
    return out


def soft_text(e: Expr) -> str:
    """``key==value (soft=false)``: how Swarm lists affinities and whitelists in its refusal."""
    return f"{e} (soft={'true' if e.soft else 'false'})"
