"""etcd:// test store: one real etcd 3.4 member on free loopback ports; stop() kills it, start() restarts it."""

from __future__ import annotations

import pytest

from tests.support.servers import etcd_cluster
from tests.support.stores.cluster import ClusterStore


def open_store(tmp_path_factory: pytest.TempPathFactory) -> ClusterStore:
    return ClusterStore("etcd", "etcd", etcd_cluster(tmp_path_factory.mktemp("etcd"), 1))
