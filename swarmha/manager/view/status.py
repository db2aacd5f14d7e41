"""A container's ``Status`` text (``Up 5 minutes``, ``Exited (0) 2 hours ago``) from its inspected ``State``.

dockerd computes it on every list from the clock; a list answered from a view must do the same, or the text
would stay as old as the view's copy. Same words and rounding as dockerd's ``State.String`` and go-units'
``HumanDuration``.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

__all__ = ["human_duration", "parse_time", "status", "status_text"]

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


def _boundary(seconds: float) -> float:
    """How many seconds from an age of ``seconds`` until :func:`human_duration`'s text may change."""
    if seconds < 60:
        return int(seconds) + 1 - seconds if seconds >= 0 else -seconds
    if seconds < 3600:
        return (int(seconds / 60) + 1) * 60 - seconds
    return (int(seconds / 3600 + 0.5) + 0.5) * 3600 - seconds


def status(state: dict[str, Any], started: float, finished: float, now: float) -> tuple[str, float]:
    """dockerd's ``State.String()`` for an inspected ``State`` whose ``StartedAt``/``FinishedAt`` are ``started``
    and ``finished`` (:func:`parse_time`), as of ``now``; and the time until which that text stays the same."""
    forever = float("inf")
    if state.get("Running"):
        since = now - started
        if state.get("Paused"):
            return f"Up {human_duration(since)} (Paused)", now + _boundary(since)
        if state.get("Restarting"):
            ago = now - finished
            return f"Restarting ({int(state.get('ExitCode') or 0)}) {human_duration(ago)} ago", now + _boundary(ago)
        health = state.get("Health")
        if isinstance(health, dict) and health.get("Status"):
            h = str(health["Status"])
            text = f"Up {human_duration(since)} ({'health: starting' if h == 'starting' else h})"
            return text, now + _boundary(since)
        return f"Up {human_duration(since)}", now + _boundary(since)
    if state.get("Status") == "removing":
        return "Removal In Progress", forever
    if state.get("Dead") or state.get("Status") == "dead":
        return "Dead", forever
    if not started:
        return "Created", forever
    if not finished:
        return "", forever
    ago = now - finished
    return f"Exited ({int(state.get('ExitCode') or 0)}) {human_duration(ago)} ago", now + _boundary(ago)


def status_text(state: dict[str, Any], now: float | None = None) -> str:
    """dockerd's ``State.String()`` for an inspected ``State``."""
    started = parse_time(str(state.get("StartedAt") or ""))
    finished = parse_time(str(state.get("FinishedAt") or ""))
    return status(state, started, finished, time.time() if now is None else now)[0]
