"""The campaign's phase table, walked as a table: every (phase, signal) pair, and a campaign that follows it."""

from __future__ import annotations

import collections
import itertools

import pytest

import swarmha
from swarmha.election import _campaign
from swarmha.election._phases import TABLE, Action, Phase, Signal, step
from tests.support.helpers import wait_for

PAIRS = list(itertools.product(Phase, Signal))


@pytest.mark.parametrize(("phase", "signal"), PAIRS, ids=[f"{p.name}-{s.name}" for p, s in PAIRS])
def test_every_pair_is_a_move_or_ignored(phase: Phase, signal: Signal) -> None:
    move = step(phase, signal)
    assert move == TABLE.get((phase, signal))
    if move is None:
        return
    after, actions = move
    assert isinstance(after, Phase) and all(isinstance(a, Action) for a in actions)
    assert len(set(actions)) == len(actions), "an action twice in one move"
    # ELECTED exactly on entering LEADING; LOST exactly on leaving it
    assert (Action.ELECTED in actions) == (after is Phase.LEADING and phase is not Phase.LEADING)
    assert (Action.LOST in actions) == (phase is Phase.LEADING and after is not Phase.LEADING)
    # the key is released only for a term that ended first (LOST in this move, or DRAINING: in the move that
    # entered it), only on a graceful end, and is held only in LEADING and DRAINING
    if Action.RELEASE in actions:
        assert phase in (Phase.LEADING, Phase.DRAINING)
        if phase is Phase.LEADING:
            assert actions.index(Action.LOST) < actions.index(Action.RELEASE)
        assert signal in (Signal.RESIGN, Signal.TRANSFER, Signal.STOP, Signal.END)
    holds_key = (Phase.LEADING, Phase.DRAINING)
    if phase in holds_key and after not in holds_key:
        assert Action.RELEASE in actions or signal is Signal.DEMOTE, "a key left behind"
    # END is emitted exactly on entering STOPPED, as the last action
    assert (Action.ENDED in actions) == (after is Phase.STOPPED)
    if Action.ENDED in actions:
        assert actions[-1] is Action.ENDED


def test_a_term_lost_to_the_store_is_never_released_nor_drained() -> None:
    """DEMOTE ends the term at once, without a release: the key is already gone, or the store could not be
    reached; a drain in progress ends with it."""
    assert step(Phase.LEADING, Signal.DEMOTE) == (Phase.WAITING, (Action.LOST,))
    assert step(Phase.DRAINING, Signal.DEMOTE) == (Phase.WAITING, ())
    assert all(step(p, Signal.DEMOTE) is None for p in Phase if p not in (Phase.LEADING, Phase.DRAINING))


def test_a_drained_end_delivers_lost_first_and_releases_with_the_end_asked_for() -> None:
    assert step(Phase.LEADING, Signal.DRAIN) == (Phase.DRAINING, (Action.LOST,))
    for end in (Signal.STOP, Signal.RESIGN, Signal.TRANSFER):
        leading, draining = step(Phase.LEADING, end), step(Phase.DRAINING, end)
        assert leading is not None and draining is not None
        assert leading[0] == draining[0] and leading[1] == (Action.LOST, *draining[1])


def test_stopped_is_the_only_end_and_every_phase_reaches_it() -> None:
    exits = collections.defaultdict(set)
    for (phase, _), (after, _) in TABLE.items():
        exits[phase].add(after)
    assert not exits[Phase.STOPPED]
    for phase in Phase:
        if phase is Phase.STOPPED:
            continue
        assert exits[phase], f"{phase} has no way out"
        after = phase
        for signal in (Signal.STOP, Signal.END):
            move = step(after, signal)
            after = move[0] if move is not None else after
        assert after is Phase.STOPPED, f"{phase} does not reach STOPPED by STOP, END"


def test_a_campaign_moves_only_along_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """A campaign that starts, leads, resigns, leads again and stops makes exactly the table's moves."""
    moves: list[tuple[Phase, Signal]] = []

    def recording(phase: Phase, signal: Signal) -> tuple[Phase, tuple[Action, ...]] | None:
        move = step(phase, signal)
        if move is not None:
            moves.append((phase, signal))
        return move

    monkeypatch.setattr(_campaign, "step", recording)
    discovery = swarmha.connect("memory://phases")
    c = swarmha.Candidate(discovery, "k", node="n", ttl=3.0)
    elections = c.run_for_election()
    assert next(elections) is True
    c.resign()
    assert next(elections) is False
    assert next(elections) is True
    c.stop()
    assert list(elections) == [False]
    wait_for(lambda: c.phase is Phase.STOPPED, 5.0, "the campaign to end")
    assert moves[0] == (Phase.LATENT, Signal.START)
    assert (Phase.LEADING, Signal.RESIGN) in moves and (Phase.LEADING, Signal.STOP) in moves
    assert moves[-1] == (Phase.STOPPING, Signal.END)
    assert [s for _, s in moves].count(Signal.WIN) == 2
    discovery.close()
