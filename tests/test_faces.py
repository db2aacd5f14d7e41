"""The sync and asyncio faces have the same members with the same meaning (docs/api.md lists them)."""

from __future__ import annotations

import inspect
import signal
import threading

import pytest

import swarmha
from swarmha.errors import ConfigurationError
from tests.support.helpers import wait_for

#: Members that wait, and are therefore coroutines on the asyncio face.
WAITING = {"resign", "stop", "transfer"}
ITERATORS = {"run_for_election", "follow_election"}


def parameters(function: object) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]  # type: ignore[arg-type]


def public(cls: type) -> dict[str, object]:
    return {name: getattr(cls, name) for name in dir(cls) if not name.startswith("_")}


@pytest.mark.parametrize("name", ["Candidate", "Follower"])
def test_both_faces_have_the_same_public_members_and_signatures(name: str) -> None:
    sync, aio = getattr(swarmha, name), getattr(swarmha.aio, name)
    members = public(sync)
    assert members.keys() == public(aio).keys()
    assert parameters(sync) == parameters(aio)
    for member, value in members.items():
        other = getattr(aio, member)
        assert isinstance(value, property) == isinstance(other, property), member
        if isinstance(value, property):
            continue
        # the same parameters; only the return type differs (Iterator / AsyncIterator, None / awaitable None)
        assert parameters(value) == parameters(other), member
        assert inspect.iscoroutinefunction(other) == (member in WAITING), member
        assert not inspect.iscoroutinefunction(value), member
    assert {"start", "stop", "stop_on_signals"} <= members.keys()
    assert len(ITERATORS & members.keys()) == 1
    assert sync.__repr__ is not object.__repr__ and aio.__repr__ is sync.__repr__


def test_both_faces_answer_the_same_values() -> None:
    d = swarmha.connect("memory://faces")
    sync = swarmha.Candidate(d, "k", node="n1", ttl=6.0, renew_deadline=3.0)
    aio = swarmha.aio.Candidate(d, "k", node="n1", ttl=6.0, renew_deadline=3.0)
    for member in ("key", "node", "ttl", "renew_deadline", "is_leader", "term"):
        assert getattr(sync, member) == getattr(aio, member), member
    assert repr(sync).replace("Candidate", "") == repr(aio).replace("Candidate", "")
    holder = swarmha.Candidate(d, "k", node="holder", ttl=6.0).start()
    try:
        wait_for(lambda: holder.is_leader, 5.0, "holder elected")
        followers = [swarmha.Follower(d, "k"), swarmha.aio.Follower(d, "k")]
        # not following: both read the store now
        assert [f.leader for f in followers] == [swarmha.Leader("holder", holder.term.token)] * 2  # type: ignore[union-attr]
        assert followers[0].start() is followers[0] and followers[1].start() is followers[1]
        wait_for(lambda: all(f._follow.seen for f in followers), 5.0, "both followers read the key")
        assert followers[0].leader == followers[1].leader
        followers[0].stop()
        followers[1]._stop_now(None)
    finally:
        holder.stop()
        d.close()


def test_stop_on_signals_refuses_a_thread_other_than_the_main_one() -> None:
    d = swarmha.connect("memory://faces-signal")
    c = swarmha.Candidate(d, "k", node="n1", ttl=6.0)
    errors: list[BaseException] = []

    def other() -> None:
        try:
            c.stop_on_signals(signal.SIGUSR1)
        except ConfigurationError as e:
            errors.append(e)

    t = threading.Thread(target=other)
    t.start()
    t.join(5)
    assert errors and "main thread" in str(errors[0])
    c.stop()
    d.close()


def test_stop_on_signals_stops_without_raising_and_restores_the_handler() -> None:
    d = swarmha.connect("memory://faces-signal-2")
    previous = signal.getsignal(signal.SIGUSR1)
    c = swarmha.Candidate(d, "k", node="n1", ttl=6.0).stop_on_signals(signal.SIGUSR1)
    try:
        elections = c.run_for_election()
        assert next(elections) is True
        signal.raise_signal(signal.SIGUSR1)  # our handler: no exception here
        assert list(elections) == [False]  # the loop's not-leader branch runs, then the iterator ends
        assert d.get("k") is None  # released
    finally:
        c.stop()
        d.close()
    assert signal.getsignal(signal.SIGUSR1) == previous
