"""etcd:// test store: one real etcd 3.4 member on free loopback ports; stop() kills it, start() restarts it."""

from __future__ import annotations

import pytest

from tests.servers import Cluster, etcd_cluster
from tests.stores import fresh_prefix


class EtcdStoreFixture:
    name = "etcd"
    can_stop = True

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def url(self) -> str:
        return f"etcd://{self.cluster.hosts}/{fresh_prefix(self.name)}?timeout=2"

    def stop(self) -> None:
        self.cluster.kill()

    def start(self) -> None:
        self.cluster.start()

    def close(self) -> None:
        self.cluster.close()


def open_store(tmp_path_factory: pytest.TempPathFactory) -> EtcdStoreFixture:
    return EtcdStoreFixture(etcd_cluster(tmp_path_factory.mktemp("etcd"), 1))
