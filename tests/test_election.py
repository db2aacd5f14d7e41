"""Election machinery details that need a store misbehaving in ways only the in-process store can stage."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

import swarmha
from swarmha.discovery import Record, Session, Watch
from swarmha.discovery.memory import MemoryDiscovery
from tests.support.helpers import Collector, WaitSpy, wait_for

_names = itertools.count()


@pytest.fixture
def discovery() -> MemoryDiscovery:
    d = swarmha.connect(f"memory://election-{next(_names)}/p")
    assert isinstance(d, MemoryDiscovery)
    return d


def test_a_hung_store_ends_the_term_at_the_renew_deadline(discovery: MemoryDiscovery) -> None:
    c = swarmha.Candidate(discovery, "k", node="n", ttl=1.5)
    events = Collector(c.run_for_election())
    try:
        assert events.next() is True
        discovery.store.stall()  # the next renewal hangs inside the store call
        stalled_at = time.monotonic()
        lost_at, value = events.next_timed(3.0)
        assert value is False
        # the worker thread is stuck in keepalive(); the iterator ends the term on its own at the deadline
        assert lost_at - stalled_at <= c.renew_deadline + 0.05
        assert not c.is_leader and c.term is None
    finally:
        discovery.store.resume()
        c.stop()


def test_a_leader_whose_lease_stops_renewing_is_demoted_on_the_engine_at_its_deadline(
    discovery: MemoryDiscovery,
) -> None:
    """A leader has no timer of its own: the lease's alarm wakes it when no renewal came in time, also while the
    keeper is stuck in a hung store call (the machine, not only the consumer, ends the term: LOST is emitted)."""
    from swarmha.observe import Observation, add_observer

    lost = threading.Event()

    def seen(o: Observation) -> None:
        if o.kind == "lost" and o.key == "k":
            lost.set()

    remove = add_observer(seen)
    lease = swarmha.Lease(discovery, ttl=1.5)
    c = swarmha.Candidate(discovery, "k", node="n", lease=lease)
    events = Collector(c.run_for_election())
    try:
        assert events.next() is True
        time.sleep(0.2)  # the leader parks on its watch (a stall while it sets the watch up would hold its step)
        discovery.store.stall()
        stalled_at = time.monotonic()
        assert lost.wait(3.0)
        assert time.monotonic() - stalled_at <= c.renew_deadline + 0.5
    finally:
        remove()
        discovery.store.resume()
        c.stop()
        lease.close()


def test_a_renewal_that_succeeds_after_the_deadline_does_not_revive_the_term(discovery: MemoryDiscovery) -> None:
    c = swarmha.Candidate(discovery, "k", node="n", ttl=3.0)
    events = Collector(c.run_for_election())
    try:
        assert events.next() is True
        first = c.term
        assert first is not None
        discovery.store.stall()
        assert events.next(4.0) is False
        discovery.store.resume()  # the hung keepalive now succeeds, too late
        assert events.next(5.0) is True
        assert c.term is not None and c.term.token > first.token  # a new term, not the old one revived
    finally:
        discovery.store.resume()
        c.stop()


def test_a_leader_that_lost_the_store_cleans_up_its_stale_key_when_it_returns(discovery: MemoryDiscovery) -> None:
    c = swarmha.Candidate(discovery, "k", node="n", ttl=3.0)
    rival = swarmha.Candidate(discovery, "k", node="rival", ttl=3.0)
    events = Collector(c.run_for_election())
    try:
        assert events.next() is True
        stale = discovery.store.kv["p/k"]
        assert stale.session is not None
        discovery.store.available = False
        assert events.next(5.0) is False  # demoted at its renew deadline; the store still holds the key
        expires = discovery.store.sessions[stale.session]
        rival.start()
        discovery.store.available = True
        wait_for(lambda: c.is_leader or rival.is_leader, 5.0, "a leader soon after the store returned")
        assert time.monotonic() < expires, "the key was freed by its owner's cleanup, not by expiry"
        assert stale.session not in discovery.store.sessions
    finally:
        discovery.store.available = True
        c.stop()
        rival.stop()


def test_breaking_out_of_the_loop_keeps_campaigning_until_stop(discovery: MemoryDiscovery) -> None:
    c = swarmha.Candidate(discovery, "k", node="n", ttl=5.0)
    for elected in c.run_for_election():
        assert elected
        break
    assert c.is_leader
    c.stop()
    assert not c.is_leader and discovery.get("k") is None


def test_stop_twice_from_two_threads_is_safe(discovery: MemoryDiscovery) -> None:
    c = swarmha.Candidate(discovery, "k", node="n", ttl=5.0).start()
    wait_for(lambda: c.is_leader, 5.0, "a leader")
    other = Collector(iter([c.stop]))
    other.next()()
    c.stop()
    assert discovery.get("k") is None


def test_a_stop_racing_another_threads_release_returns_only_after_the_key_went(discovery: MemoryDiscovery) -> None:
    """The signal-handler case (stop_on_signals): one thread's stop() is removing the key while the main thread's
    stop() runs; the main thread may exit the process right after, so its stop() must wait for that release."""
    releasing, let_go = threading.Event(), threading.Event()

    class SlowRelease(MemoryDiscovery):
        def __init__(self) -> None:
            self.__dict__.update(discovery.__dict__)

        def release(self, key: str, token: int, session: Session) -> None:
            releasing.set()
            assert let_go.wait(10.0)
            super().release(key, token, session)

    c = swarmha.Candidate(SlowRelease(), "k", node="n", ttl=30.0)
    elections = c.run_for_election()
    assert next(elections) is True
    wait_for(lambda: getattr(c._campaign._lead, "watch", None) is not None, 5.0, "the leader waiting on its key")
    first = threading.Thread(target=c.stop)
    first.start()
    assert releasing.wait(5.0)
    second = threading.Thread(target=c.stop)
    second.start()
    second.join(0.3)
    assert second.is_alive(), "a stop() returned while another thread's release was still removing the key"
    assert discovery.get("k") is not None
    let_go.set()
    first.join(5.0)
    second.join(5.0)
    assert not second.is_alive() and discovery.get("k") is None
    assert list(elections) == [False]


def test_stop_releases_on_the_callers_thread_after_the_term_ended(discovery: MemoryDiscovery) -> None:
    """A leader idle between renewals hands over from stop()'s own thread (no hop to the worker first), and
    still ends the term before the key goes: is_leader is False while the key is being removed."""
    calls: list[tuple[threading.Thread, bool, bool]] = []
    waiting = threading.Event()
    candidate: list[swarmha.Candidate] = []

    class Spy(WaitSpy):
        def watch(self, key: str, seen: Record | None) -> Watch:
            inner = super().watch(key, seen)

            class Recording(Watch):
                def wait(self, timeout: float | None = None) -> bool:
                    if seen is not None and seen.value == "n":
                        waiting.set()
                    return inner.wait(timeout)

                def interrupt(self) -> None:
                    inner.interrupt()

                def close(self) -> None:
                    inner.close()

            return Recording()

        def release(self, key: str, token: int, session: Session) -> None:
            calls.append((threading.current_thread(), candidate[0].is_leader, discovery.get(key) is not None))
            super().release(key, token, session)

    c = swarmha.Candidate(Spy(discovery), "k", node="n", ttl=30.0)
    candidate.append(c)
    events = Collector(c.run_for_election())
    assert events.next(5.0) is True
    assert waiting.wait(5.0), "the leader never waited on its own key"
    c.stop()
    assert calls == [(threading.current_thread(), False, True)]
    assert events.next(5.0) is False
    events.join()
    assert discovery.get("k") is None


def test_a_term_claimed_with_a_ticket_granted_ahead_counts_from_the_tickets_clock(
    discovery: MemoryDiscovery,
) -> None:
    """A ticket whose lease started before the claim (etcd's, Session.clock) shortens the first renewal
    period accordingly: the term's deadline is clock + renew_deadline, never later, so the term cannot
    outlive the lease."""
    head_start = 2.0
    tickets: list[Session] = []

    class AheadOfTime(WaitSpy):
        def prepare(self, key: str, value: str, ttl: float, *, listing: str | None = None) -> Session | None:
            ticket = self.inner.session(ttl)
            ticket.clock = time.monotonic() - head_start
            tickets.append(ticket)
            return ticket

    c = swarmha.Candidate(AheadOfTime(discovery), "k", node="n", ttl=30.0, renew_deadline=20.0)
    events = Collector(c.run_for_election())
    try:
        assert events.next(5.0) is True
        (ticket,) = tickets
        assert ticket.clock is not None
        assert c._campaign.deadline == pytest.approx(ticket.clock + 20.0, abs=1e-6)
    finally:
        c.stop()


def test_a_lease_renews_once_per_period_for_all_its_candidates(discovery: MemoryDiscovery) -> None:
    renewals: list[float] = []
    lease = swarmha.Lease(discovery, ttl=1.5)
    session = lease.session()
    real = session.keepalive

    def counted() -> None:
        renewals.append(time.monotonic())
        real()

    session.keepalive = counted  # type: ignore[method-assign]
    candidates = [swarmha.Candidate(discovery, f"shard/{i}", node="n", lease=lease).start() for i in range(50)]
    try:
        wait_for(lambda: all(c.is_leader for c in candidates), 5.0, "every shard to be led")
        started, count = time.monotonic(), len(renewals)
        wait_for(lambda: time.monotonic() - started >= 3.0, 5.0, "two ttls of renewals")
        periods = (time.monotonic() - started) / 0.5  # ttl/3
        assert all(c.is_leader for c in candidates)
        # 50 candidates renewing alone would send ~50 per period; sharing, one per period (and a spare for jitter)
        assert len(renewals) - count <= periods + 2, renewals
    finally:
        for c in candidates:
            c.stop()
        lease.close()


def test_threads_stay_few_however_many_keys_a_discovery_campaigns_for(discovery: MemoryDiscovery) -> None:
    before = threading.active_count()
    candidates = [swarmha.Candidate(discovery, f"shard/{i}", node="n", ttl=30.0).start() for i in range(300)]
    rivals = [swarmha.Candidate(discovery, f"shard/{i}", node="r", ttl=30.0).start() for i in range(300)]
    followers = [swarmha.Follower(discovery, f"shard/{i}").start() for i in range(300)]
    try:
        wait_for(lambda: all(c.is_leader for c in candidates), 10.0, "every shard to be led")
        wait_for(lambda: all(f.leader is not None for f in followers), 10.0, "every follower to see its leader")
        assert not any(r.is_leader for r in rivals)
        # the engine: a timer and at most 4 workers for 900 state machines (it used to be a thread each)
        assert threading.active_count() - before <= 5
    finally:
        for c in candidates + rivals:
            c.stop()
        for f in followers:
            f.stop()
