"""The primary's in-place renaming of one engine's ``/containers/json`` bytes (no re-encoding), and when it
steps aside for a full re-encode. The end-to-end listing through real engines is in test_manager_docker.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from swarmha.manager.api import _json_names, _rename_in_place


def _renamed(raw: bytes, node: str) -> list[Any]:
    items: list[Any] = json.loads(raw)
    for item in items:
        item["Names"] = [f"/{node}{n}" for n in item.get("Names") or []]
    return items


# what dockerd sends: Go's compact encoding, one "Names" array per container, newline at the end
GO = (
    b'[{"Id":"aaa","Names":["/web","/lb/web"],"Image":"x","Labels":{"a":"\\"Names\\":[\\"/no\\"]"},'
    b'"Mounts":[]},{"Id":"bbb","Names":["/idle"],"Command":"sleep 1","Labels":{}}]\n'
)


def test_names_are_renamed_in_the_engine_bytes_and_the_rest_is_kept_byte_for_byte() -> None:
    renamed = _renamed(GO, "node-1")
    out = _rename_in_place(GO, renamed, "node-1")
    assert out is not None
    assert json.loads(out) == renamed
    assert out == GO.replace(b'"/web","/lb/web"', b'"/node-1/web","/node-1/lb/web"').replace(
        b'"/idle"', b'"/node-1/idle"'
    )
    assert _rename_in_place(b"[]\n", [], "n") == b"[]\n"


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
    assert _rename_in_place(raw, _renamed(raw, "n"), "n") is None


@pytest.mark.parametrize(
    "names", [["/a"], ["/a", "/b/c_d-e.f"], [], [""], ["/é"], ['/"'], ["/a\\b"], ["/x y"], ["/a", 1]]
)
def test_names_are_encoded_as_json_dumps_would(names: list[Any]) -> None:
    assert _json_names(names) == json.dumps(names, separators=(",", ":")).encode()
