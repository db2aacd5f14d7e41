"""zk:// test store: one real ZooKeeper 3.8 server on a free loopback port; stop() kills it, start() restarts it."""

from __future__ import annotations

import pytest

from tests.servers import Cluster, zk_cluster
from tests.stores import fresh_prefix


class ZooKeeperStoreFixture:
    name = "zk"
    can_stop = True

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def url(self) -> str:
        return f"zk://{self.cluster.hosts}/{fresh_prefix(self.name)}?timeout=2"

    def stop(self) -> None:
        self.cluster.kill()

    def start(self) -> None:
        self.cluster.start()

    def close(self) -> None:
        self.cluster.close()


def open_store(tmp_path_factory: pytest.TempPathFactory) -> ZooKeeperStoreFixture:
    return ZooKeeperStoreFixture(zk_cluster(tmp_path_factory.mktemp("zookeeper"), 1))
