"""The session fixture with two real Docker engines for the manager tests (machinery: tests/support/dockerd.py).

Tests using :func:`docker_engines` are skipped when dockerd, containerd, busybox or root are missing.
Teardown kills each engine's whole process group (dockerd and its containerd) and removes its directories.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.dockerd import IMAGE, DockerEngine, busybox_tar, docker_cli, missing, start_engine, stop_engine

__all__ = ["IMAGE", "DockerEngine", "docker_cli", "docker_engines"]


@pytest.fixture(scope="session")
def docker_engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[DockerEngine]]:
    """Two running engines, each holding :data:`IMAGE`; stopped and removed at the end of the session."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    engines: list[DockerEngine] = []
    try:
        for i in range(2):
            try:
                engines.append(start_engine(i))
            except RuntimeError as err:
                pytest.fail(str(err))
        tar = busybox_tar(tmp_path_factory.mktemp("image"))
        for e in engines:
            e.docker("import", str(tar), IMAGE)
        yield engines
    finally:
        for e in engines:
            stop_engine(e)
