"""Elections among real processes: crashes (SIGKILL) and pauses (SIGSTOP).

Each test runs on the embedded sqlite backend with candidates that call ``start()``, and on sqlite, a real etcd
and a real ZooKeeper with candidates that take ``run_for_election()`` and never advance it (the campaign starts
when it is called, issue 12).
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.helpers import wait_for
from tests.support.procs import CandidateProcess, first_line
from tests.support.stores import StoreFixture

TTL = 1.5


def key_lifetime(url: str, ttl: float) -> float:
    """How long after its last renewal a crashed leader's key can live on in the store (docs/backends.md): etcd
    grants leases of whole seconds, at least ~2 s (1.5 x the election timeout), and its lessor sweeps expired
    leases every 500 ms; the other backends expire the key ``ttl`` after the last renewal."""
    return max(2.0, math.ceil(ttl)) + 0.5 if url.startswith("etcd://") else ttl


CASES = [
    ("sqlite", "start"),
    ("sqlite", "never-iterate"),
    ("etcd", "never-iterate"),
    ("zk", "never-iterate"),
    ("redis", "never-iterate"),
]


@pytest.fixture(params=CASES, ids=[f"{b}-{m}" for b, m in CASES])
def case(request: pytest.FixtureRequest, tmp_path: Path, stores: dict[str, StoreFixture]) -> tuple[str, str]:
    """(discovery URL, candidate mode) of one case."""
    backend, mode = request.param
    url = f"sqlite://{tmp_path / 'election.db'}" if backend == "sqlite" else stores[backend].url()
    return url, mode


@pytest.fixture
def url(case: tuple[str, str]) -> str:
    return case[0]


@pytest.fixture
def spawn(case: tuple[str, str]) -> Iterator[Callable[..., CandidateProcess]]:
    """Starts candidate processes of the case's mode; all stopped after the test."""
    procs: list[CandidateProcess] = []

    def start(url: str, node: str, ttl: float) -> CandidateProcess:
        procs.append(CandidateProcess(url, node, ttl, mode=case[1]))
        return procs[-1]

    yield start
    for p in procs:
        p.stop()


def the_leader(procs: list[CandidateProcess]) -> CandidateProcess:
    wait_for(lambda: sum(p.leading() for p in procs) == 1, 15.0, "exactly one leading process")
    (leader,) = [p for p in procs if p.leading()]
    return leader


def overlapping_leaders(procs: list[CandidateProcess]) -> list[tuple[str, str]]:
    """Pairs of processes whose leadership spans (first to last True observation, by start time) overlap.

    Spans use ``t0`` (taken just before reading ``term``) only: a pause that lands after the read would
    otherwise stretch an observation across the pause and report an overlap that did not happen.
    """
    spans: dict[tuple[str, int], tuple[float, float]] = {}
    for p in procs:
        for line in p.snapshot():
            if line.get("leader"):
                key = (p.node, line["token"])
                lo, hi = spans.get(key, (line["t0"], line["t0"]))
                spans[key] = (min(lo, line["t0"]), max(hi, line["t0"]))
    items = sorted(spans.items(), key=lambda kv: kv[1][0])
    return [
        (f"{a[0]}#{a[1]}", f"{b[0]}#{b[1]}")
        for i, (a, (_, a_hi)) in enumerate(items)
        for b, (b_lo, _) in items[i + 1 :]
        if b_lo < a_hi and a[0] != b[0]
    ]


def test_exactly_one_leader_among_processes(url: str, spawn: Callable[..., CandidateProcess]) -> None:
    procs = [spawn(url, f"n{i}", TTL) for i in range(4)]
    the_leader(procs)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert sum(p.leading() for p in procs) <= 1
        time.sleep(0.01)
    assert overlapping_leaders(procs) == []


def test_sigkill_of_the_leader_process_fails_over_within_the_key_lifetime_plus_1s(
    url: str, spawn: Callable[..., CandidateProcess]
) -> None:
    procs = [spawn(url, f"n{i}", TTL) for i in range(3)]
    leader = the_leader(procs)
    old_token = leader.last()["token"]  # type: ignore[index]
    killed_at = time.monotonic()
    leader.signal(signal.SIGKILL)
    rest = [p for p in procs if p is not leader]
    bound = key_lifetime(url, TTL) + 1.0
    line = first_line(rest, lambda ln: ln.get("leader") and ln["t0"] > killed_at, bound + 2.0)
    assert line["t1"] - killed_at <= bound, f"failover took {line['t1'] - killed_at:.2f}s (bound {bound:.1f}s)"
    assert line["token"] > old_token
    assert overlapping_leaders(procs) == []


def test_graceful_exit_hands_over_without_waiting_for_the_ttl(url: str, spawn: Callable[..., CandidateProcess]) -> None:
    procs = [spawn(url, f"n{i}", 30.0) for i in range(2)]
    leader = the_leader(procs)
    stopped_at = time.monotonic()
    leader.signal(signal.SIGTERM)
    rest = [p for p in procs if p is not leader]
    line = first_line(rest, lambda ln: ln.get("leader") and ln["t0"] > stopped_at, 5.0)
    assert line["t1"] - stopped_at < 2.0  # the TTL is 30 s: only a release explains this


def test_sigstopped_leader_reads_not_leader_the_moment_it_resumes(
    url: str, spawn: Callable[..., CandidateProcess]
) -> None:
    procs = [spawn(url, f"n{i}", TTL) for i in range(2)]
    paused = the_leader(procs)
    other = next(p for p in procs if p is not paused)
    paused.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    first_line([other], lambda ln: ln.get("leader") and ln["t0"] > stopped_at, TTL + 3.0)
    wait_for(lambda: time.monotonic() - stopped_at > 2 * TTL, 3 * TTL, "a pause longer than the ttl")
    resumed_at = time.monotonic()
    paused.signal(signal.SIGCONT)
    wait_for(lambda: any(ln.get("t0", 0) > resumed_at for ln in paused.snapshot()), 5.0, "observations after resuming")
    after = [ln for ln in paused.snapshot() if ln.get("t1", 0) > resumed_at]
    assert after and not any(ln["leader"] for ln in after), after[:3]
    assert other.leading()
    assert overlapping_leaders(procs) == []
