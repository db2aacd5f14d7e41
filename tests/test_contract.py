"""The election contract, run unchanged on every backend in ``tests.support.stores.BACKENDS``.

Each test names the behaviour it pins. Times: ``LONG_TTL`` where the behaviour must not depend on the TTL
(a handover that waited for expiry would fail), ``SHORT_TTL`` where expiry is the point.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import swarmha
from swarmha.errors import DiscoveryUnavailable, SessionExpired
from tests.support.helpers import Collector, WaitSpy, outage_demotes_then_recovers, wait_for
from tests.support.stores import StoreFixture

LONG_TTL = 30.0
SHORT_TTL = 3.0
KEY = "svc/leader"


def leaders(candidates: list[swarmha.Candidate]) -> list[swarmha.Candidate]:
    return [c for c in candidates if c.is_leader]


@pytest.fixture
def discovery(store: StoreFixture) -> swarmha.Discovery:
    d = swarmha.connect(store.url())
    yield d
    d.close()


def test_discovery_create_is_exclusive_and_delete_compares_token(discovery: swarmha.Discovery) -> None:
    s1 = discovery.session(LONG_TTL)
    s2 = discovery.session(LONG_TTL)
    try:
        first = discovery.create(KEY, "a", s1)
        assert first is not None and first.value == "a" and first.session == s1.id
        assert discovery.create(KEY, "b", s2) is None
        assert discovery.get(KEY) == first
        assert not discovery.delete(KEY, first.token + 1)
        assert discovery.get(KEY) == first
        assert discovery.delete(KEY, first.token)
        assert discovery.get(KEY) is None
        second = discovery.create(KEY, "b", s2)
        assert second is not None and second.token > first.token
    finally:
        s1.close()
        s2.close()


def test_a_session_whose_key_was_deleted_creates_it_anew_with_a_new_token(discovery: swarmha.Discovery) -> None:
    """A shared session (a Lease's) outlives a term: after ``delete(key, token)`` of its own key (a demoted
    leader removing its stale key), its next ``create`` must make a new key, never hand back the deleted one.
    (The fault soak found ZooKeeper claiming the deleted queue entry again: two leaders.)"""
    session = discovery.session(LONG_TTL)
    try:
        first = discovery.create(KEY, "a", session)
        assert first is not None
        assert discovery.delete(KEY, first.token)
        assert discovery.get(KEY) is None
        again = discovery.create(KEY, "a", session)
        assert again is not None and again.token > first.token
        assert discovery.get(KEY) == again
    finally:
        session.close()


def test_closing_a_session_removes_its_keys_and_ends_it(discovery: swarmha.Discovery) -> None:
    session = discovery.session(LONG_TTL)
    assert discovery.create(KEY, "a", session) is not None
    discovery.put("nodes/n1", "10.0.0.1:2375", session)
    discovery.put("nodes/n2", "10.0.0.2:2375")
    assert set(discovery.list("nodes")) == {"nodes/n1", "nodes/n2"}
    session.close()  # on a store that answers, the keys are gone once close returns
    assert discovery.get(KEY) is None
    assert set(discovery.list("nodes")) == {"nodes/n2"}
    with pytest.raises(SessionExpired):
        session.keepalive()


def test_release_removes_the_key_and_ends_the_session_but_never_a_successors_key(
    discovery: swarmha.Discovery,
) -> None:
    s1, s2, s3 = (discovery.session(LONG_TTL) for _ in range(3))
    try:
        first = discovery.create(KEY, "a", s1)
        assert first is not None
        with discovery.watch(KEY, first) as watch:
            discovery.release(KEY, first.token, s1)
            assert watch.wait(5.0) is True
        assert discovery.get(KEY) is None
        with pytest.raises(SessionExpired):
            s1.keepalive()
        # a deposed holder releasing late (its key already gone, a successor's in place) spares the successor's
        second = discovery.create(KEY, "b", s2)
        assert second is not None
        discovery.delete(KEY, second.token)
        third = discovery.create(KEY, "c", s3)
        assert third is not None
        discovery.release(KEY, second.token, s2)
        assert discovery.get(KEY) == third
    finally:
        for s in (s1, s2, s3):
            s.close()


def test_watch_fires_on_delete_and_close_wakes_a_waiter(discovery: swarmha.Discovery) -> None:
    session = discovery.session(LONG_TTL)
    try:
        record = discovery.create(KEY, "a", session)
        assert record is not None
        with discovery.watch(KEY, record) as watch:
            assert watch.wait(0.05) is False
            assert discovery.delete(KEY, record.token)
            assert watch.wait(5.0) is True
        watch = discovery.watch(KEY, None)
        closer = threading.Timer(0.05, watch.close)  # from another thread, while wait() blocks
        start = time.monotonic()
        closer.start()
        assert watch.wait(10.0) is False
        assert time.monotonic() - start < 5.0
        closer.join()
    finally:
        session.close()


def test_watch_interrupt_wakes_a_waiter_and_every_later_wait(discovery: swarmha.Discovery) -> None:
    """What a stopping leader relies on: interrupt() ends a blocked wait at once (without joining anything),
    later waits return False even though the key changed, and the watch can still be closed afterwards."""
    session = discovery.session(LONG_TTL)
    try:
        record = discovery.create(KEY, "a", session)
        assert record is not None
        watch = discovery.watch(KEY, record)
        interrupter = threading.Timer(0.05, watch.interrupt)
        start = time.monotonic()
        interrupter.start()
        assert watch.wait(10.0) is False
        assert time.monotonic() - start < 5.0
        interrupter.join()
        assert discovery.delete(KEY, record.token)
        assert watch.wait(1.0) is False  # interrupted for good: the delete is not reported
        watch.close()
        watch.close()  # idempotent after an interrupt too
    finally:
        session.close()


def test_exactly_one_leader_among_many_candidates(discovery: swarmha.Discovery) -> None:
    candidates = [swarmha.Candidate(discovery, KEY, node=f"n{i}", ttl=LONG_TTL).start() for i in range(5)]
    try:
        wait_for(lambda: leaders(candidates), 10.0, "a leader")
        for _ in range(50):  # sampled over ~0.1 s: never two
            assert len(leaders(candidates)) == 1
            time.sleep(0.002)
        (leader,) = leaders(candidates)
        assert discovery.get(KEY) is not None and discovery.get(KEY).value == leader.node  # type: ignore[union-attr]
    finally:
        for c in candidates:
            c.stop()


def test_tokens_strictly_increase_across_terms(discovery: swarmha.Discovery) -> None:
    candidates = [swarmha.Candidate(discovery, KEY, node=f"n{i}", ttl=LONG_TTL).start() for i in range(3)]
    tokens: list[int] = []
    try:
        for _ in range(5):
            wait_for(lambda: leaders(candidates), 10.0, "a leader")
            (leader,) = leaders(candidates)
            assert leader.term is not None
            tokens.append(leader.term.token)
            leader.resign()
            wait_for(lambda ld=leader: not ld.is_leader, 5.0, "the resigning leader to step down")
        assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), tokens
    finally:
        for c in candidates:
            c.stop()


def test_stop_hands_over_within_one_watch_round_trip(discovery: swarmha.Discovery) -> None:
    first = swarmha.Candidate(discovery, KEY, node="first", ttl=LONG_TTL).start()
    wait_for(lambda: first.is_leader, 10.0, "the first leader")
    second = swarmha.Candidate(discovery, KEY, node="second", ttl=LONG_TTL).start()
    try:
        first.stop()
        assert not first.is_leader
        took = wait_for(lambda: second.is_leader, 2.0, "the second candidate to lead")
        assert took < 2.0  # far below the TTL: the key was deleted, not left to expire
    finally:
        first.stop()
        second.stop()


def test_resign_lets_a_waiting_candidate_win_first(discovery: swarmha.Discovery) -> None:
    a_face, b_face = WaitSpy(discovery), WaitSpy(discovery)
    a = swarmha.Candidate(a_face, KEY, node="a", ttl=LONG_TTL).start()
    wait_for(lambda: a.is_leader, 10.0, "a to lead")
    b = swarmha.Candidate(b_face, KEY, node="b", ttl=LONG_TTL).start()
    try:
        wait_for(lambda: b_face.waiting_behind("a"), 10.0, "b to wait behind a")
        a.resign()
        wait_for(lambda: b.is_leader, 2.0, "b to lead after a resigned")
        assert not a.is_leader
        wait_for(lambda: a_face.waiting_behind("b"), 10.0, "a to wait behind b")
        b.resign()  # a is still campaigning, so it wins back
        wait_for(lambda: a.is_leader, 2.0, "a to lead again")
    finally:
        a.stop()
        b.stop()


def test_a_waiting_candidate_that_stops_leaves_nothing_behind(discovery: swarmha.Discovery) -> None:
    a = swarmha.Candidate(discovery, KEY, node="a", ttl=LONG_TTL).start()
    b_face = WaitSpy(discovery)
    b = swarmha.Candidate(b_face, KEY, node="b", ttl=LONG_TTL)
    try:
        wait_for(lambda: a.is_leader, 10.0, "a to lead")
        b.start()
        wait_for(lambda: b_face.waiting_behind("a"), 10.0, "b to wait behind a")
        b.stop()
        a.stop()
        # Nothing of b (a ZooKeeper ticket queued behind a) may take the key over once both stopped.
        wait_for(lambda: discovery.get(KEY) is None, 2.0, "the key to be vacant")
    finally:
        a.stop()
        b.stop()


def test_run_for_election_yields_alternating_values_and_ends_after_stop(discovery: swarmha.Discovery) -> None:
    c = swarmha.Candidate(discovery, KEY, node="n", ttl=LONG_TTL)
    rival_face = WaitSpy(discovery)
    rival = swarmha.Candidate(rival_face, KEY, node="rival", ttl=LONG_TTL)
    events = Collector(c.run_for_election())
    try:
        assert events.next() is True
        assert c.term is not None and c.term.node == "n" and c.term.key == KEY
        rival.start()
        wait_for(lambda: rival_face.waiting_behind("n"), 10.0, "the rival to wait behind n")
        c.resign()
        assert events.next() is False
        wait_for(lambda: rival.is_leader, 2.0, "the rival to lead")
        rival.stop()
        assert events.next() is True  # still campaigning after resign
        c.stop()
        assert events.next() is False
        events.join()
    finally:
        c.stop()
        rival.stop()


def test_follower_reports_current_leader_changes_and_vacancy(discovery: swarmha.Discovery) -> None:
    follower = swarmha.Follower(discovery, KEY)
    seen = Collector(follower.follow_election())
    c = swarmha.Candidate(discovery, KEY, node="10.0.0.1:4000", ttl=LONG_TTL)
    try:
        assert seen.next() is None
        c.start()
        leader = seen.next()
        assert leader is not None and leader.node == "10.0.0.1:4000"
        wait_for(lambda: c.is_leader, 5.0, "the candidate to see its own election")  # the follower may be first
        assert c.term is not None and leader.token == c.term.token
        assert follower.leader == leader
        c.stop()
        assert seen.next() is None
        follower.stop()
        seen.join()
    finally:
        c.stop()
        follower.stop()


def test_crashed_leader_is_replaced_once_its_session_expires(discovery: swarmha.Discovery) -> None:
    crashed = discovery.session(SHORT_TTL)  # a leader that will never renew again
    record = discovery.create(KEY, "crashed", crashed)
    assert record is not None
    crash_time = time.monotonic()
    c = swarmha.Candidate(discovery, KEY, node="next", ttl=SHORT_TTL).start()
    try:
        wait_for(lambda: c.is_leader, SHORT_TTL + 2.0, "the waiting candidate to take over")
        took = time.monotonic() - crash_time
        assert took <= SHORT_TTL + 1.0, f"failover took {took:.2f}s for ttl={SHORT_TTL}"
        assert c.term is not None and c.term.token > record.token
    finally:
        c.stop()
        crashed.close()


def test_leader_demotes_when_its_key_is_deleted_behind_its_back(discovery: swarmha.Discovery) -> None:
    c = swarmha.Candidate(discovery, KEY, node="n", ttl=LONG_TTL).start()
    try:
        wait_for(lambda: c.is_leader, 10.0, "a leader")
        term = c.term
        assert term is not None
        assert discovery.delete(KEY, term.token)
        wait_for(lambda: c.term != term, 2.0, "the leader to notice its key is gone")
        wait_for(lambda: c.is_leader, 5.0, "a new term for the still-campaigning candidate")
        assert c.term is not None and c.term.token > term.token
    finally:
        c.stop()


def test_store_outage_demotes_within_renew_deadline_then_recovers(store: StoreFixture) -> None:
    if not store.can_stop:
        pytest.skip(f"the {store.name} test store cannot be stopped")
    outage_demotes_then_recovers(store.url(), store.stop, store.start, SHORT_TTL)


def test_store_errors_surface_as_discovery_errors(store: StoreFixture) -> None:
    if not store.can_stop:
        pytest.skip(f"the {store.name} test store cannot be stopped")
    d = swarmha.connect(store.url())
    try:
        store.stop()
        with pytest.raises(DiscoveryUnavailable):
            d.session(SHORT_TTL)
    finally:
        store.start()
        d.close()


def test_asyncio_candidate_and_follower(store: StoreFixture) -> None:
    async def scenario() -> None:
        d = swarmha.connect(store.url())
        try:
            async with swarmha.aio.Follower(d, KEY) as follower, swarmha.aio.Candidate(d, KEY, "a", LONG_TTL) as c:
                seen = follower.follow_election()
                assert await asyncio.wait_for(anext(seen), 5) is None
                elections = c.run_for_election()
                assert await asyncio.wait_for(anext(elections), 10) is True
                assert c.is_leader and c.term is not None
                leader = await asyncio.wait_for(anext(seen), 5)
                assert leader == swarmha.Leader("a", c.term.token)
                await c.stop()
                assert await asyncio.wait_for(anext(elections), 5) is False
                with pytest.raises(StopAsyncIteration):
                    await asyncio.wait_for(anext(elections), 5)
                assert await asyncio.wait_for(anext(seen), 5) is None
        finally:
            d.close()

    asyncio.run(scenario())


def test_run_for_election_campaigns_when_called_not_when_first_advanced(discovery: swarmha.Discovery) -> None:
    candidates = [swarmha.Candidate(discovery, KEY, node=f"n{i}", ttl=LONG_TTL) for i in range(3)]
    iterators = [c.run_for_election() for c in candidates]  # taken, never advanced until the election is seen
    try:
        wait_for(lambda: len(leaders(candidates)) == 1, 10.0, "one leader among three never-iterated candidates")
        (leader,) = leaders(candidates)
        assert discovery.get(KEY) is not None and discovery.get(KEY).value == leader.node  # type: ignore[union-attr]
        # advanced later, the leader's iterator yields what happened since: its True first
        assert next(iterators[candidates.index(leader)]) is True
        leader.stop()
        wait_for(lambda: len(leaders(candidates)) == 1, 10.0, "a successor after the leader stopped")
    finally:
        for c in candidates:
            c.stop()
    assert all(list(it) in ([], [True, False], [False]) for it in iterators)


def test_follow_election_follows_when_called_and_yields_the_current_leader_first(
    discovery: swarmha.Discovery,
) -> None:
    follower = swarmha.Follower(discovery, KEY)
    leaders_seen = follower.follow_election()  # not advanced yet
    first = swarmha.Candidate(discovery, KEY, node="first", ttl=LONG_TTL).start()
    second = swarmha.Candidate(discovery, KEY, node="second", ttl=LONG_TTL)
    try:
        wait_for(lambda: first.is_leader, 10.0, "first elected")
        second.start()
        first.stop()
        wait_for(lambda: second.is_leader, 10.0, "second elected")
        wait_for(lambda: follower.leader is not None and follower.leader.node == "second", 10.0, "follower saw it")
        leader = next(leaders_seen)  # the leader current now, not the history it missed
        assert leader is not None and leader.node == "second" and leader.token == second.term.token  # type: ignore[union-attr]
    finally:
        first.stop()
        second.stop()
        follower.stop()
    assert list(leaders_seen) in ([], [None])


def test_async_run_for_election_campaigns_when_called(discovery: swarmha.Discovery) -> None:
    async def main() -> None:
        async with swarmha.aio.Candidate(discovery, KEY, node="a", ttl=LONG_TTL) as c:
            elections = c.run_for_election()
            await asyncio.to_thread(wait_for, lambda: c.is_leader, 10.0, "elected without iterating")
            assert await anext(elections) is True
            await c.stop()
            assert [x async for x in elections] == [False]

    asyncio.run(main())


# -- a shared lease (swarmha.Lease): many keys, one session --------------------------------------------------


def test_candidates_sharing_a_lease_lead_their_keys_with_one_session_and_own_tokens(
    discovery: swarmha.Discovery,
) -> None:
    lease = swarmha.Lease(discovery, ttl=LONG_TTL)
    keys = [f"shard/{i}" for i in range(20)]
    candidates = [swarmha.Candidate(discovery, key, node="n", lease=lease).start() for key in keys]
    rivals = [swarmha.Candidate(discovery, key, node="rival", ttl=LONG_TTL) for key in keys]
    try:
        wait_for(lambda: all(c.is_leader for c in candidates), 10.0, "every shard to be led")
        records = [discovery.get(key) for key in keys]
        assert all(r is not None and r.session == lease.id for r in records)  # one store session for all
        assert all(c.phase is swarmha.Phase.LEADING and c.ttl == LONG_TTL for c in candidates)
        for rival in rivals:
            rival.start()
        first = candidates[3].term
        assert first is not None
        candidates[3].stop()  # removes its own key only: the lease and every other term live on
        wait_for(lambda: rivals[3].is_leader, 10.0, "the rival to win the released shard")
        second = rivals[3].term
        assert second is not None and second.token > first.token
        assert all(c.is_leader for i, c in enumerate(candidates) if i != 3)
        assert not any(r.is_leader for i, r in enumerate(rivals) if i != 3)
    finally:
        for c in candidates + rivals:
            c.stop()
        lease.close()


def test_when_the_shared_session_is_lost_every_term_it_carried_ends(discovery: swarmha.Discovery) -> None:
    lease = swarmha.Lease(discovery, ttl=LONG_TTL)
    candidates = [swarmha.Candidate(discovery, f"shard/{i}", node="n", lease=lease) for i in range(5)]
    streams = [Collector(c.run_for_election()) for c in candidates]
    try:
        assert all(s.next(10.0) is True for s in streams)
        tokens = [c.term.token for c in candidates if c.term is not None]
        lost = lease.id
        lease._session.close()  # type: ignore[union-attr]  # as if the store expired it: every key goes with it
        assert all(s.next(10.0) is False for s in streams)  # every term ended
        assert all(s.next(10.0) is True for s in streams)  # and the candidates won again, with a new session
        assert lease.id != lost
        assert all(c.term is not None and c.term.token > t for c, t in zip(candidates, tokens, strict=True))
    finally:
        for c in candidates:
            c.stop()
        lease.close()


def test_a_lease_rejects_a_different_ttl_or_discovery(discovery: swarmha.Discovery) -> None:
    lease = swarmha.Lease(discovery, ttl=LONG_TTL)
    with pytest.raises(swarmha.errors.ConfigurationError, match="lease"):
        swarmha.Candidate(discovery, KEY, node="n", ttl=SHORT_TTL, lease=lease)
    other = swarmha.connect("memory://another-lease-store")
    try:
        with pytest.raises(swarmha.errors.ConfigurationError, match="lease"):
            swarmha.Candidate(other, KEY, node="n", lease=lease)
    finally:
        other.close()
        lease.close()


def test_the_non_blocking_forms_answer_as_the_blocking_ones(discovery: swarmha.Discovery) -> None:
    """``*_async`` (the election engine's request path) give the blocking call's answer or error as a future."""
    s1 = discovery.session(LONG_TTL)
    s2 = discovery.session(LONG_TTL)
    try:
        assert discovery.get_async(KEY).result(10) is None
        first = discovery.create_async(KEY, "a", s1).result(10)
        assert first is not None and first.value == "a" and first.session == s1.id
        assert discovery.create_async(KEY, "b", s2).result(10) is None
        assert discovery.get_async(KEY).result(10) == first
        assert discovery.list_async("svc").result(10) == {KEY: first}
        assert not discovery.delete_async(KEY, first.token + 1).result(10)
        assert discovery.delete_async(KEY, first.token).result(10)
        assert discovery.get(KEY) is None
        second = discovery.create_async(KEY, "b", s2).result(10)
        assert second is not None and second.token > first.token
        discovery.release_async(KEY, second.token, s2).result(10)
        assert discovery.get(KEY) is None
        s1.close()
        with pytest.raises(SessionExpired):
            discovery.create_async(KEY, "a", s1).result(10)
    finally:
        s1.close()
        s2.close()


def test_a_claim_answers_with_the_created_record_and_listing_or_with_the_holder(discovery: swarmha.Discovery) -> None:
    s1 = discovery.session(LONG_TTL)
    s2 = discovery.session(LONG_TTL)
    try:
        marker = discovery.put(f"{KEY}.election/transfer", "b", s1)
        won = discovery.claim_async(KEY, "a", s1, f"{KEY}.election").result(10)
        assert won.created is not None and won.created.value == "a" and won.holder is None
        assert won.listed == {f"{KEY}.election/transfer": marker}
        lost = discovery.claim_async(KEY, "b", s2, f"{KEY}.election").result(10)
        assert lost.created is None and lost.holder == won.created and lost.listed is None
    finally:
        s1.close()
        s2.close()
