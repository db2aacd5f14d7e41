"""A container's ``Status`` text as dockerd writes it (``State.String`` and go-units' ``HumanDuration``), computed
by the view from the inspected state, and how long each text holds."""

from __future__ import annotations

import pytest

from swarmha.manager.view.status import human_duration, parse_time, status, status_text

T0 = parse_time("2026-12-06T20:00:00.123456789Z")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.4, "Less than a second"),
        (1, "1 second"),
        (59, "59 seconds"),
        (60, "About a minute"),
        (119, "About a minute"),
        (120, "2 minutes"),
        (59 * 60 + 59, "59 minutes"),
        (3600, "About an hour"),
        (2 * 3600 - 1, "2 hours"),  # hours round half up, as go-units does
        (47 * 3600, "47 hours"),
        (48 * 3600, "2 days"),
        (15 * 24 * 3600, "2 weeks"),
        (70 * 24 * 3600, "2 months"),
        (800 * 24 * 3600, "2 years"),
    ],
)
def test_durations_read_as_dockerd_writes_them(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_status_texts_and_how_long_they_hold() -> None:
    running = {"Running": True, "StartedAt": "2026-12-06T20:00:00.123456789Z"}
    assert status_text(running, T0 + 30.5) == "Up 30 seconds"
    text, until = status(running, T0, 0.0, T0 + 30.5)
    assert (text, until) == ("Up 30 seconds", pytest.approx(T0 + 31))
    assert status(running, T0, 0.0, T0 + 600)[1] == pytest.approx(T0 + 660)  # "10 minutes" until 11
    paused = {**running, "Paused": True}
    assert status_text(paused, T0 + 120) == "Up 2 minutes (Paused)"
    healthy = {**running, "Health": {"Status": "starting"}}
    assert status_text(healthy, T0 + 5) == "Up 5 seconds (health: starting)"
    exited = {"Running": False, "StartedAt": "2026-12-06T20:00:00Z", "FinishedAt": "2026-12-06T20:00:10+00:00",
              "ExitCode": 3}  # fmt: skip
    assert status_text(exited, T0 + 3600 * 3) == "Exited (3) 3 hours ago"
    created = {"Running": False, "StartedAt": "0001-01-01T00:00:00Z", "FinishedAt": "0001-01-01T00:00:00Z"}
    assert status(created, 0.0, 0.0, T0) == ("Created", float("inf"))
    assert status_text({"Status": "dead", "Dead": True, "StartedAt": "2026-12-06T20:00:00Z"}, T0) == "Dead"
    assert parse_time("not a time") == 0.0
