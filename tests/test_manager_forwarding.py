"""Forwarding by term: what a replica does with a request that carries the managers' own forwarding header."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import swarmha
from swarmha.manager.hops import FORWARDED
from swarmha.manager.manager import LEADER_KEY
from tests.support.helpers import wait_for
from tests.support.manager import ManagerProc

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[ManagerProc, ManagerProc, str]]:
    url = f"sqlite://{tmp_path}/s.db"
    primary = ManagerProc(url, tmp_path, "--replication-ttl", "4s")
    replica: ManagerProc | None = None
    try:
        wait_for(lambda: primary.role() == "Primary", 20, "a primary")
        replica = ManagerProc(url, tmp_path, "--replication-ttl", "4s")
        wait_for(lambda: replica is not None and replica.status().get("Primary") == primary.addr, 20, "a replica")
        yield primary, replica, url
    finally:
        for m in (primary, replica):
            if m is not None:
                m.stop()


def _get(m: ManagerProc, value: str) -> tuple[int, float]:
    req = urllib.request.Request(m.url("/v1.41/containers/json"), headers={FORWARDED: value})
    began = time.monotonic()
    with urllib.request.urlopen(req, timeout=15) as r:
        return r.status, time.monotonic() - began


def test_a_clients_own_forwarding_header_does_not_hold_its_request(pair: tuple[ManagerProc, ManagerProc, str]) -> None:
    """The header names the term its sender saw the target lead; a replica never led a term, so whatever a
    client writes there (the current term's token included) is routed as a client request: forwarded at once."""
    _primary, replica, url = pair
    d = swarmha.connect(url)
    try:
        record = d.get(LEADER_KEY)
        assert record is not None
        token = record.token
    finally:
        d.close()
    for value in ("1", str(token), str(token + 1000), "yes"):
        status, took = _get(replica, value)
        assert status == 200 and took < 2, (value, status, took)
