"""ZooKeeper queues' known heads (``swarmha.discovery.zookeeper._queue``), against a real ZooKeeper 3.8: once a
listing has seen which entry heads a queue, finding the holder and arming a watch on it read that entry alone
(no listing); when the entry is gone, the queue is listed again and the answer is the queue's current one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

import swarmha
from swarmha.discovery import Record, Session
from swarmha.discovery.zookeeper import _queue, _watch
from tests.support.helpers import wait_for
from tests.support.servers import Cluster, zk_cluster
from tests.support.stores import fresh_prefix

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = zk_cluster(tmp_path_factory.mktemp("zk-heads"), 1)
    yield cluster
    cluster.close()


@pytest.fixture
def listings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The queue paths listed (``get_children``) from now on, by the holder reads and by the watches."""
    seen: list[str] = []

    def spy(module: Any) -> None:
        children = module._children

        def counted(client: Any, path: str, **kwargs: Any) -> Any:
            seen.append(path)
            return children(client, path, **kwargs)

        monkeypatch.setattr(module, "_children", counted)

    spy(_queue)
    spy(_watch)
    return seen


@contextlib.contextmanager
def held(cluster: Cluster) -> Iterator[tuple[swarmha.Discovery, Session, Record]]:
    """A Discovery on ``cluster`` (no tickets) and a session holding ``svc/leader`` (value "n1") through it."""
    d = swarmha.connect(f"zk://{cluster.hosts}/{fresh_prefix('zk')}?prepare=0")
    try:
        holder = d.session(30)
        first = d.create("svc/leader", "n1", holder)
        assert first is not None
        yield d, holder, first
    finally:
        d.close()


def test_the_holder_of_a_queue_listed_before_is_found_without_listing_it_again(
    single: Cluster, listings: list[str]
) -> None:
    with held(single) as (d, holder, first):
        listings.clear()
        assert d.get("svc/leader") == first
        assert d.get("svc/leader") == first
        assert listings == []  # the create's own listing saw its entry heading the queue
        holder.close()
        wait_for(lambda: d.get("svc/leader") is None, 5.0, "the key free once its holder left")
        assert listings, "the head gone: the queue was listed again"
        second = d.create("svc/leader", "n2", d.session(30))
        assert second is not None and second.token > first.token
        listings.clear()
        assert d.get("svc/leader") == second  # the new head (the create's listing saw it), not the old one
        assert listings == []


def test_a_watch_on_a_known_head_arms_without_a_listing_and_fires_when_it_goes(
    single: Cluster, listings: list[str]
) -> None:
    with held(single) as (d, holder, first):
        assert d.get("svc/leader") == first
        listings.clear()
        with d.watch("svc/leader", first) as watch:
            assert watch.wait(0.05) is False  # armed on the holder's entry
            assert listings == []
            d.release("svc/leader", first.token, holder)
            assert watch.wait(5.0) is True
        assert d.get("svc/leader") is None


def test_a_head_that_left_while_nobody_looked_is_not_taken_for_the_holder(single: Cluster, listings: list[str]) -> None:
    """Two Discoveries: the one that knows the head does not see the release (made through the other); its next
    read must not answer with the gone entry, and must find the entry heading the queue now."""
    url = f"zk://{single.hosts}/{fresh_prefix('zk')}"
    reader, writer = swarmha.connect(url), swarmha.connect(url)
    try:
        holder = writer.session(30)
        first = writer.create("svc/leader", "n1", holder)
        assert first is not None and reader.get("svc/leader") == first
        ticket = writer.prepare("svc/leader", "n2", 30)
        assert ticket is not None
        assert writer.create("svc/leader", "n2", ticket) is None  # queued behind n1
        writer.release("svc/leader", first.token, holder)
        second = writer.create("svc/leader", "n2", ticket)  # its turn: claims its queued entry
        assert second is not None and second.token > first.token
        listings.clear()
        assert reader.get("svc/leader") == second
        assert len(listings) == 1  # the known head read as gone, then one listing
        ticket.close()
    finally:
        reader.close()
        writer.close()
