"""The primary's event-fed view (swarmha.manager.view) against real engines: read-your-writes, engine-side changes
after their event, a full read after a reconnect.

In-process: a :class:`Cluster` over the session's two engines, the primary's :class:`PrimaryAPI` behind the
manager's HTTP server on a loopback port, and the view asked directly (``view.listing``/``view.inspect`` return
None when they would fall back to asking the engines, so an answer proves it came from the view).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from swarmha.manager.api import PrimaryAPI, docker_path
from swarmha.manager.api._docker import error_body
from swarmha.manager.cluster import Cluster
from swarmha.manager.http import Exchange, Head, Server
from swarmha.manager.quick import QuickAnswers
from swarmha.manager.upstream import Pool, Response, Upstream, request
from swarmha.manager.view import EngineView
from tests.support.docker_engines import IMAGE, DockerEngine, docker_engines, registry
from tests.support.net import free_port

__all__ = ["docker_engines", "registry"]  # the fixtures, imported so pytest finds them

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]


class Primary:
    """A primary API in this process over ``addrs``, served on a loopback port."""

    def __init__(self, addrs: list[str]) -> None:
        self.cluster = Cluster(static=addrs)
        self.api = PrimaryAPI(self.cluster, dict)
        quick = QuickAnswers(self.api, lambda: True, lambda: False)
        #: The answers the server gave at once from the view (the manager's quick answers, see swarmha.manager.quick).
        self.quick: list[bytes] = []

        def counted(head: Head) -> tuple[bytes, bytes, bytes] | None:
            got = quick(head)
            if got is not None:
                self.quick.append(head.target)
            return got

        self.server = Server(self._handle, error_body=error_body, quick=counted)
        self.pool = Pool()
        self.up: Upstream | None = None

    async def _handle(self, ex: Exchange) -> None:
        version, path = docker_path(ex)
        await self.api.handle(ex, version, path)

    async def start(self) -> None:
        await self.cluster.refresh()
        port = (await self.server.listen("127.0.0.1", 0))[0][1]
        self.up = Upstream("127.0.0.1", port, None)
        assert (await self.get("/containers/json")).status == 200  # starts the view
        await until(lambda: self.synced(), "every engine's view synced")

    def synced(self) -> bool:
        views = [self.api.view.view(e) for e in self.cluster.healthy()]
        return bool(views) and all(v is not None and v.synced for v in views)

    async def get(self, target: str) -> Response:
        assert self.up is not None
        return await request(self.pool, self.up, "GET", target, timeout=10)

    async def send(self, method: str, target: str, body: Any = None) -> Response:
        assert self.up is not None
        data = json.dumps(body).encode() if body is not None else None
        headers = [(b"content-type", b"application/json")] if data is not None else []
        return await request(self.pool, self.up, method, target, body=data, headers=headers, timeout=30)

    async def listed(self, **query: str) -> list[dict[str, Any]]:
        """The view's own list (not the engines'): fails when the view would have stepped aside."""
        body = await self.api.view.listing({k: [v] for k, v in query.items()})
        assert body is not None, "the view did not answer the list"
        out: list[dict[str, Any]] = json.loads(body)
        return out

    async def inspected(self, ident: str) -> dict[str, Any] | None:
        body = await self.api.view.inspect(ident, "")
        return json.loads(body) if body is not None else None

    async def close(self) -> None:
        self.server.close()
        await self.server.drain(1)
        self.pool.close()
        await self.cluster.close()


async def until(check: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = 20.0) -> None:
    """Wait (bounded) for ``check`` to hold; fails naming ``what``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = check()
        if not isinstance(got, bool):
            got = await got
        if got:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def primary(addrs: list[str]) -> AsyncIterator[Primary]:
    p = Primary(addrs)
    try:
        await p.start()
        yield p
    finally:
        await p.close()


def _ids(items: list[dict[str, Any]]) -> set[str]:
    return {str(i["Id"]) for i in items}


def test_create_start_rm_through_the_manager_are_seen_by_the_very_next_list_and_inspect(
    docker_engines: list[DockerEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The engines' events usually arrive before the relayed answer does; ignoring them shows that the manager's
    # own marks alone make its writes visible to the next read.
    monkeypatch.setattr(EngineView, "event", lambda self, ev: None)

    async def main() -> None:
        async with primary([e.addr for e in docker_engines]) as p:
            name = f"view{uuid.uuid4().hex[:8]}"
            config = {"Image": IMAGE, "Cmd": ["sleep", "60"], "HostConfig": {"NetworkMode": "none"}}
            r = await p.send("POST", f"/containers/create?name={name}", config)
            assert r.status == 201, r.body
            cid = r.json()["Id"]
            try:
                found = await p.inspected(cid)
                assert found is not None and found["Id"] == cid and found["State"]["Status"] == "created"
                assert found["Node"]["Name"] in {e.name for e in p.cluster.engines}
                assert (await p.inspected(name)) is not None  # by name, as dockerd resolves it
                item = next(i for i in await p.listed(all="1") if i["Id"] == cid)
                assert item["Names"] == [f"/{found['Node']['Name']}/{name}"] and item["Status"] == "Created"
                assert cid not in _ids(await p.listed())  # not running: not in a plain list

                assert (await p.send("POST", f"/containers/{name}/start")).status == 204
                running = await p.inspected(cid)
                assert running is not None and running["State"]["Running"] is True
                item = next(i for i in await p.listed() if i["Id"] == cid)
                assert item["State"] == "running" and item["Status"].startswith("Up ")
                over_http = (await p.get(f"/containers/{cid[:12]}/json")).json()
                assert over_http["State"]["Running"] is True and over_http["Node"] == running["Node"]
                assert cid in _ids((await p.get("/v1.41/containers/json")).json())  # over HTTP as well
                assert (await p.get("/v1.41/containers/json")).json() == await p.listed()
            finally:
                r = await p.send("DELETE", f"/containers/{cid}?force=1")
            assert r.status == 204, r.body
            assert cid not in _ids((await p.get("/v1.41/containers/json?all=1")).json())  # the very next list
            assert cid not in _ids(await p.listed(all="1"))
            assert p.quick, "the server answered no list or inspect at once from the view"
            assert await p.inspected(cid) is None  # unknown to the view: the engines are asked, and say 404
            assert (await p.get(f"/containers/{cid}/json")).status == 404

    asyncio.run(main())


def test_a_change_made_on_the_engine_itself_is_seen_once_its_event_arrived(docker_engines: list[DockerEngine]) -> None:
    engine = docker_engines[0]

    async def main() -> None:
        async with primary([e.addr for e in docker_engines]) as p:
            name = f"direct{uuid.uuid4().hex[:8]}"
            cid = await asyncio.to_thread(engine.docker, "create", "--network", "none", "--name", name, IMAGE, "true")
            cid = cid.stdout.strip()

            async def listed() -> bool:
                return cid in _ids(await p.listed(all="1"))

            await until(listed, "the engine's create event applied")
            await asyncio.to_thread(engine.docker, "rename", name, name + "-b")
            await until(lambda: _inspected_name(p, cid, "/" + name + "-b"), "the rename event applied")
            await asyncio.to_thread(engine.docker, "rm", cid)

            async def gone() -> bool:
                return cid not in _ids(await p.listed(all="1"))

            await until(gone, "the engine's destroy event applied")
            views = [p.api.view.view(e) for e in p.cluster.healthy()]
            assert all(v is not None and v.full_reads == 1 for v in views)  # events did it, not a new full read

    asyncio.run(main())


async def _inspected_name(p: Primary, cid: str, name: str) -> bool:
    found = await p.inspected(cid)
    return found is not None and found["Name"] == name


class Cut:
    """A TCP relay to ``target`` that can drop every connection and refuse new ones (an engine out of reach)."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.transport.abort()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self.writers -= {writer, up_writer}


def test_an_engine_that_reconnects_is_read_in_full_again(docker_engines: list[DockerEngine]) -> None:
    engine = docker_engines[0]

    async def main() -> None:
        cut = Cut(engine.addr)
        await cut.up()
        async with primary([cut.addr]) as p:
            (e,) = p.cluster.healthy()
            view = p.api.view.view(e)
            assert view is not None and view.full_reads == 1
            await cut.down()  # the event stream breaks; what happens now is never seen as an event
            await until(lambda: not view.synced, "the view no longer synced")
            assert await p.api.view.listing({}) is None  # not synced: the engines would be asked
            name = f"missed{uuid.uuid4().hex[:8]}"
            made = await asyncio.to_thread(engine.docker, "create", "--network", "none", "--name", name, IMAGE, "true")
            cid = made.stdout.strip()
            try:
                await cut.up()
                await until(lambda: view.synced, "the view synced again")
                assert view.full_reads == 2
                assert cid in _ids(await p.listed(all="1"))  # read in full: the missed create is there
            finally:
                await asyncio.to_thread(engine.docker, "rm", "-f", cid, check=False)
        await cut.down()

    asyncio.run(main())


def test_a_replica_marks_every_engine_when_the_primary_answers_a_write(
    docker_engines: list[DockerEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica does not know which engine the primary chose: the primary's answer head marks them all."""
    monkeypatch.setattr(EngineView, "event", lambda self, ev: None)  # only the marks keep the view current
    engine = docker_engines[1]

    async def main() -> None:
        async with primary([e.addr for e in docker_engines]) as p:
            view = p.api.view
            name = f"fwd{uuid.uuid4().hex[:8]}"

            async def written(method: str, target: str, *cmd: str) -> str:
                """``cmd`` run on the engine (as the primary would), then the replica's mark for ``target``."""
                out = (await asyncio.to_thread(engine.docker, *cmd)).stdout.strip()
                on_head = view.forwarded(method, target)
                assert on_head is not None
                on_head(200, [])
                return out

            cid = await written("POST", "/v1.41/containers/create", "create", "--network", "none", "--name", name,
                                IMAGE, "sleep", "60")  # fmt: skip
            try:
                assert cid in _ids(await p.listed(all="1"))
                await written("POST", f"/containers/{name}/start", "start", name)
                found = await p.inspected(name)
                assert found is not None and found["State"]["Running"] is True
                await written("POST", f"/containers/{name}/update", "update", "--cpu-shares", "512", name)
                found = await p.inspected(cid)  # an inspect-only change: the named container is fetched again
                assert found is not None and found["HostConfig"]["CpuShares"] == 512
            finally:
                await written("DELETE", f"/containers/{name}?force=1", "rm", "-f", name)
            assert cid not in _ids(await p.listed(all="1"))
            assert view.forwarded("GET", "/containers/json") is None

    asyncio.run(main())


def test_the_view_steps_aside_while_an_engine_is_unhealthy(docker_engines: list[DockerEngine]) -> None:
    async def main() -> None:
        down = f"127.0.0.1:{free_port()}"  # nothing listens there
        p = Primary([docker_engines[0].addr, down])
        try:
            await p.cluster.refresh()
            assert [e.addr for e in p.cluster.healthy()] == [docker_engines[0].addr]
            assert await p.api.view.listing({}) is None  # what to show of its containers is the ordinary path's
        finally:
            await p.close()

    asyncio.run(main())


def test_image_network_and_volume_lists_are_answered_from_the_view_and_follow_writes_and_events(
    docker_engines: list[DockerEngine],
) -> None:
    engine = docker_engines[0]

    async def main() -> None:
        async with primary([e.addr for e in docker_engines]) as p:
            asked: list[str] = []
            call = p.cluster.call

            async def counted(e: Any, method: str, target: str, **kw: Any) -> Response:
                asked.append(f"{method} {target}")
                return await call(e, method, target, **kw)

            p.cluster.call = counted  # type: ignore[method-assign]

            async def names(target: str, field: str) -> set[str]:
                r = await p.get(target)
                assert r.status == 200, r.body
                items = r.json()["Volumes"] if target.startswith("/volumes") else r.json()
                out = set()
                for item in items or []:
                    value = item.get(field)
                    out.update(value if isinstance(value, list) else [str(value)])
                return out

            async def without_view(target: str, field: str) -> set[str]:
                parts = (p.api.images, p.api.networks, p.api.volumes)
                for part in parts:
                    part.view = None
                try:
                    return await names(target, field)
                finally:
                    for part in parts:
                        part.view = p.api.view

            # the view's answers are the engines' own, merged alike
            for target, field in (("/networks", "Name"), ("/volumes", "Name"), ("/images/json", "RepoTags")):
                await until(lambda t=target: p.api.view.lists(p.cluster.healthy(), t), f"{target} from the view")
                asked.clear()
                from_view = await names(target, field)
                assert not [a for a in asked if a.startswith(f"GET {target}")], asked  # no engine was asked
                assert from_view == await without_view(target, field)
                assert [a for a in asked if a.startswith(f"GET {target}")], "without the view, the engines were asked"

            # a write through the manager: the very next list has it
            net = f"viewnet{uuid.uuid4().hex[:8]}"
            r = await p.send("POST", "/networks/create", {"Name": net, "CheckDuplicate": True})
            assert r.status == 201, r.body
            assert any(n.endswith(net) for n in await names("/networks", "Name"))
            # changes made on an engine itself: seen once their events arrived
            vol, tag = f"viewvol{uuid.uuid4().hex[:8]}", f"viewtag{uuid.uuid4().hex[:8]}:1"
            await asyncio.to_thread(engine.docker, "volume", "create", vol)
            await asyncio.to_thread(engine.docker, "tag", IMAGE, tag)

            async def seen() -> bool:
                return any(n.endswith(vol) for n in await names("/volumes", "Name")) and any(
                    t.endswith(tag) for t in await names("/images/json", "RepoTags")
                )

            await until(seen, "the engine's volume and tag events applied")
            views = [p.api.view.view(e) for e in p.cluster.healthy()]
            assert all(v is not None and v.full_reads == 1 for v in views)  # events did it, not a new full read

    asyncio.run(main())
