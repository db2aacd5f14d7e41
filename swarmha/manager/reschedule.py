"""Rescheduling on node failure (Swarm's watchdog): containers labelled
``com.docker.swarm.reschedule-policies=["on-node-failure"]`` (or created with ``-e reschedule:on-node-failure``)
are created again on a healthy engine when theirs turns unhealthy.

Driven by the manager after every engine refresh (:meth:`Watchdog.check`); every manager keeps track of which
engines went down, only the primary acts. What it guarantees and how:

* **Once.** Before moving a container the primary asks the healthy engines whether one with its swarm id
  already runs (a primary that just took over may follow one that moved it a moment ago).
* **Which containers move.** Those with the ``on-node-failure`` policy that were on the engine when it was last
  seen healthy; every other container is left alone (it comes back with its engine). The new container has the
  same name, configuration and labels — so the same ``com.docker.swarm.id`` and the same constraints and
  affinities, which the scheduler applies again (a container pinned with ``constraint:node==X`` to the dead node
  cannot move and is retried after every refresh until X returns). It is started if the old one was running
  (started through the manager, or seen running by the last refresh that reached its engine).
  Logs, as Swarm's: ``Rescheduled container OLD from NODE to NODE as NEW``, ``Container OLD was running,
  starting container NEW``.
* **When.** At the first refresh that finds the engine unhealthy (one refresh interval, ``--engine-refresh``,
  after it died, plus the engine request timeout when it does not refuse connections but hangs), then one
  create (and start) on the new engine.
* **No duplicate.** When the old engine answers again, every container there with the policy whose swarm id is
  now on another healthy engine (the stale copy) is removed with ``force``, as Swarm did — before the engine is
  marked healthy again (:meth:`Watchdog.returning`), so no listing shows the stale copy once it reads Healthy.
  Of two engines back at once, each holding a copy, a stopped copy yields to a running one, and otherwise
  neither removes its copy on the other's account until the other is done (a removal whose answer was lost
  after the engine did it would otherwise leave the container nowhere): exactly one copy stays
  (tests/test_reschedule.py). Every manager notes engines coming back, so a primary elected after the move
  removes the stale copy too. If the old engine comes back before the move was done, nothing moves.
* **Failure modes.** No engine can take it (constraints, ports, resources): logged, retried after each refresh.
  A manager started while the engine was away does not know it came back: it leaves a stale copy
  (``docker rm`` it; both copies carry the same swarm id).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from swarmha.manager.cluster import Cluster, Engine, NoEngine
from swarmha.manager.scheduler import SWARM_ID, Container
from swarmha.manager.scheduler.records import ON_NODE_FAILURE, reschedulable, to_engine
from swarmha.manager.upstream import UpstreamBroken, UpstreamUnreachable

_JSON = [(b"content-type", b"application/json")]
_FAILED = (UpstreamUnreachable, UpstreamBroken, OSError)

__all__ = ["ON_NODE_FAILURE", "Watchdog"]

log = logging.getLogger("swarmha.manager.reschedule")


def _has_policy(c: Container) -> bool:
    return reschedulable({"Labels": c.labels})


class Watchdog:
    """Reschedules the containers of engines that fail (see the module docstring)."""

    def __init__(self, cluster: Cluster, acts: Callable[[], bool] = lambda: True) -> None:
        """``acts``: whether this manager acts now (the primary); :meth:`returning` becomes the cluster's hook."""
        self.cluster = cluster
        self._acts = acts
        cluster.returning = self.returning
        self._healthy: dict[str, bool] = {}  # engine addr -> healthy at the last check
        self._lost: dict[str, dict[str, Container]] = {}  # dead engine addr -> its containers still to move
        self._returned: set[str] = set()  # engine addrs back from unhealthy: their stale copies to remove
        self._failed: set[str] = set()  # old ids whose move failed once (logged once, retried quietly)

    async def check(self) -> None:
        """Note which engines went down or came back since the last call; if this manager acts (the primary),
        move the containers of the dead ones and remove stale copies on those that came back."""
        for e in self.cluster.engines:
            was = self._healthy.get(e.addr)
            self._healthy[e.addr] = e.healthy
            if was and not e.healthy:
                lost = {c.id: c for c in e.records if c.id and _has_policy(c)}
                if lost:
                    log.info("node %s failed: rescheduling %d container(s)", e.name, len(lost))
                    self._lost[e.addr] = lost
            elif e.healthy:
                self._lost.pop(e.addr, None)  # back before its containers moved: they stay where they are
                if was is False:
                    self._returned.add(e.addr)
        if not self._acts():
            return
        for addr, lost in list(self._lost.items()):
            for c in list(lost.values()):
                if await self._move(addr, c):
                    del lost[c.id]
            if not lost:
                del self._lost[addr]
        await self._remove_stale()

    async def _move(self, addr: str, c: Container) -> bool:
        full = self.cluster.inspected(c.id)
        old = next((e for e in self.cluster.engines if e.addr == addr), None)
        if full is None or old is None:
            log.error("cannot reschedule container %s: its configuration is not known", c.id[:12])
            return True  # nothing to retry with
        swarm_id = c.swarm_id
        if swarm_id and await self._exists_elsewhere(swarm_id, addr):
            log.info("container %s is already running elsewhere (swarm id %s): not moved again", c.id, swarm_id[:12])
            return True
        body: dict[str, Any] = dict(full.get("Config") or {})
        if body.get("Hostname") == c.id[:12]:
            body.pop("Hostname")  # Docker's default (the old id): the new container gets its own
        body["HostConfig"] = dict(full.get("HostConfig") or {})
        name = str(full.get("Name") or c.name).lstrip("/")
        try:
            engine, _env = self.cluster.place(body, reserve=True)
        except NoEngine as e:
            self._fail(c, f"no node can take it: {e}")
            return False
        try:
            r = await self.cluster.call(
                engine,
                "POST",
                f"/containers/create?name={quote(name)}",
                body=json.dumps(to_engine(body, engine.ncpu)).encode(),
                headers=_JSON,
            )
        except _FAILED as e:
            self._fail(c, f"node {engine.name} failed: {e}")
            return False
        finally:
            self.cluster.unplace(body)
        if r.status != 201:
            self._fail(c, f"node {engine.name} refused it: {r.status} {r.body.decode(errors='replace').strip()}")
            return False
        new_id = str(r.json()["Id"])
        self.cluster.placed(engine, new_id, body, name=name)
        self.cluster.forget(c.id)  # gone from the dead node's list: not shown twice, not counted there
        self._failed.discard(c.id)
        log.info("Rescheduled container %s from %s to %s as %s", c.id, old.name, engine.name, new_id)
        if c.state == "running":
            log.info("Container %s was running, starting container %s", c.id, new_id)
            await self._start(engine, new_id)
        return True

    async def _exists_elsewhere(self, swarm_id: str, addr: str) -> bool:
        """Whether a healthy engine other than ``addr`` has a container with ``swarm_id`` now (asked, not taken
        from the last refresh: a primary that just took over may follow one that moved it a moment ago)."""
        filters = quote(json.dumps({"label": [f"{SWARM_ID}={swarm_id}"]}))
        for e in self.cluster.healthy():
            if e.addr == addr:
                continue
            try:
                r = await self.cluster.call(e, "GET", f"/containers/json?all=1&filters={filters}")
            except _FAILED:
                continue
            if r.status == 200 and r.json():
                return True
        return False

    def _fail(self, c: Container, why: str) -> None:
        if c.id not in self._failed:
            self._failed.add(c.id)
            log.error("Failed to reschedule container %s: %s (retrying after every refresh)", c.id, why)

    async def _start(self, engine: Engine, cid: str) -> None:
        try:
            r = await self.cluster.call(engine, "POST", f"/containers/{cid}/start", body=b"")
            ok = r.status in (204, 304)
        except _FAILED:
            ok = False
        if ok:
            self.cluster.started(cid)
        if not ok:
            log.error("Failed to start rescheduled container %s", cid)

    async def _remove_stale(self) -> None:
        for addr in list(self._returned):
            e = next((e for e in self.cluster.engines if e.addr == addr), None)
            if e is None or not e.healthy:
                self._returned.discard(addr)  # gone again (or removed): checked when it next comes back
                continue
            # The copy to keep is on an engine that did not come back itself, or a running one: were two returned
            # engines to count each other's copy alike, a removal on one whose answer was lost would leave both
            # copies removed.
            elsewhere: dict[str, tuple[Engine, str, bool]] = {}  # swarm id -> (engine, id, on a returned engine)
            for o in self.cluster.engines:
                if not o.healthy or o.addr == addr:
                    continue
                back = o.addr in self._returned
                for c in o.records:
                    if not c.swarm_id or (back and c.state != "running"):
                        continue
                    if c.swarm_id not in elsewhere or (elsewhere[c.swarm_id][2] and not back):
                        elsewhere[c.swarm_id] = (o, c.id, back)  # a copy on an engine that stayed wins
            done = True
            for c in e.records:
                if c.swarm_id not in elsewhere or not _has_policy(c):
                    continue
                if c.state == "running" and elsewhere[c.swarm_id][2]:
                    continue  # both running and both back: the engine looked at first keeps its copy
                other, new_id, _ = elsewhere[c.swarm_id]
                if not await self._remove_copy(e, c, other, new_id):
                    done = False
            if done:
                self._returned.discard(addr)

    async def returning(self, e: Engine, records: list[Container]) -> list[Container]:
        """Engine ``e``, unhealthy until now, answered a whole refresh and is about to be marked healthy: remove
        there (the primary only) the stale copies of the containers moved to an engine that stayed healthy, so
        that no listing shows them once ``e`` is back; returns the records to keep. A copy whose twin is on
        another engine that came back is left to :meth:`check` (the rules of the module docstring)."""
        if not self._acts():
            return records
        stayed: dict[str, tuple[Engine, str]] = {}  # swarm id -> (engine, id) of the copy that stays
        for o in self.cluster.engines:
            if o.healthy and o.addr != e.addr and o.addr not in self._returned:
                for c in o.records:
                    if c.swarm_id:
                        stayed.setdefault(c.swarm_id, (o, c.id))
        keep = []
        for c in records:
            twin = stayed.get(c.swarm_id) if c.swarm_id and _has_policy(c) else None
            if twin is None or not await self._remove_copy(e, c, *twin):
                keep.append(c)
        return keep

    async def _remove_copy(self, e: Engine, c: Container, other: Engine, new_id: str) -> bool:
        """Remove ``c``, the stale copy on ``e`` of container ``new_id`` on ``other``; whether it is gone."""
        try:
            r = await self.cluster.call(e, "DELETE", f"/containers/{c.id}?force=1")
        except _FAILED as err:
            log.warning("cannot remove the stale copy %s on %s yet: %s", c.id[:12], e.name, err)
            return False
        if r.status not in (204, 404):
            why = r.body.decode(errors="replace").strip()
            log.warning("cannot remove the stale copy %s on %s: %s", c.id[:12], e.name, why)
            return False
        log.info("container %s was rescheduled on node %s as %s: removed its stale copy", c.id, other.name, new_id)
        self.cluster.forget(c.id)
        return True
