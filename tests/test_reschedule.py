"""The watchdog's stale-copy removal on hand-built engines (the rule; the real path is tests/test_scheduler_docker.py).

Two engines come back at once, each holding a copy of one rescheduled container, and a removal's answer may be
lost after the engine did remove it (UpstreamBroken): whatever order the engines are looked at in, exactly one
copy is left, and it is the running one when only one runs. One engine coming back while the other stayed: its
stale copy is removed before the cluster marks it healthy (:meth:`Watchdog.returning`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from swarmha.manager.cluster import Engine
from swarmha.manager.reschedule import Watchdog
from swarmha.manager.scheduler import SWARM_ID, Container
from swarmha.manager.upstream import Response, UpstreamBroken

POLICY = {SWARM_ID: "swarm-1", "com.docker.swarm.reschedule-policies": '["on-node-failure"]'}


class Engines:
    """The part of Cluster the watchdog's removal uses; ``lossy``: the engine whose DELETE answers are lost."""

    def __init__(self, lossy: str, states: tuple[str, str] = ("exited", "exited")) -> None:
        self.engines = [
            Engine(
                addr=addr, upstream=None, name=addr, healthy=True, records=[Container(cid, labels=POLICY, state=state)]
            )  # type: ignore[arg-type]
            for addr, cid, state in (("a", "original", states[0]), ("b", "moved", states[1]))
        ]
        self.alive = {"original", "moved"}  # what the engines really hold
        self.lossy = lossy

    def healthy(self) -> list[Engine]:
        return [e for e in self.engines if e.healthy]

    async def call(self, e: Engine, method: str, target: str, **kw: Any) -> Response:
        assert method == "DELETE", target
        cid = target.split("/")[2].split("?")[0]
        self.alive.discard(cid)
        if e.addr == self.lossy:
            raise UpstreamBroken("the answer was lost", retryable=False)
        return Response(204, [], b"")

    def inspected(self, ident: str) -> None:
        return None  # no configuration known: the watchdog does not move it (not what this test is about)

    def forget(self, ident: str) -> None:
        for e in self.engines:
            e.records = [c for c in e.records if c.id != ident]


STATES = [("exited", "exited"), ("running", "running"), ("running", "exited"), ("exited", "running")]


@pytest.mark.parametrize("states", STATES, ids=["-".join(s) for s in STATES])
@pytest.mark.parametrize("lossy", ["a", "b", ""])
def test_two_engines_back_at_once_keep_exactly_one_copy_the_running_one_if_any(
    lossy: str, states: tuple[str, str]
) -> None:
    cluster = Engines(lossy, states)
    wd = Watchdog(cluster)  # type: ignore[arg-type]

    async def rounds() -> None:
        await wd.check()  # both seen healthy
        for e in cluster.engines:
            e.healthy = False
        await wd.check()  # both down (not moved: no configuration known here)
        for e in cluster.engines:
            e.healthy = True
        for _ in range(3):
            await wd.check()  # both back: stale copies removed

    asyncio.run(rounds())
    assert len(cluster.alive) == 1, cluster.alive
    if states.count("running") == 1:  # a stopped copy yields to the running one
        assert cluster.alive == {("original", "moved")[states.index("running")]}


def test_an_engine_coming_back_loses_its_stale_copy_before_it_is_healthy_again_on_the_primary_only() -> None:
    cluster = Engines("")
    back = cluster.engines[0]
    back.healthy = False
    other = Container("other", labels={**POLICY, SWARM_ID: "swarm-2"})  # no copy elsewhere: kept
    assert asyncio.run(Watchdog(cluster, acts=lambda: False).returning(back, [*back.records, other])) == [
        *back.records,
        other,
    ]
    assert cluster.alive == {"original", "moved"}
    wd = Watchdog(cluster)  # type: ignore[arg-type]
    assert cluster.returning == wd.returning  # type: ignore[attr-defined]
    assert asyncio.run(wd.returning(back, [*back.records, other])) == [other]
    assert cluster.alive == {"moved"}
