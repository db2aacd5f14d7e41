"""The primary's in-place renaming of one engine's ``/containers/json`` bytes (no re-encoding), and when it
steps aside for a full re-encode. The end-to-end listing through real engines is in test_manager_docker.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from swarmha.manager.api.containers import _json_names, _rename_in_place

NODE = {"Name": "n", "Addr": "127.0.0.1:1"}
NODE_JSON = json.dumps(NODE, separators=(",", ":")).encode()


def _renamed(raw: bytes, node: str, with_node: bool = False) -> list[Any]:
    items: list[Any] = json.loads(raw)
    for item in items:
        item["Names"] = [f"/{node}{n}" for n in item.get("Names") or []]
        if with_node:
            item["Node"] = NODE
    return items


# what dockerd sends: Go's compact encoding, one "Names" array per container, newline at the end
GO = (
    b'[{"Id":"aaa","Names":["/web","/lb/web"],"Image":"x","Labels":{"a":"\\"Names\\":[\\"/no\\"]"},'
    b'"Mounts":[]},{"Id":"bbb","Names":["/idle"],"Command":"sleep 1","Labels":{}}]\n'
)


def test_names_are_renamed_in_the_engine_bytes_and_the_rest_is_kept_byte_for_byte() -> None:
    renamed = _renamed(GO, "node-1")
    out = _rename_in_place(GO, renamed, "node-1", NODE_JSON)
    assert out is not None
    assert json.loads(out) == _renamed(GO, "node-1", with_node=True)  # Swarm's Node object added to each
    node = b',"Node":' + NODE_JSON
    assert out == GO.replace(b'"/web","/lb/web"]', b'"/node-1/web","/node-1/lb/web"]' + node).replace(
        b'"/idle"]', b'"/node-1/idle"]' + node
    )
    assert _rename_in_place(b"[]\n", [], "n", NODE_JSON) == b"[]\n"


@pytest.mark.parametrize(
    "raw",
    [
        b'[{"Id":"a","Names":["/x"],"Extra":{"Names":["/y"]}}]',  # a second "Names" array somewhere
        b'[{"Id":"a","Names": ["/x"]}]',  # another encoder's spacing: not found, re-encode
        b'[{"Id":"a","Names":["/\\u0078"]}]',  # escaped differently than json.dumps would
        b'[{"Id":"a","Names":[]}]',  # no names
        b'[{"Id":"a","x\\"Names":["/q"],"Names":["/x"]}]',  # the pattern starting inside a key
        b'[{"Id":"a","Names":["/x]"]}]',  # a bracket inside a name
    ],
)
def test_anything_unusual_falls_back_to_a_full_re_encode(raw: bytes) -> None:
    assert _rename_in_place(raw, _renamed(raw, "n"), "n", NODE_JSON) is None


@pytest.mark.parametrize(
    "names", [["/a"], ["/a", "/b/c_d-e.f"], [], [""], ["/é"], ['/"'], ["/a\\b"], ["/x y"], ["/a", 1]]
)
def test_names_are_encoded_as_json_dumps_would(names: list[Any]) -> None:
    assert _json_names(names) == json.dumps(names, separators=(",", ":")).encode()


class _Engine:
    def __init__(self, name: str) -> None:
        self.name = name
        self.upstream = "up"
        self.addr = "127.0.0.1:1"

    def node(self) -> dict[str, Any]:
        return {"Name": self.name, "Addr": self.addr}


class _Cluster:
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.owners: list[tuple[str, str]] = []
        self.answers: list[bytes] = []

    def healthy(self) -> list[_Engine]:
        return [self.engine]

    def remember(self, ident: str, e: _Engine) -> None:
        self.owners.append((ident, e.name))

    async def call(self, e: _Engine, method: str, target: str, **kw: Any) -> Any:
        from swarmha.manager.upstream import Response

        return Response(200, [], self.answers.pop(0))


class _Exchange:
    query_string = ""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []

    async def respond(self, status: int, body: bytes, content_type: str = "") -> None:
        self.sent.append((status, body))


def test_the_same_engine_answer_is_renamed_once_and_gives_the_same_bytes_and_owners(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The last one-engine list is reused only for the same bytes from the same engine under the same name."""
    import asyncio

    from swarmha.manager.api import containers

    parsed: list[bytes] = []
    real_loads = json.loads

    def loads(raw: bytes) -> Any:
        parsed.append(raw)
        return real_loads(raw)

    monkeypatch.setattr(containers.json, "loads", loads)
    engine = _Engine("node-1")
    cluster = _Cluster(engine)
    cluster.answers = [GO, GO, GO, GO.replace(b"/idle", b"/busy")]
    api = containers.Containers(cluster)  # type: ignore[arg-type]

    def listed() -> bytes:
        ex = _Exchange()
        asyncio.run(api.listing(ex))  # type: ignore[arg-type]
        assert ex.sent[0][0] == 200
        return ex.sent[0][1]

    first = listed()
    assert (len(parsed), cluster.owners) == (1, [("aaa", "node-1"), ("bbb", "node-1")])
    assert listed() == first  # the same bytes: not parsed again, the owners recorded again
    assert (len(parsed), cluster.owners[2:]) == (1, [("aaa", "node-1"), ("bbb", "node-1")])
    engine.name = "node-2"  # the engine renamed (two engines reporting one host name): renamed anew
    second = listed()
    assert len(parsed) == 2
    third = listed()  # new bytes: parsed anew
    assert len(parsed) == 3
    monkeypatch.undo()

    def expected(raw: bytes, name: str) -> list[Any]:
        items = _renamed(raw, name)
        for item in items:
            item["Node"] = {"Name": name, "Addr": engine.addr}
        return items

    assert json.loads(first) == expected(GO, "node-1")
    assert json.loads(second) == expected(GO, "node-2")
    assert json.loads(third) == expected(GO.replace(b"/idle", b"/busy"), "node-2")
