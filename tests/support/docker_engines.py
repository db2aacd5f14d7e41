"""The session fixtures with a real registry and two real Docker engines for the manager tests (machinery:
tests/support/dockerd.py).

``registry``: Debian's ``docker-registry`` on a loopback port, holding :data:`REGISTRY_IMAGE` (the test image
pushed there), so a pull needs no public registry. ``docker_engines``: two engines with their own host
names (``node-1``, ``node-2``: ``unshare --uts``), engine labels ``node=1``/``node=2``, ``--insecure-registry``
for that registry, each holding :data:`IMAGE`. Tests using them are skipped when dockerd, containerd,
busybox, docker-registry, unshare or root are missing. Teardown kills each engine's whole process group
(dockerd and its containerd) and removes its directories.
"""

from __future__ import annotations

from collections.abc import Iterator

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

__all__ = ["IMAGE", "NAMES", "DockerEngine", "Registry", "docker_cli", "docker_engines", "registry"]

#: The engines' host names (their node names in the cluster), in the order of ``docker_engines``.
NAMES = ("node-1", "node-2")


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
    engines: list[DockerEngine] = []
    try:
        for i, name in enumerate(NAMES):
            try:
                engines.append(
                    start_engine(i, hostname=name, labels={"node": str(i + 1)}, insecure_registries=(registry.addr,))
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
