"""Session fixtures with real Docker engines for the manager tests (machinery: tests/support/dockerd.py).

* :func:`docker_engines`: two engines on the machine's host name (the manager calls them by address);
* :func:`named_engines`: three engines ``node-1``..``node-3``, each in a UTS namespace of its own with its own
  host name and the engine labels of :data:`NODE_LABELS` (for the scheduler's tests).

Tests using them are skipped when dockerd, containerd, busybox or root are missing. Teardown kills each
engine's whole process group (dockerd and its containerd) and removes its directories.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import pytest

from tests.support.dockerd import IMAGE, DockerEngine, busybox_tar, docker_cli, missing, start_engine, stop_engine

__all__ = ["IMAGE", "NODE_LABELS", "DockerEngine", "docker_cli", "docker_engines", "named_engines"]

#: The engine labels of node-1, node-2, node-3 (:func:`named_engines`).
NODE_LABELS: tuple[dict[str, str], ...] = (
    {"com.example.type": "web", "zone": "a", "storage": "ssd"},
    {"com.example.type": "db", "zone": "b", "storage": "disk"},
    {"zone": "b", "containerslots": "4"},
)


def _engines(
    tmp_path_factory: pytest.TempPathFactory,
    count: int,
    hostnames: Sequence[str | None] = (),
    labels: Sequence[Mapping[str, str]] = (),
) -> Iterator[list[DockerEngine]]:
    reason = missing()
    if reason:
        pytest.skip(reason)
    engines: list[DockerEngine] = []
    try:
        for i in range(count):
            try:
                engines.append(
                    start_engine(
                        i,
                        hostname=hostnames[i] if hostnames else None,
                        labels=labels[i] if labels else None,
                    )
                )
            except RuntimeError as err:
                pytest.fail(str(err))
        tar = busybox_tar(tmp_path_factory.mktemp("image"))
        for e in engines:
            e.docker("import", str(tar), IMAGE)
        yield engines
    finally:
        for e in engines:
            stop_engine(e)


@pytest.fixture(scope="session")
def docker_engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[DockerEngine]]:
    """Two running engines, each holding :data:`IMAGE`; stopped and removed at the end of the session."""
    yield from _engines(tmp_path_factory, 2)


@pytest.fixture(scope="session")
def named_engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[DockerEngine]]:
    """Three running engines with host names ``node-1``..``node-3`` and :data:`NODE_LABELS`, each holding
    :data:`IMAGE`. A test that kills one (``tests.support.dockerd.kill_engine``) restarts it before it ends."""
    names = [f"node-{i + 1}" for i in range(3)]
    yield from _engines(tmp_path_factory, 3, names, NODE_LABELS)
