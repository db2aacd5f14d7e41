"""A test store over a tests.support.servers Cluster (etcd or ZooKeeper, one or three members)."""

from __future__ import annotations

from tests.support.servers import Cluster
from tests.support.stores import fresh_prefix


class ClusterStore:
    """``stop()`` kills every member, ``start()`` brings them back with their data; ``url()`` names all members."""

    can_stop = True

    def __init__(self, name: str, scheme: str, cluster: Cluster) -> None:
        self.name, self.scheme, self.cluster = name, scheme, cluster

    def url(self) -> str:
        return f"{self.scheme}://{self.cluster.hosts}/{fresh_prefix(self.name)}?timeout=2"

    def stop(self) -> None:
        self.cluster.kill()

    def start(self) -> None:
        self.cluster.start()

    def pause(self) -> None:
        """SIGSTOP every member (a hung store: connections stay open, nothing answers); :meth:`resume` ends it."""
        self.cluster.pause()

    def resume(self) -> None:
        self.cluster.resume()

    def await_commits(self, limit: float = 60.0) -> float | None:
        """See :meth:`tests.support.servers.Cluster.await_commits`."""
        return self.cluster.await_commits(limit)

    def close(self) -> None:
        self.cluster.close()


class MemberClusterStore(ClusterStore):
    """A 3-member cluster that can also lose and regain one member (the fault harness's ``member_loss``)."""

    def kill_member(self, index: int) -> None:
        self.cluster.kill(index)

    def restart_member(self, index: int) -> None:
        self.cluster.restart(index)
