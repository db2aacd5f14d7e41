"""Leadership under the operator's control, on every backend: transfer, priority and preemption, drain, reasons."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

import swarmha
from swarmha.errors import ConfigurationError
from swarmha.observe import Observation, add_observer
from tests.support.helpers import wait_for
from tests.support.stores import StoreFixture

TTL = 30.0  # nothing here may wait for an expiry
SHORT_TTL = 3.0


@pytest.fixture
def discovery(store: StoreFixture) -> Iterator[swarmha.Discovery]:
    d = swarmha.connect(store.url())
    yield d
    d.close()


@pytest.fixture
def terms() -> Iterator[list[tuple[str, str, int, float]]]:
    """Every term won in the process, in order: (key, node, token, monotonic time of ELECTED)."""
    seen: list[tuple[str, str, int, float]] = []

    def record(o: Observation) -> None:
        if o.kind == "elected" and o.term is not None:
            seen.append((o.key, o.term.node, o.term.token, time.monotonic()))

    remove = add_observer(record)
    yield seen
    remove()


def registered(d: swarmha.Discovery, key: str, n: int) -> None:
    wait_for(lambda: len(d.list(f"{key}.election/candidates")) >= n, 10.0, f"{n} registrations", poll=0.01)


def test_a_transfer_reaches_the_named_waiter_and_no_one_else(
    discovery: swarmha.Discovery, terms: list[tuple[str, str, int, float]]
) -> None:
    key = "svc/transfer"
    a, b, c = (swarmha.Candidate(discovery, key, node=n, ttl=TTL) for n in ("a", "b", "c"))
    try:
        a.start()
        wait_for(lambda: a.is_leader, 10.0, "a to lead")
        b.start()
        c.start()
        wait_for(lambda: b.phase is not swarmha.Phase.LATENT and c.phase is not swarmha.Phase.LATENT, 5.0, "waiters")
        time.sleep(0.2)  # let both waiters watch the key (a transfer must not rely on a waiter being slow)
        for source, target in ((a, b), (b, a), (a, c)):
            started = time.monotonic()
            assert source.transfer(target.node, timeout=10.0) is True
            took = time.monotonic() - started
            assert not source.is_leader
            wait_for(lambda: target.is_leader, 5.0, "the target's term (it holds the key)")  # noqa: B023
            assert took < TTL / 3, f"the transfer waited for something like a ttl: {took:.3f}s"
            assert source.lost_reason == f"transferred to {target.node}"
        nodes = [node for k, node, _, _ in terms if k == key]
        tokens = [token for k, _, token, _ in terms if k == key]
        assert nodes == ["a", "b", "a", "c"], "a third candidate led during a transfer"
        assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    finally:
        for x in (a, b, c):
            x.stop()


def test_the_first_transfer_of_a_key_passes_over_the_waiter_ahead_of_the_target(
    discovery: swarmha.Discovery, terms: list[tuple[str, str, int, float]]
) -> None:
    # The key was never steered, so the transfer creates its steering prefix. The waiter next in line (b) watched
    # that prefix while nothing was there (ZooKeeper: its claim skips the listing then); it must still see the
    # marker written before the leader left, and let c win.
    key = "svc/first-transfer"
    a, b, c = (swarmha.Candidate(discovery, key, node=n, ttl=TTL) for n in ("a", "b", "c"))
    waiting = (swarmha.Phase.WAITING, swarmha.Phase.QUEUED)
    try:
        a.start()
        wait_for(lambda: a.is_leader, 10.0, "a to lead")
        for waiter in (b, c):  # b first: it is next in line where the store queues waiters
            waiter.start()
            wait_for(lambda: waiter.phase in waiting, 5.0, f"{waiter.node} to wait")  # noqa: B023
            time.sleep(0.2)  # let it queue and watch (a transfer must not rely on a waiter being slow)
        assert a.transfer("c", timeout=10.0) is True
        wait_for(lambda: c.is_leader, 5.0, "c's term")
        assert [node for k, node, _, _ in terms if k == key] == ["a", "c"], "b led during the transfer"
    finally:
        for x in (a, b, c):
            x.stop()


def test_a_transfer_to_an_absent_node_fails_and_the_key_is_led_again(
    discovery: swarmha.Discovery, terms: list[tuple[str, str, int, float]]
) -> None:
    key = "svc/absent"
    a = swarmha.Candidate(discovery, key, node="a", ttl=SHORT_TTL)
    b = swarmha.Candidate(discovery, key, node="b", ttl=SHORT_TTL)
    try:
        elections = a.run_for_election()
        assert next(elections) is True
        b.start()
        first = a.term
        assert first is not None
        assert a.transfer("nobody", timeout=0.5) is False
        assert next(elections) is False
        wait_for(lambda: a.is_leader or b.is_leader, SHORT_TTL, "a leader again within ttl")
        leader = a if a.is_leader else b
        assert leader.term is not None and leader.term.token > first.token
        with pytest.raises(ConfigurationError):
            (b if leader is a else a).transfer("a")
    finally:
        a.stop()
        b.stop()


@pytest.mark.slow
def test_the_highest_priority_wins_a_free_key(discovery: swarmha.Discovery) -> None:
    for round_ in range(20):
        key = f"svc/prio{round_}"
        holder = swarmha.Candidate(discovery, key, node="holder", ttl=TTL).start()
        wait_for(lambda: holder.is_leader, 10.0, "the holder")  # noqa: B023
        order = [("p1", 1), ("p5", 5), ("p3", 3)] if round_ % 2 else [("p5", 5), ("p3", 3), ("p1", 1)]
        waiters = [swarmha.Candidate(discovery, key, node=n, ttl=TTL, priority=p).start() for n, p in order]
        try:
            registered(discovery, key, 3)
            holder.stop()
            wait_for(lambda: any(w.is_leader for w in waiters), 10.0, "a waiter to lead")  # noqa: B023
            assert [w.node for w in waiters if w.is_leader] == ["p5"], f"round {round_}"
        finally:
            for w in waiters:
                w.stop()


def test_ties_go_to_the_first_come(discovery: swarmha.Discovery) -> None:
    key = "svc/tie"
    holder = swarmha.Candidate(discovery, key, node="holder", ttl=TTL).start()
    wait_for(lambda: holder.is_leader, 10.0, "the holder")
    early = swarmha.Candidate(discovery, key, node="early", ttl=TTL, priority=2).start()
    registered(discovery, key, 1)
    late = swarmha.Candidate(discovery, key, node="late", ttl=TTL, priority=2).start()
    try:
        registered(discovery, key, 2)
        holder.stop()
        wait_for(lambda: early.is_leader or late.is_leader, 10.0, "a waiter to lead")
        assert early.is_leader
    finally:
        early.stop()
        late.stop()


@pytest.mark.slow
def test_preemption_waits_its_grace_and_never_flaps(
    discovery: swarmha.Discovery, terms: list[tuple[str, str, int, float]]
) -> None:
    key = "svc/preempt"
    grace = 0.6
    low = swarmha.Candidate(discovery, key, node="low", ttl=TTL, priority=1, preempt=True, preempt_after=grace)
    same = swarmha.Candidate(discovery, key, node="same", ttl=TTL, priority=1, preempt=True, preempt_after=grace)
    high = swarmha.Candidate(discovery, key, node="high", ttl=TTL, priority=5, preempt=True, preempt_after=grace)
    try:
        low.start()
        wait_for(lambda: low.is_leader, 10.0, "low to lead")
        same.start()
        registered(discovery, key, 2)
        time.sleep(3 * grace)  # an equal priority never preempts
        assert low.is_leader
        arrived = time.monotonic()
        high.start()
        wait_for(lambda: high.is_leader, 10.0, "high to preempt")
        took = next(t for k, node, _, t in terms if k == key and node == "high") - arrived
        assert took >= grace, f"preempted after {took:.3f}s, before the grace of {grace}s"
        time.sleep(3 * grace)  # and no one preempts it back
        assert high.is_leader
        assert [node for k, node, _, _ in terms if k == key] == ["low", "high"]
    finally:
        for c in (low, same, high):
            c.stop()


def test_drain_releases_only_after_the_consumer_came_back(
    discovery: swarmha.Discovery, terms: list[tuple[str, str, int, float]]
) -> None:
    key = "svc/drain"
    a = swarmha.Candidate(discovery, key, node="a", ttl=TTL, drain=10.0)
    b = swarmha.Candidate(discovery, key, node="b", ttl=TTL)
    came_back: list[float] = []
    led = threading.Event()

    def consume() -> None:
        for elected in a.run_for_election():
            if elected:
                led.set()
            else:
                time.sleep(0.3)  # the term's work winding down
                came_back.append(time.monotonic())

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        assert led.wait(10.0)
        b.start()
        wait_for(lambda: b.phase is swarmha.Phase.WAITING or b.phase is swarmha.Phase.QUEUED, 5.0, "b waiting")
        a.stop()
        consumer.join(10.0)
        wait_for(lambda: b.is_leader, 10.0, "b to lead")
        (elected_at,) = [t for k, node, _, t in terms if k == key and node == "b"]
        assert came_back and elected_at > came_back[0], "the successor began before the consumer came back"
        assert elected_at - came_back[0] < 2.0, "the release waited for the drain timeout"
        assert a.lost_reason == "stopped"
    finally:
        a.stop()
        b.stop()


def test_drain_never_delays_a_term_lost_to_the_store(discovery: swarmha.Discovery) -> None:
    key = "svc/drainlost"
    a = swarmha.Candidate(discovery, key, node="a", ttl=TTL, drain=30.0)
    try:
        elections = a.run_for_election()
        assert next(elections) is True
        term = a.term
        assert term is not None
        discovery.delete(key, term.token)  # the key is taken away: the term ends at once, drain or not
        assert next(elections) is False
        assert a.lost_reason == "the leader key was deleted"
    finally:
        a.stop()


def test_the_asyncio_face_transfers_too(discovery: swarmha.Discovery) -> None:
    key = "svc/aio"

    async def main() -> None:
        a = swarmha.aio.Candidate(discovery, key, node="a", ttl=TTL)
        b = swarmha.aio.Candidate(discovery, key, node="b", ttl=TTL)
        async with a, b:
            elections = a.run_for_election()
            assert await anext(elections) is True
            b.start()
            await asyncio.sleep(0.2)
            assert await a.transfer("b") is True
            assert await anext(elections) is False
            while not b.is_leader:  # b holds the key: its term begins within a moment
                await asyncio.sleep(0.005)
            assert a.lost_reason == "transferred to b"
            with pytest.raises(ConfigurationError):
                await a.transfer("b")

    asyncio.run(main())


@pytest.mark.slow
def test_a_term_lost_to_an_outage_says_since_when_the_store_was_unreachable(store: StoreFixture) -> None:
    if not store.can_stop:
        pytest.skip("this store cannot be stopped")
    d = swarmha.connect(store.url())
    c = swarmha.Candidate(d, "svc/outage", node="n", ttl=SHORT_TTL)
    reasons: list[str | None] = []
    remove = add_observer(lambda o: reasons.append(o.reason) if o.kind == "lost" else None)
    try:
        elections = c.run_for_election()
        assert next(elections) is True
        store.stop()
        assert next(elections) is False
        reason = c.lost_reason
        assert reason is not None
        wait_for(lambda: reasons, 5.0, "the observers' lost event")
        assert reasons == [reason]
        assert "renew_deadline" in reason or "session" in reason, reason
        if "renew_deadline" in reason:
            assert "the store unreachable since" in reason, reason
    finally:
        remove()
        store.start()
        c.stop()
        d.close()


def test_a_consumer_that_stops_inside_its_loop_does_not_wait_for_its_own_drain(discovery: swarmha.Discovery) -> None:
    key = "svc/selfstop"
    a = swarmha.Candidate(discovery, key, node="a", ttl=TTL, drain=30.0)
    b = swarmha.Candidate(discovery, key, node="b", ttl=TTL)
    try:
        for elected in a.run_for_election():
            if elected:
                b.start()
                started = time.monotonic()
                a.stop()  # the consumer itself: it is done with the term, nothing to wait for
                assert time.monotonic() - started < 10.0, "stop() waited for the drain timeout"
        wait_for(lambda: b.is_leader, 10.0, "b to lead")
    finally:
        a.stop()
        b.stop()


def test_the_asyncio_face_drains_too(discovery: swarmha.Discovery, terms: list[tuple[str, str, int, float]]) -> None:
    key = "svc/aiodrain"
    came_back: list[float] = []

    async def main() -> None:
        a = swarmha.aio.Candidate(discovery, key, node="a", ttl=TTL, drain=10.0)
        b = swarmha.aio.Candidate(discovery, key, node="b", ttl=TTL)
        led = asyncio.Event()

        async def consume() -> None:
            async for elected in a.run_for_election():
                if elected:
                    led.set()
                else:
                    await asyncio.sleep(0.3)  # the term's work winding down, on the loop
                    came_back.append(time.monotonic())

        consumer = asyncio.create_task(consume())
        async with b:
            await asyncio.wait_for(led.wait(), 10.0)
            b.start()
            await asyncio.sleep(0.2)
            await a.stop()
            await asyncio.wait_for(consumer, 10.0)
            while not b.is_leader:
                await asyncio.sleep(0.005)

    asyncio.run(main())
    (elected_at,) = [t for k, node, _, t in terms if k == key and node == "b"]
    assert came_back and elected_at > came_back[0], "the successor began before the consumer came back"
