"""An engine's container list read one item at a time (swarmha.manager.json_items): the parse over any split of
the bytes, its refusals, and a refresh of an engine that serves a huge list slowly — the engine stays Healthy,
every container is seen, and the memory the read takes beyond what it keeps is about one item, not the list."""

from __future__ import annotations

import asyncio
import json
import tracemalloc

import pytest

from swarmha.manager import http as front
from swarmha.manager.cluster import Cluster
from swarmha.manager.json_items import ItemReader


def read(pieces: list[bytes], item_limit: int = 1 << 20) -> list[object]:
    reader = ItemReader(item_limit)
    for piece in pieces:
        reader.feed(piece)
    return reader.end()


def test_items_are_the_same_whatever_the_pieces() -> None:
    items = [
        {"Id": "a" * 64, "Names": ["/x"], "Labels": {"k": "v\u00e9\u4e2d\U0001f600", "e": ""}, "Created": 1700000000},
        {"Ports": [{"PrivatePort": 80, "Type": "tcp"}], "SizeRw": 2**63 - 1, "F": 1.5, "N": None, "B": True},
        [],
        "s",
    ]
    raw = json.dumps(items, ensure_ascii=False).encode()
    for cut in range(len(raw) + 1):  # every split point, a multi-byte character's middle included
        assert read([raw[:cut], raw[cut:]]) == items, cut
    assert read([bytes([b]) for b in raw]) == items
    assert read([b"  \n", b" [", b"]\n"]) == []


@pytest.mark.parametrize(
    ("pieces", "words"),
    [
        ([b'{"message": "page not found"}'], "expected a JSON array"),
        ([b""], "empty body"),
        ([b'[{"Id": "a"}'], "bad JSON"),
        ([b'[{"Id": "a"}, zz]'], "bad JSON"),
        ([b'[{"Id": "a"}] [1]'], "bad JSON"),
        ([b'[{"Labels": {"big": "', b"x" * 600, b"x" * 600], "larger than 1000 bytes"),
    ],
)
def test_what_is_not_a_list_is_refused_naming_why(pieces: list[bytes], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        read(pieces, item_limit=1000)


#: The fake engine's list: COUNT containers of ITEM_MB MiB of labels each, one every GAP seconds (the whole list
#: takes longer than the manager's timeout; each wait for the next piece does not).
COUNT, ITEM_MB, GAP, TIMEOUT = 12, 6, 0.2, 1.0


@pytest.mark.slow
def test_a_huge_list_served_slowly_is_read_whole_in_bounded_memory() -> None:
    ids = [f"{i:064x}" for i in range(COUNT)]

    async def engine(ex: front.Exchange) -> None:
        if ex.path == "/info":
            return await ex.json(200, {"ID": "FAKE", "Name": "fake", "Containers": COUNT, "NCPU": 1})
        if ex.path == "/version":
            return await ex.json(200, {"ApiVersion": "1.41", "MinAPIVersion": "1.12"})
        if ex.path == "/images/json":
            return await ex.json(200, [])
        if ex.path == "/containers/json":  # chunked, one container at a time, paced
            await ex.start(200, [(b"content-type", b"application/json")])
            for i, cid in enumerate(ids):
                labels = {"big": chr(ord("a") + i) * (ITEM_MB << 20)}
                item = {"Id": cid, "Names": [f"/c{i}"], "Image": "i", "State": "exited", "Labels": labels}
                await ex.send((b"[" if i == 0 else b",") + json.dumps(item).encode())
                await asyncio.sleep(GAP)
            await ex.send(b"]")
            return await ex.end()
        cid = ex.path.split("/")[2]
        await ex.json(200, {"Id": cid, "Name": "/c", "Config": {"Image": "i", "Labels": {}}, "HostConfig": {}})

    async def main() -> tuple[str, int, int, int]:
        server = front.Server(engine)
        port = (await server.listen("127.0.0.1", 0))[0][1]
        c = Cluster(static=[f"127.0.0.1:{port}"], timeout=TIMEOUT)
        try:
            tracemalloc.start()
            await c.refresh()
            kept, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            (e,) = c.engines
            return e.status, len(e.records), kept, peak
        finally:
            await c.close()
            server.close()
            await server.drain(1)

    status, seen, kept, peak = asyncio.run(main())
    item = ITEM_MB << 20
    print(f"list of {COUNT * ITEM_MB} MiB: kept {kept >> 20} MiB, peak {peak >> 20} MiB")
    assert (status, seen) == ("Healthy", COUNT)
    assert kept >= COUNT * item  # what the manager keeps of the list (its items) ...
    assert peak - kept <= 4 * item  # ... and the read's own cost is a few items, not the list (was ~2 lists)
