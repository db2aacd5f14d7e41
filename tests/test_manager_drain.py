"""What a switching primary waits for before its key goes: the short requests it serves, never a stream."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import attrs

from swarmha.manager.http import Exchange
from swarmha.manager.switchover import ShortRequests, is_stream


@attrs.define(eq=False)
class _Ex:
    """The parts of an Exchange that tell a stream from a short request."""

    method: str
    path: str
    query_string: str = ""
    upgrade: bool = False
    has_body: bool = False
    query: dict[str, Any] = attrs.field(factory=dict)

    def arg(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[-1] if values else default


def _ex(method: str, path: str, **kw: Any) -> Exchange:
    return cast(Exchange, _Ex(method, path, **kw))


def test_streams_are_told_from_short_requests() -> None:
    assert is_stream(_ex("GET", "/v1.41/containers/c1/logs", query_string="follow=1"), "/containers/c1/logs")
    assert is_stream(_ex("GET", "/events"), "/events")
    assert is_stream(_ex("POST", "/containers/c1/attach", upgrade=True), "/containers/c1/attach")
    assert not is_stream(_ex("POST", "/containers/create", has_body=True), "/containers/create")
    assert not is_stream(_ex("POST", "/containers/c1/start"), "/containers/c1/start")


def test_finished_waits_for_short_requests_only_and_is_bounded() -> None:
    async def main() -> None:
        short = ShortRequests()
        with short.serving(_ex("GET", "/events"), "/events"):  # a stream: not waited for
            assert len(short) == 0 and await short.finished(0.01)
        ended: list[float] = []

        async def serve(seconds: float) -> None:
            with short.serving(_ex("POST", "/containers/c1/start"), "/containers/c1/start"):
                await asyncio.sleep(seconds)
            ended.append(time.monotonic())

        task = asyncio.ensure_future(serve(0.1))
        await asyncio.sleep(0)
        assert await short.finished(5.0)  # returns once the request ended, not at the bound
        assert ended and time.monotonic() - ended[0] < 0.5
        await task
        slow = asyncio.ensure_future(serve(10.0))
        await asyncio.sleep(0)
        began = time.monotonic()
        assert not await short.finished(0.2)  # bounded: a request longer than the bound does not hold the key
        assert time.monotonic() - began < 2.0
        slow.cancel()
        await asyncio.gather(slow, return_exceptions=True)
        assert len(short) == 0

    asyncio.run(main())
