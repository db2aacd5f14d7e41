"""zk:// test store: one real ZooKeeper 3.8 server on a free loopback port; stop() kills it, start() restarts it."""

from __future__ import annotations

import pytest

from tests.support.servers import zk_cluster
from tests.support.stores.cluster import ClusterStore


def open_store(tmp_path_factory: pytest.TempPathFactory) -> ClusterStore:
    return ClusterStore("zk", "zk", zk_cluster(tmp_path_factory.mktemp("zookeeper"), 1))
