"""A container's ``Status`` text (``Up 5 minutes``, ``Exited (0) 2 hours ago``) from its inspected ``State``.

dockerd computes it on every list from the clock; a list answered from a view must do the same, or the text
would stay as old as the view's copy. Same words and rounding as dockerd's ``State.String`` and go-units'
``HumanDuration``.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

__all__ = ["human_duration", "parse_time", "status_text"]

_ZERO_YEAR = "0001-"


def parse_time(text: str) -> float:
    """An RFC 3339 time as dockerd writes it (nanoseconds, ``Z`` or an offset) -> epoch seconds; 0.0 for the
    zero time or text that is not one."""
    if not text or text.startswith(_ZERO_YEAR):
        return 0.0
    main, dot, rest = text.partition(".")
    zone = ""
    if dot:
        digits = rest.rstrip("Z")
        for sep in ("+", "-"):
            if sep in digits:
                digits, _, off = digits.partition(sep)
                zone = sep + off
        text = f"{main}.{digits[:6]}"
    else:
        text, zone = (main[:-1], "") if main.endswith("Z") else (main[:19], main[19:])
    try:
        moment = datetime.datetime.fromisoformat(text + (zone or "+00:00"))
    except ValueError:
        return 0.0
    return moment.timestamp()


def human_duration(seconds: float) -> str:
    """go-units ``HumanDuration``."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def status_text(state: dict[str, Any], now: float | None = None) -> str:
    """dockerd's ``State.String()`` for an inspected ``State``."""
    now = time.time() if now is None else now
    if state.get("Running"):
        since = now - parse_time(str(state.get("StartedAt") or ""))
        if state.get("Paused"):
            return f"Up {human_duration(since)} (Paused)"
        if state.get("Restarting"):
            ago = now - parse_time(str(state.get("FinishedAt") or ""))
            return f"Restarting ({int(state.get('ExitCode') or 0)}) {human_duration(ago)} ago"
        health = state.get("Health")
        if isinstance(health, dict) and health.get("Status"):
            h = str(health["Status"])
            return f"Up {human_duration(since)} ({'health: starting' if h == 'starting' else h})"
        return f"Up {human_duration(since)}"
    if state.get("Status") == "removing":
        return "Removal In Progress"
    if state.get("Dead") or state.get("Status") == "dead":
        return "Dead"
    if not parse_time(str(state.get("StartedAt") or "")):
        return "Created"
    finished = parse_time(str(state.get("FinishedAt") or ""))
    if not finished:
        return ""
    return f"Exited ({int(state.get('ExitCode') or 0)}) {human_duration(now - finished)} ago"
