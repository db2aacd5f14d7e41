"""The manager reaches Docker engines over mutual TLS (issue 5, item 6), against a real ``dockerd --tlsverify``.

As in Swarm classic, ``--tls``/``--tlsverify`` and the certificate flags of ``swarmha manage`` apply to the
engines too: the manager presents its certificate to them and verifies theirs against ``--tlscacert``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.dockerd import IMAGE, DockerEngine, busybox_tar, missing, start_engine, stop_engine, tls_flags
from tests.support.helpers import wait_for
from tests.support.manager import ManagerProc, make_certs

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def tls_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerEngine]:
    """One engine that only talks TLS and requires a client certificate signed by the test CA."""
    reason = missing()
    if reason:
        pytest.skip(reason)
    certs = make_certs(tmp_path_factory.mktemp("engine-certs"))
    try:
        engine = start_engine(9, tls=certs)
    except RuntimeError as err:
        pytest.fail(str(err))
    try:
        engine.docker("import", str(busybox_tar(tmp_path_factory.mktemp("image"))), IMAGE)
        yield engine
    finally:
        stop_engine(engine)


def docker(
    manager: ManagerProc, certs: dict[str, Path] | None, *args: str, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The stock docker CLI against ``manager`` (with ``--tlsverify`` and the node certificate if ``certs``)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(manager.log.parent)}
    env["DOCKER_CONFIG"] = str(manager.log.parent)
    cmd = ["docker", *tls_flags(certs), "-H", f"tcp://{manager.addr}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False, input=stdin)


def node_status(manager: ManagerProc, certs: dict[str, Path] | None) -> str:
    """The ``└ Status`` of the manager's one node in ``docker info`` ("" while the manager does not answer)."""
    info = docker(manager, certs, "info")
    for line in info.stdout.splitlines():
        if line.strip().startswith("└ Status:"):
            return line.split(":", 1)[1].strip()
    return ""


def test_a_manager_with_tlsverify_serves_an_engine_that_requires_client_certificates(
    tls_engine: DockerEngine, tmp_path: Path
) -> None:
    certs = tls_engine.tls
    assert certs is not None
    manager = ManagerProc(f"nodes://{tls_engine.addr}", tmp_path, *tls_flags(certs), replication=False)
    try:
        wait_for(lambda: node_status(manager, certs) == "Healthy", 30, "the TLS engine to be Healthy")
        run = docker(manager, certs, "run", "--rm", "--network", "none", IMAGE, "echo", "hello over tls")
        assert run.returncode == 0, run.stderr
        assert "hello over tls" in run.stdout
        # stdin's EOF crosses both TLS hops (client -> manager -> engine) as close_notify: cat ends
        name = f"tls-cat-{manager.port}"
        started = docker(manager, certs, "run", "-d", "--name", name, "--network", "none", IMAGE, "sleep", "60")
        assert started.returncode == 0, started.stderr
        cat = docker(manager, certs, "exec", "-i", name, "cat", stdin="piped over tls\n", timeout=30)
        assert cat.returncode == 0, cat.stderr
        assert cat.stdout == "piped over tls\n"
        docker(manager, certs, "rm", "-f", name)
    finally:
        assert manager.stop() == 0


def test_a_manager_without_a_certificate_is_refused_by_that_engine(tls_engine: DockerEngine, tmp_path: Path) -> None:
    manager = ManagerProc(f"nodes://{tls_engine.addr}", tmp_path, replication=False)
    try:

        def failed() -> bool:
            out = docker(manager, None, "info").stdout
            return "└ Error:" in out and "└ Error: (none)" not in out

        wait_for(failed, 30, "the engine's error")
        assert node_status(manager, None) == "Pending"  # never validated: Pending with its error, as in Swarm
        run = docker(manager, None, "run", "--rm", "--network", "none", IMAGE, "echo", "never")
        assert run.returncode != 0 and "never" not in run.stdout  # a clear error, not a hang (timeout=60)
        assert run.stderr.strip(), "the CLI shows the manager's error"
    finally:
        assert manager.stop() == 0
