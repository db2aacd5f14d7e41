"""The one backoff policy type (swarmha._backoff.Backoff) and the policies built on it, as a table."""

from __future__ import annotations

import threading

import pytest

from swarmha._backoff import Backoff
from swarmha.discovery._fed import BACKOFF as FEED
from swarmha.discovery._fed import Outage
from swarmha.discovery.sqlite import OPEN_BACKOFF
from swarmha.election._retry import backoff as election


def no_jitter(a: float, b: float) -> float:
    return a


def all_jitter(a: float, b: float) -> float:
    return b


ELECTION = Backoff(first=0.02, cap=1.0, jitter=0.05)

# policy, attempt, delay without jitter, delay with the most jitter
TABLE = [
    (ELECTION, 1, 0.02, 0.07),
    (ELECTION, 2, 0.04, 0.09),
    (ELECTION, 5, 0.32, 0.37),
    (ELECTION, 6, 0.64, 0.69),
    (ELECTION, 7, 1.0, 1.0),  # capped, the jitter included
    (ELECTION, 10_000, 1.0, 1.0),  # no overflow
    (FEED, 1, 0.05, 0.05),
    (FEED, 2, 0.1, 0.1),
    (FEED, 4, 0.4, 0.4),
    (FEED, 5, 0.5, 0.5),
    (FEED, 10_000, 0.5, 0.5),
    (OPEN_BACKOFF, 1, 0.001, 0.02),
    (OPEN_BACKOFF, 50, 0.001, 0.02),  # factor 1: constant, 1 to 20 ms
]


@pytest.mark.parametrize(("policy", "attempt", "low", "high"), TABLE)
def test_delay_table(policy: Backoff, attempt: int, low: float, high: float) -> None:
    assert policy.delay(attempt, no_jitter) == pytest.approx(low)
    assert policy.delay(attempt, all_jitter) == pytest.approx(high)
    assert low - 1e-9 <= policy.delay(attempt) <= high + 1e-9


@pytest.mark.parametrize(("ttl", "attempt", "most"), [(1.0, 1, 0.07), (1.0, 3, 1.0 / 6), (30.0, 8, 1.0)])
def test_the_election_backoff_is_capped_by_its_caller(ttl: float, attempt: int, most: float) -> None:
    cap = min(1.0, ttl / 6)
    assert all(election(attempt, cap) <= most + 1e-9 for _ in range(200))


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"first": -1.0, "cap": 1.0}, "first"),
        ({"first": 0.1, "cap": -1.0}, "cap"),
        ({"first": 0.1, "cap": 1.0, "jitter": -0.1}, "jitter"),
        ({"first": 0.1, "cap": 1.0, "factor": 0.5}, "factor"),
        ({"first": float("nan"), "cap": 1.0}, "first"),
    ],
)
def test_bad_policy_is_refused_naming_the_bad_part(kwargs: dict[str, float], bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        Backoff(**kwargs)


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="attempt"):
        ELECTION.delay(0)


def test_a_feed_outage_pauses_longer_each_try_and_starts_over_when_a_try_works() -> None:
    outage = Outage(timeout=10.0)
    cond = threading.Condition()
    waits = []
    for _ in range(5):
        waits.append(FEED.delay(outage.attempt))
        outage.pause(cond, lambda: True)  # closed: returns at once, the policy still moves on
    assert waits == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5])
    outage.ok()
    assert FEED.delay(outage.attempt) == pytest.approx(0.05)
