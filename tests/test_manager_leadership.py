"""The reason given with ``Cluster leadership lost``: what the manager can tell from the store and its own probe."""

from __future__ import annotations

import asyncio
import time

import swarmha
from swarmha.manager.leadership import why_lost
from swarmha.manager.store_state import StoreState

KEY = "docker/swarm/leader"


def _why(store: StoreState | None = None, *, stopping: bool = False, stalled: float = 0.0, url: str = "") -> str:
    d = swarmha.connect(url or f"memory://why-{time.monotonic_ns()}")
    try:
        return asyncio.run(
            why_lost(stopping=stopping, store=store, discovery=d, key=KEY, node="10.0.0.1:4000",
                     renew_deadline=13.333, probe_period=1.0, stalled=stalled)
        )  # fmt: skip
    finally:
        d.close()


def test_a_stop_a_silent_store_and_a_stalled_process_are_told_apart() -> None:
    assert _why(stopping=True) == "released (shutting down)"
    store = StoreState("etcd://x/p")
    store.sending()
    store.sent_at = time.monotonic() - 3  # a probe waiting 3 s for its answer
    store.last_success = time.monotonic() - 4
    why = _why(store)
    assert why.startswith("renew deadline passed: the discovery store has not answered since ") and "4.0s ago" in why
    assert _why(StoreState("etcd://x/p"), stalled=9.0).startswith("renew deadline passed: this manager did not run")


def test_the_leader_key_says_whether_it_is_gone_taken_or_still_ours() -> None:
    url = f"memory://why-key-{time.monotonic_ns()}"
    d = swarmha.connect(url)
    try:
        assert _why(StoreState(url), url=url) == "the leader key is gone (its session expired or it was deleted)"
        session = d.session(30)
        d.put(KEY, "10.0.0.2:4000", session)
        token = d.get(KEY).token  # type: ignore[union-attr]
        assert _why(StoreState(url), url=url) == f"the leader key was taken by 10.0.0.2:4000 (term {token})"
        d.put(KEY, "10.0.0.1:4000", session)
        assert _why(StoreState(url), url=url).startswith("renew deadline passed: no renewal succeeded within 13.333s")
    finally:
        d.close()
