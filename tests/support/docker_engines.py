"""The session fixtures with a real registry and real Docker engines for the manager tests (machinery:
tests/support/dockerd.py).

``registry``: Debian's ``docker-registry`` on a loopback port, holding :data:`REGISTRY_IMAGE` (the test image
pushed there), so a pull needs no public registry. ``docker_engines``: two engines with their own host
names (``node-1``, ``node-2``: ``unshare --uts``), engine labels ``node=1``/``node=2``, ``--insecure-registry``
for that registry, each holding :data:`IMAGE`. ``named_engines``: three more engines ``node-1``..``node-3`` with
the labels of :data:`NODE_LABELS` and engine IDs of their own, for the scheduler's tests. Tests using them are
skipped when dockerd, containerd, busybox, docker-registry, unshare or root are missing. Teardown kills each
engine's whole process group (dockerd and its containerd) and removes its directories.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.dockerd import (
    IMAGE,
    DockerEngine,
    Registry,
    busybox_tar,
    docker_cli,
    missing,
    start_engine,
    start_registry,
    stop_engine,
)

__all__ = [
    "IMAGE",
    "NAMES",
    "NODE_LABELS",
    "DockerEngine",
    "Registry",
    "docker_cli",
    "docker_engines",
    "named_engines",
    "registry",
]

#: The engines' host names (their node names in the cluster), in the order of ``docker_engines``.
NAMES = ("node-1", "node-2")

#: The engine labels of node-1, node-2, node-3 (:func:`named_engines`).
NODE_LABELS: tuple[dict[str, str], ...] = (
    {"com.example.type": "web", "zone": "a", "storage": "ssd"},
    {"com.example.type": "db", "zone": "b", "storage": "disk"},
    {"zone": "b", "containerslots": "4"},
)


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    """A registry on loopback for the session (empty: tests push what they pull)."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    try:
        reg = start_registry()
    except RuntimeError as err:
        pytest.fail(str(err))
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def docker_engines(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[DockerEngine]]:
    """Two running engines, each holding :data:`IMAGE`; stopped and removed at the end of the session."""
    yield from _engines_holding_the_image(
        tmp_path_factory,
        [
            lambda i=i, name=name: start_engine(
                i, hostname=name, labels={"node": str(i + 1)}, insecure_registries=(registry.addr,)
            )
            for i, name in enumerate(NAMES)
        ],
    )


@pytest.fixture(scope="session")
def named_engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[DockerEngine]]:
    """Three running engines with host names ``node-1``..``node-3`` and :data:`NODE_LABELS`, each holding
    :data:`IMAGE`. A test that kills one (``tests.support.dockerd.kill_engine``) restarts it before it ends."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    yield from _engines_holding_the_image(
        tmp_path_factory,
        [
            lambda i=i, labels=labels: start_engine(10 + i, hostname=f"node-{i + 1}", labels=labels)
            for i, labels in enumerate(NODE_LABELS)
        ],
    )


def _engines_holding_the_image(
    tmp_path_factory: pytest.TempPathFactory, starts: list[Callable[[], DockerEngine]]
) -> Iterator[list[DockerEngine]]:
    """Start an engine with each of ``starts``, import :data:`IMAGE` into every one, yield them; stop them all
    afterwards (also those started before one failed to start, which fails the test)."""
    engines: list[DockerEngine] = []
    try:
        for start in starts:
            try:
                engines.append(start())
            except RuntimeError as err:
                pytest.fail(str(err))
        tar = busybox_tar(tmp_path_factory.mktemp("image"))
        for e in engines:
            e.docker("import", str(tar), IMAGE)
        yield engines
    finally:
        for e in engines:
            stop_engine(e)
